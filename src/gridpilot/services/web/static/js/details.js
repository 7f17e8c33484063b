// The side panel: what was clicked (bus, branch or switch), its latest values, a trend from
// the historian, and the switches with Open/Close behind a confirmation.

import { get, post } from "./api.js";
import { drawTrend } from "./chart.js";
import { $, clear, fmtNum, fmtTime, h } from "./dom.js";
import { qualityText } from "./quality.js";

const MEAS_REFRESH_MS = 5000;

/** The range selector: window length and the historian bucket (0: raw samples). */
export const RANGES = [
  { key: "5m", label: "5 min", s: 300, bucket: 0, refresh: 5000 },
  { key: "1h", label: "1 h", s: 3600, bucket: 10, refresh: 20000 },
  { key: "24h", label: "24 h", s: 86400, bucket: 60, refresh: 60000 },
  { key: "7d", label: "7 d", s: 7 * 86400, bucket: 3600, refresh: 300000 },
];

const V_PILL = { none: ["none", "no estimate"], low: ["low", "below band"], normal: ["ok", "in band"], high: ["high", "above band"], "de-energised": ["none", "de-energised"] };
const L_PILL = { none: ["none", "no estimate"], normal: ["ok", "normal"], high: ["warn", "high"], overload: ["bad", "overload"], "de-energised": ["none", "de-energised"], open: ["warn", "open"] };

export class Details {
  constructor(app) {
    this.app = app;
    this.item = null;
    this.range = RANGES[0];
    this.trendData = null;
    this.trendToken = 0;
    this.trendTimer = 0;
    this.results = new Map(); // switch id -> {cls, text}
    this.title = $("#details-title");
    this.body = $("#details-body");
    this.closeBtn = $("#details-close");
    this.closeBtn.addEventListener("click", () => this.app.select(null));
  }

  /** One line for the diagram's tooltip. */
  summary(hit) {
    const d = this.app.diagram;
    const mark = (kind, id) => {
      const m = d.markOf(kind, id);
      return m === "suspect" ? " · suspect measurement" : m === "missing" ? " · measurement missing" : "";
    };
    if (hit.kind === "bus") {
      const i = hit.index, v = d.busV[i];
      return `${d.bus.name[i]} (${d.bus.id[i]}) · ${v === v ? `${v.toFixed(4)} pu` : "no estimate"}${mark("bus", d.bus.id[i])}`;
    }
    if (hit.kind === "branch") {
      const i = hit.index, l = d.brLoad[i];
      return `${d.br.name[i]} · ${d.brOpen[i] ? "open · " : ""}${l === l ? `${l.toFixed(1)} %` : "no estimate"}${mark("branch", d.br.id[i])}`;
    }
    const j = hit.index;
    return `Switch ${d.sw.name[j]} (${d.sw.id[j]}) · ${d.sw.closed[j] ? "closed" : "OPEN"}`;
  }

  show(item) {
    clearTimeout(this.trendTimer);
    this.trendToken++;
    this.item = item;
    this.trendData = null;
    this.measMrids = null;
    clear(this.body);
    const d = this.app.diagram;
    if (!item || !d || d.find(item.kind, item.id) < 0) {
      this.item = null;
      this.title.textContent = "Details";
      this.closeBtn.hidden = true;
      this.body.append(h("p", { class: "muted empty" },
        "Click a bus, a line or a switch on the diagram to see its values, its trend and its switches."));
      this.body.dataset.kind = "";
      return;
    }
    this.closeBtn.hidden = false;
    this.body.dataset.kind = item.kind;
    this.body.dataset.id = item.id;
    if (item.kind === "bus") this._bus(d.find("bus", item.id));
    else if (item.kind === "branch") this._branch(d.find("branch", item.id));
    else this._switch(d.find("switch", item.id));
  }

  // -- views ------------------------------------------------------------------------------
  _link(kind, id, text) {
    return h("button", { type: "button", class: "link", "data-testid": `goto-${kind}`, onclick: () => this.app.select({ kind, id }, { center: true }) }, text || id);
  }

