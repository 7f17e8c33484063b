// The grid diagram on one <canvas>: buses coloured by estimated voltage against their band,
// branches coloured and thickened by loading, switches (open ones as hollow squares on a
// dashed branch), marks for suspect and missing measurements, pan and zoom, hit-testing
// through a uniform grid. Drawing is batched by style (one path per colour and width), so
// thousands of buses cost a few milliseconds. Labels (labels.js) go where they cover no symbol,
// no line and no other label (or are left out); the view fits the grid between the overlays.

import { drawLabels } from "./labels.js";

export const V = { NONE: 0, LOW: 1, OK: 2, HIGH: 3, DEAD: 4 };
export const L = { NONE: 0, OK: 1, WARN: 2, OVER: 3, DEAD: 4 };
const V_NAMES = ["none", "low", "normal", "high", "de-energised"];
const L_NAMES = ["none", "normal", "high", "overload", "de-energised"];

export const BG = "#081017";
const GRID = "#0f1b25";
const BUS_COLOR = ["#5b6570", "#4aa3ff", "#3fb950", "#f85149", "#1d252e"];
export const BUS_TEXT = ["#8b98a5", "#8cc4ff", "#8ee09b", "#ffb1ab", "#6b7682"];
export const LINE_COLOR = ["#4b5763", "#2ea043", "#d29922", "#f85149", "#26303a"];
const OPEN_COLOR = "#6e7681";
const WIDTH_MUL = [1, 1.35, 1.9, 2.6];
const SELECT = "#58d5ff";
const ALARM = ["#d29922", "#f85149"]; // warning, critical
const LABEL = "#8b98a5";
const SUSPECT = "#e3b341"; // a measurement removed as bad data, or of doubtful quality
const MISSING = "#8b98a5"; // the measuring device is missing
export const MARK = { SUSPECT: "suspect", MISSING: "missing" };

const clamp = (v, lo, hi) => (v < lo ? lo : v > hi ? hi : v);

export class Diagram {
  constructor(canvas, { onSelect, onHover } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.onSelect = onSelect || (() => {});
    this.onHover = onHover || (() => {});
    this.k = 1;
    this.tx = 0;
    this.ty = 0;
    this.w = 0;
    this.h = 0;
    this.dpr = window.devicePixelRatio || 1;
    this.fitK = 1;
    this.has = false;
    this.selected = null; // {kind: "bus"|"branch"|"switch", index}
    this.alarmBus = new Map(); // bus index -> 0 warning / 1 critical
    this.alarmBranch = new Map();
    this.markBus = new Map(); // bus index -> MARK.SUSPECT | MARK.MISSING
    this.markBranch = new Map();
    this.labelRects = []; // what the last render drew: labels and the symbols they avoid
    this.symbolRects = [];
    this.renders = 0;
    this.lastRenderMs = 0;
    this.firstRenderAt = null; // performance.now() of the first draw with a topology
    this.estimateStatus = null;
    this._raf = 0;
    this._buckets = Array.from({ length: 20 }, () => []);
    this._open = [];
    this._visBus = [];
    this._bindEvents();
    this._resize();
    new ResizeObserver(() => this._resize()).observe(canvas);
  }

