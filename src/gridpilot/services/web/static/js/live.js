// The live WebSocket of one grid (/api/grids/{grid}/live, cookie auth): JSON messages typed
// "estimate", "alarm", "topology", "command_result", "services". Reconnects with exponential
// back-off and jitter when the socket drops or goes silent (the server sends the service
// list every 2 s, so 8 s of silence means a dead connection).

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 10000];
const SILENCE_MS = 8000;

export class Live {
  /**
   * onMessage(msg, parseMs, bytes), onState(state, detail): state is "connecting", "live",
   * "reconnecting" (detail: seconds until the next try) or "closed".
   * onUnauthorized(reason): the server closed with 4401 (session ended).
   */
  constructor(grid, { onMessage, onState, onUnauthorized, onOpen } = {}) {
    this.grid = grid;
    this.onMessage = onMessage || (() => {});
    this.onState = onState || (() => {});
    this.onUnauthorized = onUnauthorized || (() => {});
    this.onOpen = onOpen || (() => {});
    this.ws = null;
    this.attempt = 0;
    this.stopped = false;
    this.timer = 0;
    this.watchdog = 0;
    this.lastMessageAt = 0;
    this.connects = 0;
    this.layout = null; // the ids of the estimates' layout, sent once per layout
  }

  url() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}/api/grids/${encodeURIComponent(this.grid)}/live`;
  }

  start() {
    this.stopped = false;
    this._connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.watchdog);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
      try {
        ws.close(1000, "bye");
      } catch {
        /* closing anyway */
      }
    }
    this.onState("closed");
  }

  /** Drop the connection as if the network failed (tests and the silence watchdog). */
  drop() {
    if (this.ws) this.ws.close(4000, "dropped by client");
  }

  _connect() {
    if (this.stopped) return;
    this.onState(this.attempt ? "reconnecting" : "connecting", 0);
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this._retry();
      return;
    }
    this.ws = ws;
    this.layout = null;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.connects++;
      this.lastMessageAt = performance.now();
      this.onState("live");
      this.onOpen(this.connects);
      clearInterval(this.watchdog);
      this.watchdog = setInterval(() => {
        if (performance.now() - this.lastMessageAt > SILENCE_MS && this.ws === ws) ws.close(4000, "silent");
      }, 1000);
    };
    ws.onmessage = (ev) => {
      this.lastMessageAt = performance.now();
      if (opened) this.attempt = 0;
      const t0 = performance.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type === "estimate") this._withIds(msg);
      this.onMessage(msg, performance.now() - t0, ev.data.length);
    };
    ws.onclose = (ev) => {
      clearInterval(this.watchdog);
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (ev.code === 4401) {
        this.stopped = true;
        this.onState("closed");
        this.onUnauthorized(ev.reason || "session ended");
        return;
      }
      this._retry();
    };
    ws.onerror = () => {
      /* onclose follows and schedules the retry */
    };
  }

  /** An estimate carries its bus and branch ids only when its layout is new to this
   * connection: keep them from that one, fill them into the next ones of the same layout. */
  _withIds(msg) {
    if (Array.isArray(msg.bus_id) || Array.isArray(msg.branch_id)) {
      if (msg.layout) this.layout = { id: msg.layout, bus_id: msg.bus_id, branch_id: msg.branch_id };
    } else if (msg.layout && this.layout && this.layout.id === msg.layout) {
      msg.bus_id = this.layout.bus_id;
      msg.branch_id = this.layout.branch_id;
    }
  }

  _retry() {
    if (this.stopped) return;
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    const delay = base * (0.8 + Math.random() * 0.4);
    this.attempt++;
    this.onState("reconnecting", delay / 1000);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._connect(), delay);
  }
}
