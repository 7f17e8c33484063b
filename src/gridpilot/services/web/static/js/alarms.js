// The active alarms: loaded once, then kept up to date by the live "alarm" messages. An alarm
// leaves the list once it is cleared and acknowledged.

import { get, post, seg } from "./api.js";
import { $, clear, fmtTime, h } from "./dom.js";

const MAX_ROWS = 500;
const SEV_RANK = { critical: 0, warning: 1 };

/** What each kind of alarm is about, in an operator's words; unknown kinds show as they are. */
export const KIND_LABEL = {
  voltage_high: "voltage high",
  voltage_low: "voltage low",
  overload: "overload",
  not_observable: "not observable",
  bad_data: "bad data",
  comm_loss: "communication lost",
  service_down: "service down",
  service_restarted: "service restarted",
  broker_outage: "broker outage",
  twin_diverged: "twin diverged",
  de_energised: "de-energised",
};
// the alarms about the platform rather than the grid: their mrid is a service or a device
const PLATFORM = new Set(["service_down", "service_restarted", "broker_outage"]);

export function kindLabel(kind) {
  return KIND_LABEL[kind] || String(kind || "alarm").replaceAll("_", " ");
}

function valueText(a) {
  const num = (x) => typeof x === "number" && Number.isFinite(x);
  if (a.kind === "overload" && num(a.value)) return `${a.value.toFixed(1)} / ${a.limit.toFixed(0)} %`;
  if ((a.kind === "voltage_high" || a.kind === "voltage_low") && num(a.value)) {
    return `${a.value.toFixed(4)} / ${a.limit.toFixed(3)} pu`;
  }
  if (a.kind === "bad_data" && num(a.value) && a.value) {
    return num(a.limit) && a.limit ? `r ${a.value.toFixed(1)} / ${a.limit.toFixed(1)} σ` : `r ${a.value.toFixed(1)} σ`;
  }
  return "–"; // the message says it (a device, a service, an island...)
}

export class Alarms {
  constructor(app) {
    this.app = app;
    this.items = new Map();
    this.pending = new Set(); // ids being acknowledged
    this.buffer = null; // live changes held while the list loads
    this._raf = 0;
    this.body = $("#alarms-body");
  }

  /** The active alarms from the server; live changes that come meanwhile are applied after. */
  async load() {
    this.buffer = [];
    try {
      const list = await get(this.app.gridPath("/alarms"));
      this.items.clear();
      for (const a of list) this.items.set(a.id, a);
    } catch (e) {
      this.app.toast(e.message, "error");
    }
    const later = this.buffer;
    this.buffer = null;
    for (const a of later) this.upsert(a);
    this.changed();
  }

  upsert(a) {
    if (a.grid && this.app.grid && a.grid !== this.app.grid) return;
    if (this.buffer) {
      this.buffer.push(a);
      return;
    }
    if (a.state === "cleared" && a.acknowledged) this.items.delete(a.id);
    else this.items.set(a.id, a);
    if (a.acknowledged) this.pending.delete(a.id);
    this.changed();
  }

  changed() {
    if (!this._raf) {
      this._raf = requestAnimationFrame(() => {
        this._raf = 0;
        this.render();
      });
    }
  }

  sorted() {
    return [...this.items.values()].sort((a, b) =>
      (a.state === "raised" ? 0 : 1) - (b.state === "raised" ? 0 : 1) ||
      (a.acknowledged ? 1 : 0) - (b.acknowledged ? 1 : 0) ||
      (SEV_RANK[a.severity] ?? 2) - (SEV_RANK[b.severity] ?? 2) ||
      b.raised_t_ns - a.raised_t_ns ||
      a.id.localeCompare(b.id));
  }

  render() {
    const all = this.sorted();
    const can = this.app.canOperate();
    clear(this.body);
    for (const a of all.slice(0, MAX_ROWS)) {
      const acked = a.acknowledged;
      const ackCell = acked
        ? h("span", { "data-testid": "alarm-acked-by" }, `✓ ${a.acknowledged_by || "yes"}`)
        : can
          ? h("button", {
            type: "button", class: "btn btn-small", "data-testid": "alarm-ack", "data-alarm-id": a.id,
            disabled: this.pending.has(a.id), onclick: () => this.ack(a.id),
          }, this.pending.has(a.id) ? "…" : "Acknowledge")
          : h("span", { class: "muted" }, "not yet");
      const known = this.app.diagram && !PLATFORM.has(a.kind) && (this.app.diagram.find("bus", a.mrid) >= 0 || this.app.diagram.find("branch", a.mrid) >= 0);
      const kind = this.app.diagram && this.app.diagram.find("bus", a.mrid) >= 0 ? "bus" : "branch";
      this.body.append(h("tr", {
        class: `alarm-row alarm-${a.state}${acked ? " acked" : " unacked"}`, "data-testid": "alarm-row",
        "data-alarm-id": a.id, "data-state": a.state, "data-severity": a.severity, "data-acknowledged": acked ? "1" : "0",
      },
      h("td", { title: a.severity }, h("span", { class: `sev ${a.severity}` }), " ", h("span", { class: "small muted" }, a.severity === "critical" ? "crit" : "warn")),
      h("td", { class: "mono", title: fmtTime(a.raised_t_ns, { date: true }) }, fmtTime(a.raised_t_ns)),
      h("td", {}, known
        ? h("button", { type: "button", class: "link", onclick: () => this.app.select({ kind, id: a.mrid }, { center: true }) }, a.mrid)
        : h("span", { title: PLATFORM.has(a.kind) ? "platform" : "" }, a.mrid || "platform")),
      h("td", { "data-testid": "alarm-message" },
        h("span", { class: `kind-tag kind-${a.kind}`, "data-testid": "alarm-kind" }, kindLabel(a.kind)), " ",
        a.message || ""),
      h("td", { class: "num mono" }, valueText(a)),
      h("td", { "data-testid": "alarm-state" }, a.state),
      h("td", {}, ackCell)));
    }
    $("#alarms-empty").hidden = all.length > 0;
    $("#alarms-note").textContent = all.length > MAX_ROWS ? `showing ${MAX_ROWS} of ${all.length}` : "";
    const raised = all.filter((a) => a.state === "raised");
    const count = $("#alarm-count");
    count.textContent = String(all.length);
    count.classList.toggle("hot", raised.length > 0);
    const sum = $("#alarm-summary");
    const crit = raised.filter((a) => a.severity === "critical").length;
    const unacked = all.filter((a) => !a.acknowledged).length;
    sum.textContent = raised.length
      ? `${raised.length} alarm${raised.length > 1 ? "s" : ""}${crit ? ` · ${crit} critical` : ""}${unacked ? ` · ${unacked} unacknowledged` : ""}`
      : unacked ? `${unacked} to acknowledge` : "No alarms";
    sum.className = `alarm-summary${crit ? " has-critical" : raised.length || unacked ? " has-warning" : ""}`;
    sum.dataset.raised = String(raised.length);
    this.app.diagram?.setAlarms(raised);
  }

  async ack(id) {
    this.pending.add(id);
    this.changed();
    try {
      await post(this.app.gridPath(`/alarms/${seg(id)}/ack`));
      // the live message updates the row; fetch once more in case it was missed
      setTimeout(() => {
        if (!this.pending.has(id)) return;
        this.load().then(() => {
          this.pending.delete(id);
          this.changed();
        });
      }, 1500);
    } catch (e) {
      this.pending.delete(id);
      this.app.toast(e.message, "error");
      this.changed();
    }
  }
}
