// GridPilot operator HMI: sign-in, the network view (diagram, details and trend, switching,
// alarms, service health, status bar) and the training page. Plain ES modules, no build step.

import { api, get, onUnauthorized, post, seg } from "./api.js";
import { Admin } from "./admin.js";
import { Alarms } from "./alarms.js";
import { Details } from "./details.js";
import { Diagram } from "./diagram.js";
import { $, $$, clear, fmtAge, fmtTime, h } from "./dom.js";
import { Live } from "./live.js";
import { Quality } from "./quality.js";
import { Training } from "./training.js";

const METRIC_CAP = 20000;

/** The application state, also reachable as window.gpHmi (tests and the benchmark read it). */
const app = {
  me: null,
  grids: [],
  grid: null,
  topo: null,
  diagram: null,
  live: null,
  est: null,
  estCount: 0,
  estAt: 0,
  // how old the latest estimate is: the server's age (null: unknown) when a message said so,
  // aged here since (performance.now() of that message), stale past staleAfterS
  fresh: { ageS: null, at: 0, staleAfterS: 5, stale: true },
  busConnected: true,
  liveState: "connecting",
  services: [],
  servicesAt: 0,
  metrics: {
    loginAt: null, // performance.now() at the sign-in click
    topologyAt: null, // topology received
    firstRenderAt: null, // the diagram first drawn with the topology
    firstEstimateAt: null, // the first estimate applied to the diagram
    applyMs: [], // per estimate: applying it to the diagram, redraw included
    parseMs: [], // per estimate: JSON.parse of the message
    appliedAt: [], // performance.now() of each estimate applied
    estimateBytes: 0, // size of the last estimate message (characters of JSON)
    marks: {}, // name -> performance.now(): where the time to first render goes
  },
  canOperate() {
    return !!this.me && (this.me.role === "operator" || this.me.role === "admin");
  },
  gridPath(rest = "") {
    return `/api/grids/${seg(this.grid)}${rest}`;
  },
  /** Seconds since the latest estimate (server's age plus the time since it said so), or
   * Infinity when unknown. The browser ages it by itself: the web service may be cut off. */
  estimateAgeS() {
    const f = this.fresh;
    if (!this.est || f.ageS === null) return Infinity;
    return f.ageS + (performance.now() - f.at) / 1000;
  },
  isStale() {
    return !(this.estimateAgeS() <= this.fresh.staleAfterS);
  },
  /** "now" for history queries: the latest estimate's (simulated) time, else the wall clock. */
  nowMs() {
    return this.est && this.est.t_ns ? Number(this.est.t_ns) / 1e6 : Date.now();
  },
};
window.gpHmi = app;

// -- toasts and the confirmation dialog ---------------------------------------------------
export function toast(text, kind = "info", ms = kind === "error" ? 12000 : 5000) {
  const box = $("#toasts");
  const el = h("div", { class: `toast ${kind}`, "data-testid": "toast", "data-kind": kind, role: kind === "error" ? "alert" : "status" },
    h("span", { text }),
    h("button", { class: "x", type: "button", "aria-label": "Dismiss", onclick: () => el.remove() }, "×"));
  box.prepend(el);
  while (box.children.length > 5) box.lastElementChild.remove();
  setTimeout(() => el.remove(), ms);
  return el;
}
app.toast = toast;

app.confirm = function confirmDialog({ title, text, note = "", ok = "Confirm" }) {
  const dlg = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-note").textContent = note;
  dlg.querySelector('[value="ok"]').textContent = ok;
  dlg.returnValue = "";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.showModal();
    dlg.querySelector('[value="cancel"]').focus();
  });
};

// -- screens --------------------------------------------------------------------------------
function showScreen(id) {
  for (const s of $$(".screen")) s.hidden = s.id !== id;
}

function showLogin(message = "") {
  stopGrid();
  app.me = null;
  showScreen("login-screen");
  const err = $("#login-error");
  err.textContent = message;
  err.hidden = !message;
  $("#login-password").value = "";
  $("#login-user").focus();
}