  // -- model ------------------------------------------------------------------------------
  setTopology(topo) {
    const nb = topo.buses.length;
    const bus = {
      id: new Array(nb), name: new Array(nb), x: new Float64Array(nb), y: new Float64Array(nb),
      vmin: new Float64Array(nb), vmax: new Float64Array(nb), vn: new Float64Array(nb),
    };
    const busIndex = new Map();
    topo.buses.forEach((b, i) => {
      bus.id[i] = b.id;
      bus.name[i] = b.name || b.id;
      bus.x[i] = b.x;
      bus.y[i] = b.y;
      bus.vmin[i] = b.v_min_pu;
      bus.vmax[i] = b.v_max_pu;
      bus.vn[i] = b.vn_kv;
      busIndex.set(b.id, i);
    });
    const nbr = topo.branches.length;
    const br = {
      id: new Array(nbr), name: new Array(nbr), kind: new Uint8Array(nbr),
      from: new Int32Array(nbr), to: new Int32Array(nbr), switches: new Array(nbr),
    };
    const brIndex = new Map();
    topo.branches.forEach((b, i) => {
      br.id[i] = b.id;
      br.name[i] = b.name || b.id;
      br.kind[i] = b.kind === "transformer" ? 1 : 0;
      br.from[i] = busIndex.has(b.from_bus) ? busIndex.get(b.from_bus) : -1;
      br.to[i] = busIndex.has(b.to_bus) ? busIndex.get(b.to_bus) : -1;
      br.switches[i] = [];
      brIndex.set(b.id, i);
    });
    const ns = topo.switches.length;
    const sw = {
      id: new Array(ns), name: new Array(ns), bus: new Int32Array(ns), branch: new Int32Array(ns),
      other: new Int32Array(ns), closed: new Uint8Array(ns),
    };
    const swIndex = new Map();
    topo.switches.forEach((s, j) => {
      sw.id[j] = s.id;
      sw.name[j] = s.name || s.id;
      sw.bus[j] = busIndex.has(s.bus) ? busIndex.get(s.bus) : -1;
      sw.closed[j] = s.closed ? 1 : 0;
      if (s.element_kind === "bus") {
        sw.branch[j] = -1;
        sw.other[j] = busIndex.has(s.element) ? busIndex.get(s.element) : -1;
      } else {
        const b = brIndex.has(s.element) ? brIndex.get(s.element) : -1;
        sw.branch[j] = b;
        sw.other[j] = -1;
        if (b >= 0) br.switches[b].push(j);
      }
      swIndex.set(s.id, j);
    });
    Object.assign(this, { bus, br, sw, busIndex, brIndex, swIndex, grid: topo.grid });
    this.nb = nb;
    this.nbr = nbr;
    this.ns = ns;
    this.brOpen = new Uint8Array(nbr);
    this._computeOpen();
    this.busV = new Float64Array(nb).fill(NaN);
    this.busCls = new Uint8Array(nb);
    this.brLoad = new Float64Array(nbr).fill(NaN);
    this.brP = new Float64Array(nbr).fill(NaN);
    this.brCls = new Uint8Array(nbr);
    this.brW = new Uint8Array(nbr);
    // scale: the median branch length sets the symbol sizes
    const lens = [];
    for (let i = 0; i < nbr; i++) {
      const a = br.from[i], b = br.to[i];
      if (a < 0 || b < 0) continue;
      const d = Math.hypot(bus.x[a] - bus.x[b], bus.y[a] - bus.y[b]);
      if (d > 0) lens.push(d);
    }
    lens.sort((p, q) => p - q);
    this.lmed = lens.length ? lens[lens.length >> 1] : 50;
    this._buildIndex();
    this.selected = null;
    this.alarmBus.clear();
    this.alarmBranch.clear();
    this.markBus.clear();
    this.markBranch.clear();
    this.has = true;
    this.fit();
  }

  _computeOpen() {
    this.brOpen.fill(0);
    for (let j = 0; j < this.ns; j++) {
      const b = this.sw.branch[j];
      if (b >= 0 && !this.sw.closed[j]) this.brOpen[b] = 1;
    }
  }

  /** Switch states from a topology message: {switch id: closed}. Returns the ids that changed. */
  setSwitchStates(closed) {
    if (!this.has) return [];
    const changed = [];
    for (const [id, c] of Object.entries(closed)) {
      const j = this.swIndex.get(id);
      if (j === undefined) continue;
      const v = c ? 1 : 0;
      if (this.sw.closed[j] !== v) {
        this.sw.closed[j] = v;
        changed.push(id);
      }
    }
    if (changed.length) {
      this._computeOpen();
      this.requestRender();
    }
    return changed;
  }

  /** Apply a live "estimate" message and redraw at once; returns the time it took (ms). */
  applyEstimate(msg) {
    const t0 = performance.now();
    if (!this.has) return 0;
    const { busV, brLoad, brP, busCls, brCls, brW } = this;
    const converged = msg.status === "converged" && Array.isArray(msg.bus_id);
    busV.fill(NaN);
    brLoad.fill(NaN);
    brP.fill(NaN);
    if (converged) {
      const ids = msg.bus_id, v = msg.v_pu, index = this.busIndex;
      for (let i = 0; i < ids.length; i++) {
        const j = index.get(ids[i]);
        if (j !== undefined) busV[j] = v[i];
      }
      if (Array.isArray(msg.branch_id)) {
        const bids = msg.branch_id, load = msg.loading_pct, p = msg.p_from_mw || [];
        const bindex = this.brIndex;
        for (let i = 0; i < bids.length; i++) {
          const j = bindex.get(bids[i]);
          if (j !== undefined) {
            brLoad[j] = load[i];
            brP[j] = p[i] ?? NaN;
          }
        }
      }
    }
    const { vmin, vmax } = this.bus;
    for (let j = 0; j < this.nb; j++) {
      const v = busV[j];
      busCls[j] = v !== v ? V.NONE : v <= 0 ? V.DEAD : v < vmin[j] ? V.LOW : v > vmax[j] ? V.HIGH : V.OK;
    }
    const { from, to } = this.br;
    for (let i = 0; i < this.nbr; i++) {
      const l = brLoad[i];
      let c;
      if (l !== l) c = L.NONE;
      else if (l <= 0 && (busCls[from[i]] === V.DEAD || busCls[to[i]] === V.DEAD)) c = L.DEAD;
      else if (l > 100) c = L.OVER;
      else if (l >= 80) c = L.WARN;
      else c = L.OK;
      brCls[i] = c;
      brW[i] = l !== l || l < 50 ? 0 : l < 80 ? 1 : l <= 100 ? 2 : 3;
    }
    this.estimateStatus = msg.status;
    this.estimateT = msg.t_ns;
    this.render();
    return performance.now() - t0;
  }

