// A small hand-written line chart on a <canvas>: time axis, value axis, the average (or raw)
// line, a min/max band for aggregated data, limit lines and gaps where data is missing.

const AXIS = "#2a3846";
const TEXT = "#7d8a97";
const LINE = "#58d5ff";
const BAND = "rgba(88, 213, 255, 0.16)";
const LIMIT = "#d29922";

const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800]
  .map((s) => s * 1000);

function niceStep(span, ticks) {
  const raw = span / Math.max(1, ticks);
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

const pad = (n) => String(n).padStart(2, "0");

function timeLabel(ms, step) {
  const d = new Date(ms);
  if (step >= 86400000) return `${pad(d.getDate())}.${pad(d.getMonth() + 1)}.`;
  if (step >= 60000) {
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    return step >= 3600000 && d.getHours() === 0 && d.getMinutes() === 0 ? `${pad(d.getDate())}.${pad(d.getMonth() + 1)}.` : hm;
  }
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/**
 * Draw ``data`` ({t: [ms], v: [value or avg], min?: [], max?: []}) over [t0, t1] (ms).
 * opts: {unit, digits, limits: [{value, label}]}. Returns the number of points drawn.
 */
export function drawTrend(canvas, data, { t0, t1, unit = "", digits = 3, limits = [] } = {}) {
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(rect.width)), h = Math.max(1, Math.round(rect.height));
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const n = data && data.t ? data.t.length : 0;
  canvas.dataset.points = String(n);
  const hasBand = !!(data && data.min && data.min.length === n && data.max && data.max.length === n && n);
  // value range from the data (and the band), padded
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const a = hasBand ? data.min[i] : data.v[i], b = hasBand ? data.max[i] : data.v[i];
    if (Number.isFinite(a) && a < lo) lo = a;
    if (Number.isFinite(b) && b > hi) hi = b;
  }
  if (!Number.isFinite(lo)) {
    lo = 0;
    hi = 1;
  }
  const minSpan = Math.max(Math.abs(hi) * 0.002, 10 ** -digits * 4);
  if (hi - lo < minSpan) {
    const c = (hi + lo) / 2;
    lo = c - minSpan / 2;
    hi = c + minSpan / 2;
  }
  const padV = (hi - lo) * 0.08;
  lo -= padV;
  hi += padV;
  const step = niceStep(hi - lo, 4);
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));

  ctx.font = "10px ui-monospace, monospace";
  const left = Math.max(
    40,
    ctx.measureText(hi.toFixed(decimals)).width + 12,
    ctx.measureText(lo.toFixed(decimals)).width + 12,
  );
  const right = 10, top = 18, bottom = 20;
  const pw = w - left - right, ph = h - top - bottom;
  const X = (t) => left + ((t - t0) / (t1 - t0)) * pw;
  const Y = (v) => top + (1 - (v - lo) / (hi - lo)) * ph;

  // grid and value axis
  ctx.strokeStyle = AXIS;
  ctx.lineWidth = 1;
  ctx.fillStyle = TEXT;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.beginPath();
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-6; v += step) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.moveTo(left, y);
    ctx.lineTo(w - right, y);
    ctx.fillText(v.toFixed(decimals), left - 6, y);
  }
  // time axis
  let tstep = TIME_STEPS[TIME_STEPS.length - 1];
  for (const s of TIME_STEPS) {
    if ((t1 - t0) / s <= 6) {
      tstep = s;
      break;
    }
  }
  const tz = new Date(t0).getTimezoneOffset() * 60000;
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let t = Math.ceil((t0 - tz) / tstep) * tstep + tz; t <= t1; t += tstep) {
    const x = Math.round(X(t)) + 0.5;
    ctx.moveTo(x, top);
    ctx.lineTo(x, top + ph);
    const label = timeLabel(t, tstep);
    const half = ctx.measureText(label).width / 2;
    ctx.fillText(label, Math.min(Math.max(x, left + half), w - right - half), top + ph + 5);
  }
  ctx.stroke();
  ctx.strokeStyle = "#3a4a5a";
  ctx.strokeRect(left + 0.5, top + 0.5, pw, ph);
  if (unit) {
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillStyle = TEXT;
    ctx.fillText(unit, 6, 3);
  }

  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, pw, ph);
  ctx.clip();
  // limits
  for (const lim of limits) {
    if (!(lim.value >= lo && lim.value <= hi)) continue;
    const y = Math.round(Y(lim.value)) + 0.5;
    ctx.setLineDash([5, 4]);
    ctx.strokeStyle = LIMIT;
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(w - right, y);
    ctx.stroke();
    ctx.setLineDash([]);
    if (lim.label) {
      ctx.fillStyle = LIMIT;
      ctx.textAlign = "right";
      ctx.textBaseline = "bottom";
      ctx.fillText(lim.label, w - right - 4, y - 2);
    }
  }
  // gaps: a break wherever the spacing exceeds three times the usual one
  const gaps = new Uint8Array(n);
  if (n > 2) {
    const dts = [];
    for (let i = 1; i < n; i++) dts.push(data.t[i] - data.t[i - 1]);
    dts.sort((a, b) => a - b);
    const typical = dts[dts.length >> 1];
    for (let i = 1; i < n; i++) if (data.t[i] - data.t[i - 1] > typical * 3) gaps[i] = 1;
  }
  if (hasBand) {
    ctx.fillStyle = BAND;
    let start = 0;
    for (let i = 1; i <= n; i++) {
      if (i === n || gaps[i]) {
        ctx.beginPath();
        for (let j = start; j < i; j++) ctx.lineTo(X(data.t[j]), Y(data.max[j]));
        for (let j = i - 1; j >= start; j--) ctx.lineTo(X(data.t[j]), Y(data.min[j]));
        ctx.closePath();
        ctx.fill();
        start = i;
      }
    }
  }
  ctx.strokeStyle = LINE;
  ctx.lineWidth = 1.6;
  ctx.lineJoin = "round";
  ctx.beginPath();
  for (let i = 0; i < n; i++) {
    const x = X(data.t[i]), y = Y(data.v[i]);
    if (i === 0 || gaps[i]) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  }
  ctx.stroke();
  if (n && n <= 80) {
    ctx.fillStyle = LINE;
    for (let i = 0; i < n; i++) {
      ctx.beginPath();
      ctx.arc(X(data.t[i]), Y(data.v[i]), 2, 0, Math.PI * 2);
      ctx.fill();
    }
  }
  ctx.restore();
  return n;
}