  _bus(i) {
    const d = this.app.diagram;
    this.title.textContent = d.bus.name[i];
    const id = d.bus.id[i];
    this.body.append(
      h("dl", { class: "kv" },
        h("dt", {}, "Id"), h("dd", { "data-testid": "details-id" }, id),
        h("dt", {}, "Nominal"), h("dd", {}, `${fmtNum(d.bus.vn[i], 1)} kV`),
        h("dt", {}, "Band"), h("dd", {}, `${fmtNum(d.bus.vmin[i], 3)} – ${fmtNum(d.bus.vmax[i], 3)} pu`)),
      h("div", { class: "value-row" },
        h("span", { class: "big-value", "data-testid": "details-value", id: "dv-main" }, "–"),
        h("span", { class: "muted", id: "dv-kv" }),
        h("span", { class: "pill", id: "dv-pill", "data-testid": "details-state" })),
      h("div", { class: "note" }, "Estimate at ", h("span", { id: "dv-time", "data-testid": "details-time" }, "–")));
    const topo = this.app.topo;
    const attached = topo
      ? [...Object.entries(topo.loads), ...Object.entries(topo.generators)].filter(([, b]) => b === id).map(([m]) => m)
      : [];
    this._measurements([id, ...attached]);
    const conn = [];
    for (let b = 0; b < d.nbr; b++) {
      if (d.br.from[b] === i || d.br.to[b] === i) conn.push(b);
    }
    if (conn.length) {
      this.body.append(h("div", { class: "section-title" }, "Connected branches"),
        h("div", { class: "row" }, conn.slice(0, 40).map((b) => this._link("branch", d.br.id[b], d.br.name[b]))));
    }
    const sws = [];
    for (let j = 0; j < d.ns; j++) if (d.sw.bus[j] === i || d.sw.other[j] === i) sws.push(j);
    if (sws.length) this._switchList(sws, null);
    this._trend("v_pu", "pu", 4, [
      { value: d.bus.vmin[i], label: `min ${d.bus.vmin[i].toFixed(3)}` },
      { value: d.bus.vmax[i], label: `max ${d.bus.vmax[i].toFixed(3)}` },
    ]);
    this.refresh();
  }

  _branch(i) {
    const d = this.app.diagram;
    this.title.textContent = d.br.name[i];
    const a = d.br.from[i], b = d.br.to[i];
    this.body.append(
      h("dl", { class: "kv" },
        h("dt", {}, "Id"), h("dd", { "data-testid": "details-id" }, d.br.id[i]),
        h("dt", {}, "Kind"), h("dd", {}, d.br.kind[i] ? "transformer" : "line"),
        h("dt", {}, d.br.kind[i] ? "HV bus" : "From"), h("dd", {}, a >= 0 ? this._link("bus", d.bus.id[a], d.bus.name[a]) : "–"),
        h("dt", {}, d.br.kind[i] ? "LV bus" : "To"), h("dd", {}, b >= 0 ? this._link("bus", d.bus.id[b], d.bus.name[b]) : "–")),
      h("div", { class: "value-row" },
        h("span", { class: "big-value", "data-testid": "details-value", id: "dv-main" }, "–"),
        h("span", { class: "muted", id: "dv-kv" }),
        h("span", { class: "pill", id: "dv-pill", "data-testid": "details-state" })),
      h("div", { class: "note" }, "Estimate at ", h("span", { id: "dv-time", "data-testid": "details-time" }, "–")));
    this._measurements([d.br.id[i]]);
    if (d.br.switches[i].length) this._switchList(d.br.switches[i], i);
    this._trend("loading_pct", "%", 1, [{ value: 100, label: "100 %" }, { value: 80, label: "80 %" }]);
    this.refresh();
  }

  _switch(j) {
    const d = this.app.diagram;
    this.title.textContent = `Switch ${d.sw.name[j]}`;
    const b = d.sw.branch[j], a = d.sw.bus[j];
    this.body.append(
      h("dl", { class: "kv" },
        h("dt", {}, "Id"), h("dd", { "data-testid": "details-id" }, d.sw.id[j]),
        h("dt", {}, "At bus"), h("dd", {}, a >= 0 ? this._link("bus", d.bus.id[a], d.bus.name[a]) : "–"),
        h("dt", {}, b >= 0 ? "On branch" : "To bus"),
        h("dd", {}, b >= 0 ? this._link("branch", d.br.id[b], d.br.name[b])
          : d.sw.other[j] >= 0 ? this._link("bus", d.bus.id[d.sw.other[j]], d.bus.name[d.sw.other[j]]) : "–")));
    this._switchList(b >= 0 ? d.br.switches[b] : [j], b >= 0 ? b : null, j);
    if (b >= 0) {
      this.body.append(h("div", { class: "value-row" },
        h("span", { class: "muted" }, `${d.br.name[b]} loading`),
        h("span", { class: "big-value", "data-testid": "details-value", id: "dv-main" }, "–"),
        h("span", { class: "pill", id: "dv-pill", "data-testid": "details-state" })));
      this._trend("loading_pct", "%", 1, [{ value: 100, label: "100 %" }], d.br.id[b]);
    }
    this.refresh();
  }