  /** Outline the equipment of raised alarms (bus or branch mrids). */
  setAlarms(alarms) {
    this.alarmBus.clear();
    this.alarmBranch.clear();
    if (!this.has) return;
    for (const a of alarms) {
      if (a.state !== "raised") continue;
      const sev = a.severity === "critical" ? 1 : 0;
      const b = this.busIndex.get(a.mrid);
      if (b !== undefined) this.alarmBus.set(b, Math.max(sev, this.alarmBus.get(b) ?? 0));
      const r = this.brIndex.get(a.mrid);
      if (r !== undefined) this.alarmBranch.set(r, Math.max(sev, this.alarmBranch.get(r) ?? 0));
    }
    this.requestRender();
  }

  /** Mark equipment whose measurements are suspect or missing: Maps of bus / branch id to
   * MARK.SUSPECT or MARK.MISSING (suspect wins where both apply). */
  setMarks(busMarks, branchMarks) {
    this.markBus.clear();
    this.markBranch.clear();
    if (!this.has) return;
    for (const [id, m] of busMarks) {
      const i = this.busIndex.get(id);
      if (i !== undefined) this.markBus.set(i, m);
    }
    for (const [id, m] of branchMarks) {
      const i = this.brIndex.get(id);
      if (i !== undefined) this.markBranch.set(i, m);
    }
    this.requestRender();
  }

  markOf(kind, id) {
    const i = this.find(kind, id);
    if (i < 0) return null;
    return (kind === "bus" ? this.markBus : kind === "branch" ? this.markBranch : new Map()).get(i) ?? null;
  }

  // -- queries ----------------------------------------------------------------------------
  find(kind, id) {
    const map = kind === "bus" ? this.busIndex : kind === "branch" ? this.brIndex : this.swIndex;
    const i = map ? map.get(id) : undefined;
    return i === undefined ? -1 : i;
  }

  /** Look an element up by id or name: {kind, id} or null. */
  lookup(text) {
    if (!this.has || !text) return null;
    const t = text.split(" · ")[0].trim().toLowerCase(); // "id · name" from the suggestions
    for (const [kind, ids, names] of [
      ["bus", this.bus.id, this.bus.name], ["branch", this.br.id, this.br.name], ["switch", this.sw.id, this.sw.name],
    ]) {
      for (let i = 0; i < ids.length; i++) {
        if (ids[i].toLowerCase() === t || names[i].toLowerCase() === t) return { kind, id: ids[i] };
      }
    }
    for (const [kind, ids, names] of [["bus", this.bus.id, this.bus.name], ["branch", this.br.id, this.br.name]]) {
      for (let i = 0; i < ids.length; i++) {
        if (ids[i].toLowerCase().includes(t) || names[i].toLowerCase().includes(t)) return { kind, id: ids[i] };
      }
    }
    return null;
  }

  busClass(id) {
    const i = this.find("bus", id);
    return i < 0 ? null : V_NAMES[this.busCls[i]];
  }

  busColor(id) {
    const i = this.find("bus", id);
    return i < 0 ? null : BUS_COLOR[this.busCls[i]];
  }

  branchClass(id) {
    const i = this.find("branch", id);
    return i < 0 ? null : this.brOpen[i] ? "open" : L_NAMES[this.brCls[i]];
  }

  switchClosed(id) {
    const j = this.find("switch", id);
    return j < 0 ? null : this.sw.closed[j] === 1;
  }

  /** Where an element is drawn, in CSS pixels relative to the canvas. */
  screenPos(kind, id) {
    const i = this.find(kind, id);
    if (i < 0) return null;
    if (kind === "bus") return { x: this.bus.x[i] * this.k + this.tx, y: this.bus.y[i] * this.k + this.ty };
    if (kind === "switch") {
      const p = this._switchPos(i);
      return p ? { x: p[0], y: p[1] } : null;
    }
    const a = this.br.from[i], b = this.br.to[i];
    const x = ((this.bus.x[a] + this.bus.x[b]) / 2) * this.k + this.tx;
    const y = ((this.bus.y[a] + this.bus.y[b]) / 2) * this.k + this.ty;
    return { x, y };
  }

  // -- view -------------------------------------------------------------------------------
  fit() {
    if (!this.has || !this.nb || !this.w) return;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    const { x, y } = this.bus;
    for (let i = 0; i < this.nb; i++) {
      if (x[i] < x0) x0 = x[i];
      if (x[i] > x1) x1 = x[i];
      if (y[i] < y0) y0 = y[i];
      if (y[i] > y1) y1 = y[i];
    }
    // room for the overlays (tools on top, legend at the bottom) and for the labels, which
    // are drawn beside the buses when few buses are in view
    const { top, bottom } = this._insets();
    const labels = this.nb <= 250;
    const padL = labels ? 70 : 30, padR = labels ? 95 : 30;
    const padTop = top + (labels ? 22 : 14), padBottom = bottom + (labels ? 22 : 14);
    const bw = Math.max(x1 - x0, 1e-6), bh = Math.max(y1 - y0, 1e-6);
    const k = Math.min((this.w - padL - padR) / bw, (this.h - padTop - padBottom) / bh);
    this.k = k > 0 ? k : 1;
    this.fitK = this.k;
    this.tx = padL + (this.w - padL - padR - bw * this.k) / 2 - x0 * this.k;
    this.ty = padTop + (this.h - padTop - padBottom - bh * this.k) / 2 - y0 * this.k;
    this.requestRender();
  }

