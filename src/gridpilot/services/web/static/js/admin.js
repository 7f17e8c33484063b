// The admin page: operators' accounts (list, add with a one-time password, remove) and the
// audit trail of the grid: who did what through the HMI and the API, as the historian keeps
// it (GET /api/grids/{grid}/audit).

import { api, get, post, seg } from "./api.js";
import { $, clear, fmtTime, h } from "./dom.js";

const RANGES = { "1h": 3600, "24h": 86400, "7d": 7 * 86400 };

export class Admin {
  constructor(app) {
    this.app = app;
    $("#adm-add-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.addUser();
    });
    $("#adm-audit-reload").addEventListener("click", () => this.loadAudit());
    $("#adm-audit-range").addEventListener("change", () => this.loadAudit());
  }

  async show() {
    await Promise.all([this.loadUsers(), this.loadAudit()]);
  }

  async loadUsers() {
    const body = $("#adm-users-body");
    let users;
    try {
      users = await get("/api/users");
    } catch (e) {
      clear(body).append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, `Cannot list the users: ${e.message}`)));
      return;
    }
    clear(body);
    for (const u of users) {
      const self = this.app.me && u.name === this.app.me.user;
      body.append(h("tr", { "data-testid": "adm-user-row", "data-user": u.name, "data-role": u.role },
        h("td", {}, u.name, self ? h("span", { class: "muted small" }, " (you)") : null),
        h("td", {}, h("span", { class: `role-badge role-${u.role}` }, u.role)),
        h("td", { class: "muted" }, u.must_change_password ? "one-time password not changed yet" : "own password"),
        h("td", { class: "num" }, self ? null : h("button", {
          type: "button", class: "btn btn-small btn-warn", "data-testid": "adm-user-remove",
          onclick: () => this.removeUser(u.name),
        }, "Remove"))));
    }
    $("#adm-users-note").textContent = `${users.length} user${users.length === 1 ? "" : "s"}`;
  }

  async addUser() {
    const name = $("#adm-add-name").value.trim(), role = $("#adm-add-role").value;
    const out = $("#adm-add-reply");
    out.hidden = false;
    try {
      const u = await post("/api/users", { name, role });
      out.className = "reply ok";
      out.textContent = u.password
        ? `User ${u.name} (${u.role}) added. One-time password: ${u.password} — give it to ${u.name}; it must be changed at the first sign-in and is not shown again.`
        : `User ${u.name} (${u.role}) added.`;
      $("#adm-add-name").value = "";
    } catch (e) {
      out.className = "reply err";
      out.textContent = e.message;
    }
    await Promise.all([this.loadUsers(), this.loadAudit()]);
  }

  async removeUser(name) {
    const ok = await this.app.confirm({
      title: "Remove user", text: `Remove ${name}? Their sessions end at once.`, ok: "Remove",
    });
    if (!ok) return;
    try {
      await api("DELETE", `/api/users/${seg(name)}`);
      this.app.toast(`User ${name} removed.`, "ok");
    } catch (e) {
      this.app.toast(e.message, "error");
    }
    await Promise.all([this.loadUsers(), this.loadAudit()]);
  }

  async loadAudit() {
    const body = $("#adm-audit-body"), note = $("#adm-audit-note");
    if (!this.app.grid) return;
    const span = RANGES[$("#adm-audit-range").value] || RANGES["24h"];
    const from = BigInt(Date.now() - span * 1000) * 1000000n;
    note.textContent = "reading…";
    let trail;
    try {
      trail = await get(this.app.gridPath(`/audit?t_from_ns=${from}`));
    } catch (e) {
      note.textContent = "";
      clear(body).append(h("tr", {}, h("td", { colspan: 6, class: "muted", "data-testid": "adm-audit-error" },
        `Cannot read the audit trail: ${e.message}`)));
      return;
    }
    clear(body);
    const records = [...trail.records].reverse(); // newest first
    for (const r of records) {
      const detail = Object.entries(r.detail || {})
        .filter(([, v]) => v !== null && v !== "" && v !== undefined)
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
        .join(" · ");
      body.append(h("tr", { "data-testid": "adm-audit-row", "data-action": r.action, class: r.ok ? "" : "audit-failed" },
        h("td", { class: "mono", title: fmtTime(r.t_ns, { date: true }) }, fmtTime(r.t_ns, { date: true })),
        h("td", {}, r.user, h("span", { class: "muted small" }, ` ${r.role}`)),
        h("td", {}, r.action.replaceAll("_", " ")),
        h("td", { class: "mono" }, r.target || "–"),
        h("td", {}, r.ok ? h("span", { class: "pill ok" }, "done") : h("span", { class: "pill bad", title: r.error }, r.error || "failed")),
        h("td", { class: "info-cell", title: detail }, detail)));
    }
    $("#adm-audit-empty").hidden = records.length > 0;
    note.textContent = `${this.app.grid} · ${records.length} record${records.length === 1 ? "" : "s"}${trail.truncated ? " (more: choose a shorter range)" : ""}`;
  }
}