  // -- measurements and their quality ---------------------------------------------------------
  _measurements(mrids) {
    this.measMrids = mrids;
    this.body.append(h("div", { class: "section-title" }, "Measurements"),
      h("div", { id: "dv-meas", "data-testid": "details-measurements" }, h("p", { class: "muted small" }, "Reading…")));
    this._loadMeasurements();
  }

  async _loadMeasurements() {
    const mrids = this.measMrids;
    if (!mrids || !mrids.length) return;
    const token = (this.measToken = (this.measToken || 0) + 1);
    this.measAt = performance.now();
    let sets = [], error = "";
    try {
      sets = await get(this.app.gridPath(`/measurements?${mrids.map((m) => `mrid=${encodeURIComponent(m)}`).join("&")}`));
    } catch (e) {
      error = e.message;
    }
    const box = $("#dv-meas");
    if (token !== this.measToken || mrids !== this.measMrids || !box) return;
    const rows = [];
    for (const set of sets) {
      for (const m of set.measurements) {
        const value = m.measurand === "voltage"
          ? `${fmtNum(m.v_pu, 4)} pu`
          : `${fmtNum(m.p_mw, 3)} MW · ${fmtNum(m.q_mvar, 3)} Mvar`;
        const q = m.quality || 0;
        const removed = (this.app.quality?.bad || []).some((b) =>
          b.source === set.source && b.mrid === m.mrid && b.measurand === m.measurand && b.terminal === m.terminal);
        const pill = removed
          ? h("span", { class: "pill bad", "data-testid": "meas-quality", title: "removed as bad data by the estimator" }, "bad data")
          : h("span", { class: `pill ${q ? (q & 1 ? "bad" : "warn") : "ok"}`, "data-testid": "meas-quality" }, qualityText(q));
        rows.push(h("tr", { "data-testid": "meas-row", "data-source": set.source, "data-quality": String(q), "data-removed": removed ? "1" : "0" },
          h("td", { title: `${set.kind}, reported ${fmtTime(set.t_ns, { tenths: true })}` }, set.source),
          h("td", {}, `${m.measurand} · ${m.terminal}${m.mrid === mrids[0] ? "" : ` · ${m.mrid}`}`),
          h("td", { class: "num mono" }, value),
          h("td", {}, pill)));
      }
    }
    const notes = [];
    for (const mrid of mrids) {
      const about = this.app.quality ? this.app.quality.about(mrid) : { suspect: [], missing: [] };
      for (const s of about.suspect.filter((x) => x.why.startsWith("removed"))) {
        notes.push(h("li", { class: "q-suspect", "data-testid": "meas-suspect" }, `${s.source}: ${s.measurand} of ${s.mrid} ${s.why}`));
      }
      for (const dev of about.missing) {
        notes.push(h("li", { class: "q-missing", "data-testid": "meas-missing" }, `${dev}: missing (no recent report) — ${mrid} is not measured now`));
      }
    }
    clear(box).append(
      rows.length
        ? h("table", { class: "table meas-table" }, h("thead", {}, h("tr", {}, h("th", {}, "Device"), h("th", {}, "Quantity"), h("th", { class: "num" }, "Value"), h("th", {}, "Quality"))), h("tbody", {}, rows))
        : h("p", { class: "muted small" }, error ? `Not available: ${error}` : "No device measures it (its values are estimated only)."),
      ...(notes.length ? [h("ul", { class: "q-notes" }, notes)] : []));
  }

  /** The latest values of what is shown (called on every estimate). */
  refresh() {
    const item = this.item, d = this.app.diagram;
    if (!item || !d) return;
    if (this.measMrids && performance.now() - this.measAt > MEAS_REFRESH_MS) this._loadMeasurements();
    const main = $("#dv-main"), pill = $("#dv-pill"), kv = $("#dv-kv"), time = $("#dv-time");
    const est = this.app.est;
    if (time) time.textContent = est ? fmtTime(est.t_ns, { tenths: true }) : "–";
    let branch = -1;
    if (item.kind === "bus") {
      const i = d.find("bus", item.id), v = d.busV[i];
      if (main) main.replaceChildren(v === v ? v.toFixed(4) : "–", h("span", { class: "unit" }, "pu"));
      if (kv) kv.textContent = v === v ? `${(v * d.bus.vn[i]).toFixed(2)} kV` : "";
      const [cls, text] = V_PILL[d.busClass(item.id)];
      if (pill) {
        pill.className = `pill ${cls}`;
        pill.textContent = text;
      }
      return;
    }
    if (item.kind === "branch") branch = d.find("branch", item.id);
    else branch = d.sw.branch[d.find("switch", item.id)];
    if (branch < 0) return;
    const l = d.brLoad[branch], p = d.brP[branch];
    if (main) main.replaceChildren(l === l ? l.toFixed(1) : "–", h("span", { class: "unit" }, "%"));
    if (kv) kv.textContent = p === p ? `P ${p.toFixed(3)} MW (from end)` : "";
    const [cls, text] = L_PILL[d.branchClass(d.br.id[branch])];
    if (pill) {
      pill.className = `pill ${cls}`;
      pill.textContent = text;
    }
  }