  /** The canvas' edges hidden by the panel's overlays (tool bar, legend), in CSS px. */
  _insets() {
    const panel = this.canvas.parentElement;
    const c = this.canvas.getBoundingClientRect();
    let top = 0, bottom = 0;
    for (const el of panel ? panel.querySelectorAll(".diagram-tools, .diagram-info, .legend, .diagram-banners") : []) {
      const r = el.getBoundingClientRect();
      if (!r.height || el.hidden) continue;
      if (r.top - c.top < c.height / 2) top = Math.max(top, r.bottom - c.top);
      else bottom = Math.max(bottom, c.bottom - r.top);
    }
    return { top: Math.min(top, this.h / 3), bottom: Math.min(bottom, this.h / 3) };
  }

  zoomAt(sx, sy, factor) {
    const k = clamp(this.k * factor, this.fitK / 4, this.fitK * 500);
    const f = k / this.k;
    this.tx = sx - (sx - this.tx) * f;
    this.ty = sy - (sy - this.ty) * f;
    this.k = k;
    this.requestRender();
  }

  zoom(factor) {
    this.zoomAt(this.w / 2, this.h / 2, factor);
  }

  /** Select an element ({kind, id} or null) and, with ``center``, bring it into view. */
  select(item, { center = false } = {}) {
    if (!item) {
      this.selected = null;
    } else {
      const i = this.find(item.kind, item.id);
      this.selected = i < 0 ? null : { kind: item.kind, index: i };
      if (this.selected && center) {
        const p = this.screenPos(item.kind, item.id);
        if (this.k < this.fitK * 4 && this.nb > 500) this.zoomAt(p.x, p.y, (this.fitK * 8) / this.k);
        const q = this.screenPos(item.kind, item.id);
        this.tx += this.w / 2 - q.x;
        this.ty += this.h / 2 - q.y;
      }
    }
    this.requestRender();
  }

  requestRender() {
    if (!this._raf) this._raf = requestAnimationFrame(() => this.render());
  }

  // -- drawing ----------------------------------------------------------------------------
  _busRadius() {
    return clamp(0.2 * this.lmed * this.k, 1.4, 7);
  }

  _lineWidth() {
    return clamp(0.035 * this.lmed * this.k, 0.7, 2.4);
  }

  _switchSize() {
    return clamp(this._busRadius() * 1.5, 4, 10);
  }

  _switchDrawn(j) {
    if (!this.sw.closed[j]) return true;
    const s = this._switchSize();
    if (s < 6) return false;
    const b = this.sw.branch[j];
    if (b < 0) return true;
    const a = this.br.from[b], o = this.br.to[b];
    if (a < 0 || o < 0) return false;
    const len = Math.hypot(this.bus.x[a] - this.bus.x[o], this.bus.y[a] - this.bus.y[o]) * this.k;
    return len >= 4 * s + 2 * this._busRadius() + 16;
  }

  /** Screen position of switch j's symbol: on its branch, next to its bus. */
  _switchPos(j) {
    const { bus, br, sw, k, tx, ty } = this;
    const a = sw.bus[j];
    if (a < 0) return null;
    const ax = bus.x[a] * k + tx, ay = bus.y[a] * k + ty;
    let ox, oy;
    if (sw.branch[j] >= 0) {
      const b = sw.branch[j];
      const o = br.from[b] === a ? br.to[b] : br.from[b];
      if (o < 0) return [ax, ay];
      ox = bus.x[o] * k + tx;
      oy = bus.y[o] * k + ty;
      const len = Math.hypot(ox - ax, oy - ay);
      if (len < 1e-9) return [ax, ay];
      const d = Math.min(0.32 * len, this._busRadius() + this._switchSize() * 0.5 + 6);
      return [ax + ((ox - ax) / len) * d, ay + ((oy - ay) / len) * d];
    }
    const o = sw.other[j];
    if (o < 0) return [ax, ay];
    ox = bus.x[o] * k + tx;
    oy = bus.y[o] * k + ty;
    return [(ax + ox) / 2, (ay + oy) / 2];
  }

