// The training page: disturb the digital twin (a gross measurement error, a communication
// outage, clear all) through POST /api/grids/{grid}/training/inject, and watch the effect.

import { get, post } from "./api.js";
import { $, clear, fmtTime, h } from "./dom.js";

export class Training {
  constructor(app) {
    this.app = app;
    this.devices = [];
    this.loadedFor = null;
    $("#tr-ge-source").addEventListener("change", () => this._fillPoints());
    $("#tr-ge-mrid").addEventListener("change", () => {
      const opt = $("#tr-ge-mrid").selectedOptions[0];
      if (opt && opt.dataset.measurand) this._setMeasurand(opt.dataset.measurand);
    });
    $("#tr-ge-measurand").addEventListener("change", (e) => this._setMeasurand(e.target.value));
    $("#tr-gross-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const measurand = $("#tr-ge-measurand").value;
      const error = Number($("#tr-ge-error").value);
      const duration = Number($("#tr-ge-duration").value);
      const source = $("#tr-ge-source").value, mrid = $("#tr-ge-mrid").value;
      const unit = measurand === "voltage" ? "p.u." : "MW/Mvar";
      this._send(
        { kind: "gross_error", source, mrid, measurand, error, duration_s: duration },
        `gross error ${error >= 0 ? "+" : ""}${error} ${unit} on ${mrid} (${measurand}) as measured by ${source}, for ${duration} simulated s`,
      );
    });
    $("#tr-outage-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const source = $("#tr-co-source").value, duration = Number($("#tr-co-duration").value);
      this._send({ kind: "comm_outage", source, duration_s: duration }, `communication outage of ${source} for ${duration} simulated s`);
    });
    $("#tr-clear").addEventListener("click", () => this._send({ kind: "clear" }, "every injection cleared"));
  }

  async show() {
    const can = this.app.canOperate();
    $("#tr-role-note").hidden = can;
    for (const b of document.querySelectorAll("#view-training button")) b.disabled = !can;
    if (this.app.est) this.onEstimate(this.app.est);
    if (this.loadedFor === this.app.grid && this.devices.length) return;
    try {
      const devices = await get(this.app.gridPath("/devices"));
      // another show() filled the form while this one waited: keep what the operator chose
      if (this.loadedFor === this.app.grid && this.devices.length) return;
      this.devices = devices.map((d) => ({ source: d.id, kind: d.kind, points: d.points }));
      this.loadedFor = this.app.grid;
    } catch (e) {
      this.app.toast(e.message, "error");
      return;
    }
    for (const id of ["#tr-ge-source", "#tr-co-source"]) {
      const sel = $(id);
      const keep = sel.value;
      clear(sel);
      for (const d of this.devices) sel.append(h("option", { value: d.source }, `${d.source} (${d.kind})`));
      if (keep && this.devices.some((d) => d.source === keep)) sel.value = keep;
    }
    if (!this.devices.length) {
      const note = "No field device in this grid";
      for (const id of ["#tr-ge-source", "#tr-co-source"]) $(id).append(h("option", { value: "" }, note));
    }
    this._fillPoints();
  }

  _fillPoints() {
    const dev = this.devices.find((d) => d.source === $("#tr-ge-source").value);
    const sel = clear($("#tr-ge-mrid"));
    if (!dev) return;
    const seen = new Set();
    for (const p of dev.points) {
      const key = `${p.mrid}/${p.measurand}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const what = p.measurand === "voltage" ? "voltage" : `power (${p.terminal})`;
      sel.append(h("option", { value: p.mrid, "data-measurand": p.measurand }, `${p.mrid} — ${what}`));
    }
    const first = sel.selectedOptions[0];
    if (first) this._setMeasurand(first.dataset.measurand);
  }

  _setMeasurand(m) {
    const sel = $("#tr-ge-measurand");
    const changed = sel.value !== m;
    sel.value = m;
    $("#tr-ge-unit").textContent = m === "voltage" ? "added to the measured voltage (p.u.)" : "added to P and Q (MW, Mvar)";
    if (changed) $("#tr-ge-error").value = m === "voltage" ? "0.1" : "0.5";
  }

  async _send(body, what) {
    const reply = $("#tr-reply");
    const log = $("#tr-log");
    const buttons = [...document.querySelectorAll("#view-training button")];
    for (const b of buttons) b.disabled = true;
    try {
      const r = await post(this.app.gridPath("/training/inject"), body);
      const ok = r && r.ok;
      const text = ok ? `Accepted: ${what}.` : `Refused: ${r && r.error ? r.error : "no reason given"}`;
      reply.className = `reply ${ok ? "ok" : "err"}`;
      reply.dataset.state = ok ? "ok" : "err";
      reply.textContent = text;
      log.prepend(h("li", { class: ok ? "" : "err" }, `${fmtTime(Date.now() * 1e6)} ${text}`));
    } catch (e) {
      reply.className = "reply err";
      reply.dataset.state = "err";
      reply.textContent = e.message;
      log.prepend(h("li", { class: "err" }, `${fmtTime(Date.now() * 1e6)} ${e.message}`));
    } finally {
      reply.hidden = false;
      const can = this.app.canOperate();
      for (const b of buttons) b.disabled = !can;
    }
  }

  onEstimate(est) {
    if ($("#view-training").hidden) return;
    const st = $("#tr-est-status");
    st.textContent = est.status.replace("_", " ");
    st.className = `status-${est.status}`;
    const bad = est.bad_data || [];
    $("#tr-bad").textContent = bad.length ? bad.join(", ") : "none";
    $("#tr-bad").dataset.count = String(bad.length);
    const missing = est.missing_sources || [];
    $("#tr-missing").textContent = missing.length ? missing.join(", ") : "none";
    $("#tr-missing").dataset.count = String(missing.length);
  }
}