  // -- switching --------------------------------------------------------------------------
  _switchList(indices, branch, highlight = -1) {
    const can = this.app.canOperate();
    const list = h("div", { class: "switches", "data-testid": "switch-list" });
    for (const j of indices) list.append(this._switchRow(j, branch, j === highlight));
    this.body.append(h("div", { class: "section-title" }, "Switching"), list);
    if (!can) {
      this.body.append(h("p", { class: "note", "data-testid": "switch-viewer-note" },
        `You are signed in as ${this.app.me?.role ?? "viewer"}: switching needs the operator role.`));
    }
    this.body.append(h("div", { id: "command-result", "data-testid": "command-result", hidden: true }));
    this._lastResultFor = null;
  }

  _switchRow(j, branch, highlight) {
    const d = this.app.diagram;
    const id = d.sw.id[j];
    const closed = d.sw.closed[j] === 1;
    const can = this.app.canOperate();
    const label = d.sw.name[j] === id ? id : `${d.sw.name[j]} (${id})`;
    const btn = h("button", {
      type: "button", class: closed ? "btn btn-small btn-warn" : "btn btn-small btn-primary",
      "data-testid": "switch-toggle", "data-switch-id": id, disabled: !can,
      title: can ? "" : "Switching needs the operator role",
      onclick: () => this._operate(j, branch),
    }, closed ? "Open" : "Close");
    return h("div", { class: "switch-row", "data-testid": "switch-row", "data-switch-id": id, "data-closed": closed ? "1" : "0", style: highlight ? { borderColor: "var(--accent)" } : null },
      h("span", { class: "sw-name" }, label),
      h("span", { class: `switch-state ${closed ? "closed" : "open"}`, "data-testid": "switch-state" }, closed ? "CLOSED" : "OPEN"),
      btn);
  }

  async _operate(j, branch) {
    const app = this.app, d = app.diagram;
    const id = d.sw.id[j];
    const closing = d.sw.closed[j] !== 1;
    const label = d.sw.name[j] === id ? id : `${d.sw.name[j]} (${id})`;
    const where = branch !== null && branch >= 0 ? ` on ${d.br.name[branch]}` : d.sw.bus[j] >= 0 ? ` at ${d.bus.name[d.sw.bus[j]]}` : "";
    const verb = closing ? "Close" : "Open";
    const ok = await app.confirm({
      title: `${verb} switch`,
      text: `${verb} switch ${label}${where}?`,
      note: "The command goes to the field device (select before operate); the diagram shows the result when the field reports it.",
      ok: `${verb} ${id}`,
    });
    if (!ok) return;
    const out = $("#command-result");
    const show = (cls, text) => {
      if (!out) return;
      out.hidden = false;
      out.className = `result ${cls}`;
      out.dataset.state = cls;
      out.textContent = text;
    };
    for (const b of this.body.querySelectorAll('[data-testid="switch-toggle"]')) b.disabled = true;
    show("pending", `${verb} ${id}: sent, waiting for the field…`);
    try {
      const r = await post(app.gridPath("/commands/switch"), { target: id, closed: closing });
      this._lastResultFor = r.command_id;
      if (r.ok) {
        show("ok", `Done: ${r.change || `${id} ${closing ? "closed" : "opened"}`} (executed by ${r.executed_by} at ${fmtTime(r.t_ns)}).`);
      } else {
        show("err", `Refused by ${r.executed_by || "the platform"}: ${r.error || "no reason given"}`);
      }
    } catch (e) {
      show("err", e.message);
      if (e.status !== 403) app.toast(e.message, "error");
    } finally {
      this._rerenderSwitches();
    }
  }