  render() {
    if (this._raf) {
      cancelAnimationFrame(this._raf);
      this._raf = 0;
    }
    const t0 = performance.now();
    const { ctx, w, h, dpr } = this;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = BG;
    ctx.fillRect(0, 0, w, h);
    if (!this.has) {
      ctx.fillStyle = LABEL;
      ctx.font = "13px system-ui, sans-serif";
      ctx.fillText("Loading the grid…", 20, 60);
      return;
    }
    const { k, tx, ty, bus, br, sw } = this;
    const X = bus.x, Y = bus.y;
    this._drawGrid();
    const rB = this._busRadius(), lw = this._lineWidth();
    const m = 20 / k; // cull with a margin of 20 px
    const wx0 = -tx / k - m, wx1 = (w - tx) / k + m, wy0 = -ty / k - m, wy1 = (h - ty) / k + m;

    // branches, batched by colour and width
    const buckets = this._buckets, open = this._open;
    for (const b of buckets) b.length = 0;
    open.length = 0;
    let visBr = 0;
    for (let i = 0; i < this.nbr; i++) {
      const a = br.from[i], b = br.to[i];
      if (a < 0 || b < 0) continue;
      const ax = X[a], bx = X[b], ay = Y[a], by = Y[b];
      if ((ax < wx0 && bx < wx0) || (ax > wx1 && bx > wx1) || (ay < wy0 && by < wy0) || (ay > wy1 && by > wy1)) continue;
      visBr++;
      if (this.brOpen[i]) open.push(i);
      else buckets[this.brCls[i] * 4 + this.brW[i]].push(i);
    }
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    const strokeSet = (list, color, width) => {
      if (!list.length) return;
      ctx.beginPath();
      for (const i of list) {
        const a = br.from[i], b = br.to[i];
        ctx.moveTo(X[a] * k + tx, Y[a] * k + ty);
        ctx.lineTo(X[b] * k + tx, Y[b] * k + ty);
      }
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.stroke();
    };
    // halos under: alarms, then the selection
    if (this.alarmBranch.size) {
      for (const sev of [0, 1]) {
        const list = [];
        for (const [i, s] of this.alarmBranch) if (s === sev) list.push(i);
        ctx.globalAlpha = 0.35;
        strokeSet(list, ALARM[sev], lw * 2.6 + 6);
        ctx.globalAlpha = 1;
      }
    }
    if (this.selected && this.selected.kind === "branch") {
      ctx.globalAlpha = 0.45;
      strokeSet([this.selected.index], SELECT, lw * 3 + 8);
      ctx.globalAlpha = 1;
    }
    ctx.setLineDash([Math.max(3, lw * 3), Math.max(3, lw * 3)]);
    strokeSet(open, OPEN_COLOR, lw);
    ctx.setLineDash([]);
    for (let c = 0; c < 5; c++) {
      for (let wc = 0; wc < 4; wc++) strokeSet(buckets[c * 4 + wc], LINE_COLOR[c], lw * WIDTH_MUL[wc]);
    }

    // transformer symbols (two circles) when there is room
    if (rB >= 3) {
      const rt = Math.max(rB * 0.9, 3.5);
      ctx.lineWidth = 1.3;
      ctx.strokeStyle = "#9fb0c0";
      ctx.fillStyle = BG;
      ctx.beginPath();
      for (let i = 0; i < this.nbr; i++) {
        if (!br.kind[i]) continue;
        const a = br.from[i], b = br.to[i];
        if (a < 0 || b < 0) continue;
        const ax = X[a] * k + tx, ay = Y[a] * k + ty, bx = X[b] * k + tx, by = Y[b] * k + ty;
        const len = Math.hypot(bx - ax, by - ay);
        if (len < rt * 6) continue;
        const mx = (ax + bx) / 2, my = (ay + by) / 2, ux = (bx - ax) / len, uy = (by - ay) / len;
        if (mx < -20 || mx > w + 20 || my < -20 || my > h + 20) continue;
        for (const s of [-0.55, 0.55]) {
          ctx.moveTo(mx + ux * rt * s + rt, my + uy * rt * s);
          ctx.arc(mx + ux * rt * s, my + uy * rt * s, rt, 0, Math.PI * 2);
        }
      }
      ctx.fill();
      ctx.stroke();
    }

    // bus-bus switches: the link itself
    for (let j = 0; j < this.ns; j++) {
      if (sw.branch[j] >= 0 || sw.other[j] < 0 || sw.bus[j] < 0) continue;
      const a = sw.bus[j], o = sw.other[j];
      ctx.beginPath();
      ctx.moveTo(X[a] * k + tx, Y[a] * k + ty);
      ctx.lineTo(X[o] * k + tx, Y[o] * k + ty);
      ctx.strokeStyle = sw.closed[j] ? "#9fb0c0" : OPEN_COLOR;
      ctx.lineWidth = lw;
      if (!sw.closed[j]) ctx.setLineDash([3, 3]);
      ctx.stroke();
      ctx.setLineDash([]);
    }

    // buses, batched by voltage class
    const vis = this._visBus;
    vis.length = 0;
    for (let i = 0; i < this.nb; i++) {
      if (X[i] < wx0 || X[i] > wx1 || Y[i] < wy0 || Y[i] > wy1) continue;
      vis.push(i);
    }
    const useArc = rB >= 2.2;
    for (let c = 0; c < 5; c++) {
      ctx.beginPath();
      let any = false;
      for (const i of vis) {
        if (this.busCls[i] !== c) continue;
        any = true;
        const x = X[i] * k + tx, y = Y[i] * k + ty;
        if (useArc) {
          ctx.moveTo(x + rB, y);
          ctx.arc(x, y, rB, 0, Math.PI * 2);
        } else {
          ctx.rect(x - rB, y - rB, rB * 2, rB * 2);
        }
      }
      if (!any) continue;
      ctx.fillStyle = BUS_COLOR[c];
      ctx.fill();
      if (c === V.DEAD) {
        ctx.strokeStyle = "#4a5663";
        ctx.lineWidth = 1;
        ctx.stroke();
      }
    }
    if (useArc && rB >= 4) {
      // a thin dark rim keeps neighbouring buses apart
      ctx.beginPath();
      for (const i of vis) {
        const x = X[i] * k + tx, y = Y[i] * k + ty;
        ctx.moveTo(x + rB, y);
        ctx.arc(x, y, rB, 0, Math.PI * 2);
      }
      ctx.strokeStyle = "rgba(0,0,0,.55)";
      ctx.lineWidth = 1;
      ctx.stroke();
    }
    for (const [i, sev] of this.alarmBus) {
      const x = X[i] * k + tx, y = Y[i] * k + ty;
      ctx.beginPath();
      ctx.arc(x, y, rB + 3.5, 0, Math.PI * 2);
      ctx.strokeStyle = ALARM[sev];
      ctx.lineWidth = 1.8;
      ctx.stroke();
    }

    // marks: suspect (amber triangle with "!") and missing (grey ring with a slash) measurements
    const marks = [];
    for (const [i, m] of this.markBus) {
      const x = X[i] * k + tx, y = Y[i] * k + ty;
      if (x < -10 || x > w + 10 || y < -10 || y > h + 10) continue;
      marks.push([x - rB * 0.75 - 5, y - rB * 0.75 - 5, m]);
    }
    for (const [i, m] of this.markBranch) {
      const a = br.from[i], b = br.to[i];
      if (a < 0 || b < 0) continue;
      const ax = X[a] * k + tx, ay = Y[a] * k + ty, bx = X[b] * k + tx, by = Y[b] * k + ty;
      const len = Math.hypot(bx - ax, by - ay) || 1;
      // a quarter along the branch, beside it: clear of the midpoint's transformer symbol
      const mx = ax + (bx - ax) * 0.3 - ((by - ay) / len) * 8, my = ay + (by - ay) * 0.3 + ((bx - ax) / len) * 8;
      if (mx < -10 || mx > w + 10 || my < -10 || my > h + 10) continue;
      marks.push([mx, my, m]);
    }
    this._marks = marks;
    for (const [mx, my, m] of marks) this._drawMark(mx, my, m);

    // switches: open ones always (hollow squares), closed ones when zoomed in
    const s = this._switchSize();
    for (let j = 0; j < this.ns; j++) {
      if (!this._switchDrawn(j)) continue;
      const p = this._switchPos(j);
      if (!p || p[0] < -s || p[0] > w + s || p[1] < -s || p[1] > h + s) continue;
      if (sw.closed[j]) {
        const c = s * 0.8;
        ctx.fillStyle = "#aebbc8";
        ctx.fillRect(p[0] - c / 2, p[1] - c / 2, c, c);
      } else {
        ctx.fillStyle = BG;
        ctx.fillRect(p[0] - s / 2, p[1] - s / 2, s, s);
        ctx.strokeStyle = "#f2f5f7";
        ctx.lineWidth = 1.6;
        ctx.strokeRect(p[0] - s / 2, p[1] - s / 2, s, s);
      }
    }

    // the selection
    if (this.selected) {
      const { kind, index } = this.selected;
      ctx.strokeStyle = SELECT;
      ctx.lineWidth = 2;
      if (kind === "bus") {
        ctx.beginPath();
        ctx.arc(X[index] * k + tx, Y[index] * k + ty, rB + 5, 0, Math.PI * 2);
        ctx.stroke();
      } else if (kind === "switch") {
        const p = this._switchPos(index);
        if (p) ctx.strokeRect(p[0] - s / 2 - 4, p[1] - s / 2 - 4, s + 8, s + 8);
      }
    }

    // labels when few buses are in view
    this.labelRects = [];
    this.symbolRects = [];
    if (rB >= 3.5 && vis.length <= 250) drawLabels(this, vis, rB, visBr);
    this.renders++;
    this.lastRenderMs = performance.now() - t0;
    if (this.firstRenderAt === null) this.firstRenderAt = performance.now();
  }

