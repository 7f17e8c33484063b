// Small DOM helpers. Text from the server always goes in through textContent, never as HTML.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/**
 * h("button", {class: "btn", "data-testid": "x", onclick: fn}, "text", child...)
 * Attributes: class, text, dataset-style "data-*", on* listeners, boolean and string props.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Nanoseconds since the epoch (a JSON number: ~0.3 µs precision is plenty here) to a Date. */
export const nsToDate = (tNs) => new Date(Number(tNs) / 1e6);

export function fmtTime(tNs, { date = false, tenths = false } = {}) {
  if (tNs == null || !Number.isFinite(Number(tNs))) return "–";
  const d = nsToDate(tNs);
  let s = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (tenths) s += `.${Math.floor(d.getMilliseconds() / 100)}`;
  if (date) s = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${s}`;
  return s;
}

export function fmtNum(v, digits = 3) {
  if (v == null || !Number.isFinite(v)) return "–";
  return v.toFixed(digits);
}

/** "3 s", "4 min", "2 h" ago, from a duration in seconds. */
export function fmtAge(s) {
  if (!Number.isFinite(s)) return "–";
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}