function showPassword() {
  showScreen("password-screen");
  $("#pw-user").value = app.me ? app.me.user : "";
  for (const id of ["#pw-old", "#pw-new", "#pw-confirm"]) $(id).value = "";
  $("#pw-error").hidden = true;
  $("#pw-old").focus();
}

function sessionEnded(err) {
  if (!app.me) return;
  showLogin(`Your session has ended (${err && err.detail ? err.detail : "not signed in"}). Please sign in again.`);
}

async function enter(me) {
  mark("signedIn");
  app.me = me;
  if (me.must_change_password) {
    showPassword();
    return;
  }
  showScreen("app-screen");
  $("#who-user").textContent = me.user;
  const role = $("#who-role");
  role.textContent = me.role;
  role.className = `role-badge role-${me.role}`;
  $('[data-route="training"]').hidden = !app.canOperate();
  $('[data-route="admin"]').hidden = me.role !== "admin";
  document.body.dataset.role = me.role;
  try {
    app.grids = await get("/api/grids");
  } catch (e) {
    toast(e.message, "error");
    app.grids = [];
  }
  mark("grids");
  const sel = $("#grid-select");
  clear(sel);
  for (const g of app.grids) sel.append(h("option", { value: g }, g));
  sel.closest(".grid-pick").hidden = app.grids.length === 0;
  sel.disabled = app.grids.length < 2;
  const stored = sessionStorage.getItem("gp-grid");
  const grid = app.grids.includes(stored) ? stored : app.grids[0];
  if (!grid) {
    toast("No grid is available yet: is the platform running (gridpilot up)?", "error");
    return;
  }
  sel.value = grid;
  await openGrid(grid);
  route();
}

// -- the grid -------------------------------------------------------------------------------
function stopGrid() {
  if (app.live) app.live.stop();
  app.live = null;
  app.est = null;
  app.estCount = 0;
  app.fresh = { ageS: null, at: 0, staleAfterS: 5, stale: true };
  app.quality?.reset();
  app.details?.show(null);
  document.body.dataset.diagram = "";
}

async function openGrid(grid) {
  stopGrid();
  app.grid = grid;
  sessionStorage.setItem("gp-grid", grid);
  $("#tr-grid-name").textContent = grid;
  $("#diagram-info").textContent = `Loading ${grid}…`;
  let topo;
  mark("topologyAsked");
  try {
    topo = await get(app.gridPath("/topology"));
  } catch (e) {
    $("#diagram-info").textContent = "";
    toast(e.message, "error");
    return;
  }
  if (grid !== app.grid) return; // another grid was picked meanwhile
  app.topo = topo;
  app.metrics.topologyAt = performance.now();
  app.diagram.setTopology(topo);
  app.diagram.render();
  app.metrics.firstRenderAt = app.diagram.firstRenderAt ?? performance.now();
  document.body.dataset.diagram = "ready";
  $("#diagram-info").textContent =
    `${topo.grid} · ${topo.buses.length.toLocaleString("en")} buses · ${topo.branches.length.toLocaleString("en")} branches · ` +
    `${topo.switches.length.toLocaleString("en")} switches · ${topo.layout} layout`;
  $("#find-list").dataset.filled = "";
  updateStatus();
  const alarmsLoaded = app.alarms.load(); // live alarm changes meanwhile are applied after it
  app.quality.load(grid);
  app.live = new Live(grid, {
    onMessage: onLive,
    onState: liveState,
    onUnauthorized: (reason) => sessionEnded({ detail: reason }),
    onOpen: (n) => {
      if (n > 1) resync();
    },
  }).start();
  await alarmsLoaded;
}

/** After a reconnect: what may have been missed (switch states, alarms). */
async function resync() {
  try {
    const topo = await get(app.gridPath("/topology"));
    const closed = Object.fromEntries(topo.switches.map((s) => [s.id, s.closed]));
    const changed = app.diagram.setSwitchStates(closed);
    if (changed.length) app.details.onTopology(changed);
    await app.alarms.load();
  } catch (e) {
    toast(e.message, "error");
  }
}