  _drawMark(x, y, m) {
    const ctx = this.ctx;
    ctx.lineWidth = 1.5;
    if (m === MARK.SUSPECT) {
      ctx.beginPath();
      ctx.moveTo(x, y - 6);
      ctx.lineTo(x + 6, y + 5);
      ctx.lineTo(x - 6, y + 5);
      ctx.closePath();
      ctx.fillStyle = SUSPECT;
      ctx.fill();
      ctx.fillStyle = BG;
      ctx.fillRect(x - 0.8, y - 2.5, 1.6, 4);
      ctx.fillRect(x - 0.8, y + 2.3, 1.6, 1.5);
    } else {
      ctx.beginPath();
      ctx.arc(x, y, 5, 0, Math.PI * 2);
      ctx.fillStyle = BG;
      ctx.fill();
      ctx.moveTo(x - 3.5, y + 3.5);
      ctx.lineTo(x + 3.5, y - 3.5);
      ctx.strokeStyle = MISSING;
      ctx.stroke();
    }
  }

  _drawGrid() {
    const { ctx, k, tx, ty, w, h } = this;
    let step = 100;
    while (step * k < 60) step *= 2;
    while (step * k > 240) step /= 2;
    ctx.beginPath();
    const x0 = Math.floor(-tx / k / step) * step, y0 = Math.floor(-ty / k / step) * step;
    for (let x = x0; x * k + tx < w; x += step) {
      const sx = Math.round(x * k + tx) + 0.5;
      ctx.moveTo(sx, 0);
      ctx.lineTo(sx, h);
    }
    for (let y = y0; y * k + ty < h; y += step) {
      const sy = Math.round(y * k + ty) + 0.5;
      ctx.moveTo(0, sy);
      ctx.lineTo(w, sy);
    }
    ctx.strokeStyle = GRID;
    ctx.lineWidth = 1;
    ctx.stroke();
  }