  _rerenderSwitches() {
    const d = this.app.diagram;
    for (const row of this.body.querySelectorAll('[data-testid="switch-row"]')) {
      const j = d.find("switch", row.dataset.switchId);
      if (j < 0) continue;
      const fresh = this._switchRow(j, d.sw.branch[j], row.style.borderColor !== "");
      row.replaceWith(fresh);
    }
  }

  onTopology(changed) {
    if (!this.item) return;
    const rows = [...this.body.querySelectorAll('[data-testid="switch-row"]')];
    if (rows.some((r) => changed.includes(r.dataset.switchId))) this._rerenderSwitches();
    this.refresh();
  }

  onCommandResult(result) {
    // a command from elsewhere (another operator, a script) on a switch shown here
    const rows = [...this.body.querySelectorAll('[data-testid="switch-row"]')];
    if (!rows.some((r) => r.dataset.switchId === result.target) || result.command_id === this._lastResultFor) return;
    const out = $("#command-result");
    if (!out) return;
    out.hidden = false;
    out.className = `result ${result.ok ? "ok" : "err"}`;
    out.textContent = result.ok
      ? `${result.change || result.target} (command ${result.command_id}, executed by ${result.executed_by})`
      : `Command ${result.command_id} on ${result.target} refused: ${result.error}`;
  }

  // -- trend ------------------------------------------------------------------------------
  _trend(quantity, unit, digits, limits, mrid = null) {
    const ranges = h("div", { class: "ranges", role: "group", "aria-label": "Trend range" },
      RANGES.map((r) => h("button", {
        type: "button", class: `btn${r === this.range ? " active" : ""}`, "data-testid": `trend-range-${r.key}`, "data-range": r.key,
        onclick: (e) => {
          this.range = r;
          for (const b of ranges.children) b.classList.toggle("active", b === e.currentTarget);
          this._loadTrend();
        },
      }, r.label)));
    const canvas = h("canvas", { "data-testid": "trend-chart", "data-points": "0" });
    const msg = h("div", { class: "trend-msg", "data-testid": "trend-msg" }, "Loading…");
    const wrap = h("div", { class: "trend-wrap" }, canvas, msg);
    this.body.append(h("div", { class: "section-title" }, `Trend · ${quantity === "v_pu" ? "voltage (estimate)" : "loading (estimate)"}`), ranges, wrap);
    this.trend = { quantity, unit, digits, limits, canvas, msg, mrid: mrid || this.item.id };
    if (!this._ro) {
      this._ro = new ResizeObserver(() => this._drawTrend());
    }
    this._ro.disconnect();
    this._ro.observe(wrap);
    this._loadTrend();
  }

  async _loadTrend() {
    clearTimeout(this.trendTimer);
    const t = this.trend;
    if (!t || !this.item) return;
    const token = ++this.trendToken;
    const range = this.range;
    const now = this.app.nowMs();
    const t1 = now + 2000, t0 = now - range.s * 1000;
    const ns = (ms) => (BigInt(Math.floor(ms)) * 1000000n).toString();
    const q = new URLSearchParams({ mrid: t.mrid, quantity: t.quantity, bucket_s: String(range.bucket), t_from_ns: ns(t0), t_to_ns: ns(t1) });
    t.msg.hidden = false;
    if (!this.trendData) t.msg.textContent = "Loading…";
    try {
      const r = await get(this.app.gridPath(`/history?${q}`));
      if (token !== this.trendToken) return;
      const s = (r.data && r.data[0]) || { t_ns: [] };
      const tms = s.t_ns.map((x) => Number(x) / 1e6);
      const agg = range.bucket > 0;
      this.trendData = {
        data: agg ? { t: tms.map((x) => x + range.bucket * 500), v: s.avg, min: s.min, max: s.max } : { t: tms, v: s.value },
        t0, t1: now, agg,
      };
      this._drawTrend();
    } catch (e) {
      if (token !== this.trendToken) return;
      t.msg.hidden = false;
      t.msg.textContent = e.message;
      t.canvas.dataset.points = "0";
    }
    if (token === this.trendToken) this.trendTimer = setTimeout(() => this._loadTrend(), range.refresh);
  }

  _drawTrend() {
    const t = this.trend, td = this.trendData;
    if (!t || !td || !t.canvas.isConnected) return;
    const n = drawTrend(t.canvas, td.data, { t0: td.t0, t1: td.t1, unit: t.unit, digits: t.digits, limits: t.limits });
    t.canvas.dataset.range = this.range.key;
    t.canvas.dataset.aggregated = td.agg ? "1" : "0";
    t.msg.hidden = n > 0;
    if (!n) t.msg.textContent = "No stored values in this range yet.";
  }
}