function onLive(msg, parseMs, bytes) {
  switch (msg.type) {
    case "estimate":
      app.metrics.estimateBytes = bytes;
      onEstimate(msg, parseMs);
      break;
    case "alarm":
      app.alarms.upsert(msg.alarm);
      break;
    case "topology": {
      const changed = app.diagram.setSwitchStates(msg.closed || {});
      app.topologyT = msg.t_ns;
      if (changed.length) {
        app.details.onTopology(changed);
        toast(`Topology changed: ${changed.map((id) => `${id} ${msg.closed[id] ? "closed" : "open"}`).join(", ")}`, "info");
      }
      break;
    }
    case "command_result":
      app.details.onCommandResult(msg.result);
      break;
    case "services":
      app.services = msg.services || [];
      app.servicesAt = performance.now();
      renderServices();
      break;
    case "freshness":
      takeFreshness(msg);
      app.busConnected = msg.bus_connected !== false;
      updateFreshness();
      break;
    case "quality":
      app.quality.onFlagged(msg.flagged || []);
      break;
    default:
      break;
  }
}

function mark(name) {
  app.metrics.marks[name] = performance.now();
}

function onEstimate(msg, parseMs) {
  const m = app.metrics;
  const ms = app.diagram.applyEstimate(msg);
  const now = performance.now();
  if (m.applyMs.length < METRIC_CAP) {
    m.applyMs.push(ms);
    m.parseMs.push(parseMs);
    m.appliedAt.push(now);
  }
  if (m.firstEstimateAt === null) m.firstEstimateAt = now;
  app.est = msg;
  app.estAt = now;
  app.estCount++;
  takeFreshness(msg);
  app.quality.onEstimate(msg);
  updateStatus();
  updateFreshness();
  app.details.refresh();
  app.training.onEstimate(msg);
}

/** The age the server gave with an estimate or a freshness message. */
function takeFreshness(msg) {
  if (!("age_s" in msg)) return;
  app.fresh = {
    ageS: msg.age_s === null || msg.age_s === undefined ? null : Number(msg.age_s),
    at: performance.now(),
    staleAfterS: Number(msg.stale_after_s) || 5,
    stale: !!msg.stale,
  };
}

/** Stale data is never shown as live: the status bar, a banner over the diagram, the body's
 * data-stale; and a banner when the web service has lost the message bus. */
function updateFreshness() {
  const el = $("#st-live");
  const stale = app.est ? app.isStale() : false;
  const age = app.estimateAgeS();
  document.body.dataset.stale = stale ? "1" : "0";
  const banner = $("#stale-banner");
  if (stale) {
    const ageText = Number.isFinite(age) ? `${fmtAge(age)} old` : "of unknown age";
    banner.textContent = `Stale data: the latest estimate is ${ageText} (none for more than ${fmtAge(app.fresh.staleAfterS)}). The values shown are not live.`;
  }
  banner.hidden = !stale;
  const bus = $("#bus-banner");
  bus.hidden = app.busConnected;
  document.body.dataset.bus = app.busConnected ? "connected" : "disconnected";
  if (app.liveState !== "live") return; // liveState() shows the socket's state
  if (stale) {
    el.textContent = Number.isFinite(age) ? `stale · ${fmtAge(age)} old` : "stale";
    el.className = "st-live st-stale";
    el.dataset.fresh = "stale";
  } else if (!app.est) {
    el.textContent = "live · waiting for an estimate";
    el.className = "st-live st-connecting";
    el.dataset.fresh = "none";
  } else {
    el.textContent = "live";
    el.className = "st-live st-live-ok";
    el.dataset.fresh = "live";
  }
}

function liveState(state, detail) {
  app.liveState = state;
  const el = $("#st-live");
  const text = {
    connecting: "connecting",
    live: "live",
    reconnecting: detail ? `reconnecting in ${Math.max(1, Math.round(detail))} s` : "reconnecting",
    closed: "offline",
  }[state] || state;
  el.textContent = text;
  el.className = `st-live st-${state === "live" ? "live-ok" : state === "closed" ? "reconnecting" : state}`;
  el.dataset.state = state;
  el.dataset.fresh = "";
  if (state === "live") updateFreshness();
}