  // -- hit testing ------------------------------------------------------------------------
  _buildIndex() {
    const { x, y } = this.bus;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let i = 0; i < this.nb; i++) {
      x0 = Math.min(x0, x[i]);
      x1 = Math.max(x1, x[i]);
      y0 = Math.min(y0, y[i]);
      y1 = Math.max(y1, y[i]);
    }
    if (!this.nb) x0 = y0 = 0, x1 = y1 = 1;
    const n = clamp(Math.ceil(Math.sqrt(this.nb / 3)), 4, 128);
    const cell = Math.max(x1 - x0, y1 - y0, 1e-6) / n;
    const cells = n * n;
    const busCells = Array.from({ length: cells }, () => []);
    const brCells = Array.from({ length: cells }, () => []);
    const long = [];
    const ci = (v, v0) => clamp(Math.floor((v - v0) / cell), 0, n - 1);
    for (let i = 0; i < this.nb; i++) busCells[ci(y[i], y0) * n + ci(x[i], x0)].push(i);
    for (let i = 0; i < this.nbr; i++) {
      const a = this.br.from[i], b = this.br.to[i];
      if (a < 0 || b < 0) continue;
      const cx0 = ci(Math.min(x[a], x[b]), x0), cx1 = ci(Math.max(x[a], x[b]), x0);
      const cy0 = ci(Math.min(y[a], y[b]), y0), cy1 = ci(Math.max(y[a], y[b]), y0);
      if ((cx1 - cx0 + 1) * (cy1 - cy0 + 1) > 64) {
        long.push(i);
        continue;
      }
      for (let cy = cy0; cy <= cy1; cy++) for (let cx = cx0; cx <= cx1; cx++) brCells[cy * n + cx].push(i);
    }
    this._index = { n, cell, x0, y0, busCells, brCells, long };
  }

  _near(wx, wy, r, which) {
    const { n, cell, x0, y0 } = this._index;
    const cells = this._index[which];
    const cx0 = clamp(Math.floor((wx - r - x0) / cell), 0, n - 1), cx1 = clamp(Math.floor((wx + r - x0) / cell), 0, n - 1);
    const cy0 = clamp(Math.floor((wy - r - y0) / cell), 0, n - 1), cy1 = clamp(Math.floor((wy + r - y0) / cell), 0, n - 1);
    const out = new Set();
    for (let cy = cy0; cy <= cy1; cy++) for (let cx = cx0; cx <= cx1; cx++) for (const i of cells[cy * n + cx]) out.add(i);
    return out;
  }

  /** The element under a canvas point (CSS px): {kind, index, id} or null. */
  hitTest(sx, sy) {
    if (!this.has) return null;
    const { k, tx, ty, bus, br, sw } = this;
    const s = this._switchSize();
    let best = null, bestD = Infinity;
    for (let j = 0; j < this.ns; j++) {
      if (!this._switchDrawn(j)) continue;
      const p = this._switchPos(j);
      if (!p) continue;
      const d = Math.max(Math.abs(p[0] - sx), Math.abs(p[1] - sy));
      if (d <= s / 2 + 3 && d < bestD) {
        best = { kind: "switch", index: j, id: sw.id[j] };
        bestD = d;
      }
    }
    if (best) return best;
    const wx = (sx - tx) / k, wy = (sy - ty) / k;
    const rB = this._busRadius();
    const tolB = rB + 4;
    for (const i of this._near(wx, wy, tolB / k, "busCells")) {
      const d = Math.hypot(bus.x[i] * k + tx - sx, bus.y[i] * k + ty - sy);
      if (d <= tolB && d < bestD) {
        best = { kind: "bus", index: i, id: bus.id[i] };
        bestD = d;
      }
    }
    if (best) return best;
    const tolL = this._lineWidth() * 1.5 + 5;
    const cands = this._near(wx, wy, tolL / k, "brCells");
    for (const i of this._index.long) cands.add(i);
    for (const i of cands) {
      const a = br.from[i], b = br.to[i];
      const d = segDist(sx, sy, bus.x[a] * k + tx, bus.y[a] * k + ty, bus.x[b] * k + tx, bus.y[b] * k + ty);
      if (d <= tolL && d < bestD) {
        best = { kind: "branch", index: i, id: br.id[i] };
        bestD = d;
      }
    }
    return best;
  }

  // -- events -----------------------------------------------------------------------------
  _resize() {
    const rect = this.canvas.getBoundingClientRect();
    const w = Math.max(1, Math.round(rect.width)), h = Math.max(1, Math.round(rect.height));
    this.dpr = window.devicePixelRatio || 1;
    const first = this.w <= 1;
    if (!first) {
      this.tx += (w - this.w) / 2;
      this.ty += (h - this.h) / 2;
    }
    this.w = w;
    this.h = h;
    this.canvas.width = Math.round(w * this.dpr);
    this.canvas.height = Math.round(h * this.dpr);
    if (this.has && (first || this.k === this.fitK)) this.fit();
    if (rect.width > 0) this.render();
  }

  _point(e) {
    const r = this.canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  _bindEvents() {
    const c = this.canvas;
    let down = null;
    let hoverRaf = 0, hoverPt = null;
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x, y] = this._point(e);
      const dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
      this.zoomAt(x, y, Math.exp(-clamp(dy, -300, 300) * 0.0018));
    }, { passive: false });
    c.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      const [x, y] = this._point(e);
      down = { x, y, tx: this.tx, ty: this.ty, moved: false, id: e.pointerId };
      c.setPointerCapture(e.pointerId);
    });
    c.addEventListener("pointermove", (e) => {
      const [x, y] = this._point(e);
      if (down) {
        if (!down.moved && Math.hypot(x - down.x, y - down.y) > 4) {
          down.moved = true;
          c.classList.add("dragging");
          this.onHover(null);
        }
        if (down.moved) {
          this.tx = down.tx + x - down.x;
          this.ty = down.ty + y - down.y;
          this.requestRender();
        }
        return;
      }
      hoverPt = [x, y];
      if (!hoverRaf) {
        hoverRaf = requestAnimationFrame(() => {
          hoverRaf = 0;
          const hit = this.hitTest(hoverPt[0], hoverPt[1]);
          c.classList.toggle("pointing", !!hit);
          this.onHover(hit, hoverPt[0], hoverPt[1]);
        });
      }
    });
    const up = (e) => {
      if (!down) return;
      const wasClick = !down.moved;
      c.classList.remove("dragging");
      try {
        c.releasePointerCapture(down.id);
      } catch {
        /* already released */
      }
      down = null;
      if (wasClick && e.type === "pointerup") {
        const [x, y] = this._point(e);
        const hit = this.hitTest(x, y);
        this.selected = hit ? { kind: hit.kind, index: hit.index } : null;
        this.requestRender();
        this.onSelect(hit ? { kind: hit.kind, id: hit.id } : null);
      }
    };
    c.addEventListener("pointerup", up);
    c.addEventListener("pointercancel", up);
    c.addEventListener("pointerleave", () => this.onHover(null));
    c.addEventListener("dblclick", (e) => {
      const [x, y] = this._point(e);
      this.zoomAt(x, y, 2);
    });
    c.addEventListener("keydown", (e) => {
      const step = 60;
      if (e.key === "+" || e.key === "=") this.zoom(1.4);
      else if (e.key === "-") this.zoom(1 / 1.4);
      else if (e.key === "f" || e.key === "0") this.fit();
      else if (e.key === "ArrowLeft") this.tx += step;
      else if (e.key === "ArrowRight") this.tx -= step;
      else if (e.key === "ArrowUp") this.ty += step;
      else if (e.key === "ArrowDown") this.ty -= step;
      else if (e.key === "Escape") {
        this.selected = null;
        this.onSelect(null);
      } else return;
      e.preventDefault();
      this.requestRender();
    });
  }
}

function segDist(px, py, ax, ay, bx, by) {
  const dx = bx - ax, dy = by - ay;
  const l2 = dx * dx + dy * dy;
  let t = l2 ? ((px - ax) * dx + (py - ay) * dy) / l2 : 0;
  t = t < 0 ? 0 : t > 1 ? 1 : t;
  return Math.hypot(px - (ax + t * dx), py - (ay + t * dy));
}