function updateStatus() {
  const est = app.est;
  const time = $("#st-time"), status = $("#st-status");
  if (!est) {
    time.textContent = "–";
    status.textContent = "waiting for an estimate";
    status.className = "";
    $("#st-meas").textContent = "–";
    $("#st-bad").textContent = "–";
    $("#st-missing").textContent = "–";
    $("#st-count").textContent = "0 estimates";
    return;
  }
  time.textContent = fmtTime(est.t_ns, { date: true, tenths: true });
  time.dataset.tns = String(est.t_ns);
  status.textContent = est.status.replace("_", " ");
  status.className = `status-${est.status}`;
  status.title = est.message || "";
  $("#st-meas").textContent = String(est.n_measurements ?? "–");
  const bad = est.bad_data || [];
  $("#st-bad").textContent = bad.length ? bad.join(", ") : "none";
  $("#st-bad").className = bad.length ? "status-diverged" : "";
  const missing = est.missing_sources || [];
  const ms = $("#st-missing");
  ms.textContent = missing.length ? `${missing.length}: ${missing.slice(0, 6).join(", ")}${missing.length > 6 ? " …" : ""}` : "none";
  ms.title = missing.join(", ");
  const last = app.metrics.applyMs[app.metrics.applyMs.length - 1];
  $("#st-count").textContent = `${app.estCount} estimate${app.estCount === 1 ? "" : "s"} · drawn in ${last !== undefined ? last.toFixed(1) : "–"} ms`;
  $("#st-count").dataset.count = String(app.estCount);
}

// -- services ------------------------------------------------------------------------------
function renderServices() {
  const body = $("#services-body");
  const since = (performance.now() - app.servicesAt) / 1000;
  clear(body);
  let bad = 0;
  // the unhealthy first: a panel too short for every row never hides the one that matters
  const rows = app.services.map((s) => {
    const age = (s.heartbeat_age_s ?? Infinity) + (app.servicesAt ? since : 0);
    return { s, age, stale: !(age <= 3) || s.state !== "running" };
  }).sort((a, b) => (b.stale - a.stale) || a.s.service.localeCompare(b.s.service));
  for (const { s, age, stale } of rows) {
    if (stale) bad++;
    const info = Object.entries(s.info || {})
      .filter(([k]) => k !== "http")
      .slice(0, 3)
      .map(([k, v]) => `${k} ${v}`)
      .join(" · ");
    body.append(
      h("tr", { class: stale ? "service-row stale" : "service-row", "data-testid": "service-row", "data-service": s.service, "data-stale": stale ? "1" : "0" },
        h("td", {}, h("span", { class: "state-dot" }), s.service),
        h("td", { "data-testid": "service-state" }, s.state),
        h("td", { class: "num", "data-testid": "service-age" }, fmtAge(age)),
        h("td", { class: "info-cell", title: info }, info)));
  }
  $("#services-empty").hidden = app.services.length > 0;
  const n = app.services.length;
  $("#services-note").textContent = n ? `${n} services · ${bad ? `${bad} not healthy` : "all healthy"}` : "";
  $("#services-note").style.color = bad ? "var(--bad)" : "";
}

// -- routing and wiring -----------------------------------------------------------------------
function route() {
  const r = location.hash.replace(/^#\/?/, "") || "network";
  let view = r.startsWith("training") ? "training" : r.startsWith("admin") ? "admin" : "network";
  if (view === "admin" && app.me && app.me.role !== "admin") view = "network";
  $("#view-network").hidden = view !== "network";
  $("#view-training").hidden = view !== "training";
  $("#view-admin").hidden = view !== "admin";
  for (const a of $$(".tab")) a.classList.toggle("active", a.dataset.route === view);
  if (view === "training" && app.me) app.training.show();
  else if (view === "admin" && app.me) app.admin.show();
  else app.diagram?.requestRender();
}

function wire() {
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const err = $("#login-error");
    err.hidden = true;
    const btn = e.submitter || $('[data-testid="login-submit"]');
    btn.disabled = true;
    app.metrics.loginAt = performance.now();
    try {
      const r = await post("/api/auth/login", { user: $("#login-user").value.trim(), password: $("#login-password").value }, { quiet401: true });
      await enter({ user: r.user, role: r.role, must_change_password: r.must_change_password, expires_ns: r.expires_ns });
    } catch (ex) {
      err.textContent = ex.status === 401 ? "Wrong user name or password." : ex.message;
      err.hidden = false;
    } finally {
      btn.disabled = false;
    }
  });

  $("#password-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const err = $("#pw-error");
    const show = (text) => {
      err.textContent = text;
      err.hidden = false;
    };
    err.hidden = true;
    const oldPw = $("#pw-old").value, newPw = $("#pw-new").value;
    if (newPw.length < 10) return show("The new password needs at least 10 characters.");
    if (newPw !== $("#pw-confirm").value) return show("The two new passwords differ.");
    if (newPw === oldPw) return show("Choose a password different from the one-time password.");
    try {
      const r = await post("/api/auth/password", { old_password: oldPw, new_password: newPw }, { quiet401: true });
      toast("Password changed.", "ok");
      await enter({ user: r.user, role: r.role, must_change_password: r.must_change_password, expires_ns: r.expires_ns });
    } catch (ex) {
      if (ex.status === 401) showLogin("Your session has ended. Please sign in again.");
      else show(ex.status === 403 ? "The current (one-time) password is wrong." : ex.message);
    }
  });

  const logout = async () => {
    try {
      await api("POST", "/api/auth/logout", undefined, { quiet401: true });
    } catch {
      /* signed out locally anyway */
    }
    showLogin();
  };
  $("#logout").addEventListener("click", logout);
  $("#pw-logout").addEventListener("click", logout);

  $("#grid-select").addEventListener("change", async (e) => {
    await openGrid(e.target.value);
    route();
  });
  window.addEventListener("hashchange", route);
  $("#zoom-fit").addEventListener("click", () => app.diagram.fit());
  $("#zoom-in").addEventListener("click", () => app.diagram.zoom(1.5));
  $("#zoom-out").addEventListener("click", () => app.diagram.zoom(1 / 1.5));
  $("#alarm-summary").addEventListener("click", () => {
    location.hash = "#/network";
    $('[data-testid="alarms-panel"]').scrollIntoView({ block: "nearest" });
  });

  const findInput = $("#find-input");
  findInput.addEventListener("focus", () => {
    const list = $("#find-list");
    if (list.dataset.filled || !app.topo) return;
    list.dataset.filled = "1";
    // suggestions for up to 5,000 names (buses first); any id or name can still be typed
    const opts = [];
    for (const group of [app.topo.buses, app.topo.branches, app.topo.switches]) {
      for (const x of group) if (opts.length < 5000) opts.push(x.name && x.name !== x.id ? `${x.id} · ${x.name}` : x.id);
    }
    clear(list).append(...opts.map((v) => h("option", { value: v })));
  });
  $("#find-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const hit = app.diagram.lookup(findInput.value);
    if (!hit) {
      toast(`Nothing called “${findInput.value}” in ${app.grid}.`, "error", 4000);
      return;
    }
    app.select(hit, { center: true });
  });

  const tooltip = $("#tooltip");
  app.diagram = new Diagram($("#diagram"), {
    onSelect: (item) => app.details.show(item),
    onHover: (hit, x, y) => {
      if (!hit) {
        tooltip.hidden = true;
        return;
      }
      tooltip.textContent = app.details.summary(hit);
      tooltip.hidden = false;
      tooltip.style.left = `${x + 14}px`;
      tooltip.style.top = `${y + 12}px`;
    },
  });
  app.select = (item, opts) => {
    app.diagram.select(item, opts);
    app.details.show(item);
  };
  app.details = new Details(app);
  app.alarms = new Alarms(app);
  app.training = new Training(app);
  app.quality = new Quality(app);
  app.admin = new Admin(app);

  // ages and staleness between messages (also while the socket is down)
  setInterval(() => {
    if (app.services.length) renderServices();
    updateFreshness();
  }, 1000);
}

async function boot() {
  wire();
  onUnauthorized(sessionEnded);
  let me;
  try {
    me = await get("/api/auth/me", { quiet401: true });
  } catch (e) {
    showLogin(e.status === 401 ? "" : e.message);
    return;
  }
  await enter(me);
}

boot();
