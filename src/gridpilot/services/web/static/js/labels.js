// Labels on the grid diagram, placed where they hide nothing an operator needs to see.

import { BG, BUS_TEXT, L, LINE_COLOR } from "./diagram.js";

/** Rectangles (x0, y0, x1, y1, CSS px) of the symbols in view that labels must not cover. */
function symbols(d, rB) {
  const { k, tx, ty, bus, br, w, h } = d;
  const out = [];
  for (let i = 0; i < d.nb; i++) {
    const x = bus.x[i] * k + tx, y = bus.y[i] * k + ty;
    if (x < -40 || x > w + 40 || y < -40 || y > h + 40) continue;
    out.push([x - rB - 1, y - rB - 1, x + rB + 1, y + rB + 1]);
  }
  const s = d._switchSize();
  for (let j = 0; j < d.ns; j++) {
    if (!d._switchDrawn(j)) continue;
    const p = d._switchPos(j);
    if (p) out.push([p[0] - s / 2 - 1, p[1] - s / 2 - 1, p[0] + s / 2 + 1, p[1] + s / 2 + 1]);
  }
  const rt = Math.max(rB * 0.9, 3.5);
  for (let i = 0; i < d.nbr; i++) {
    if (!br.kind[i]) continue;
    const a = br.from[i], b = br.to[i];
    if (a < 0 || b < 0) continue;
    const mx = ((bus.x[a] + bus.x[b]) / 2) * k + tx, my = ((bus.y[a] + bus.y[b]) / 2) * k + ty;
    const e = rt * 1.6;
    out.push([mx - e, my - e, mx + e, my + e]);
  }
  for (const [x, y] of d._marks || []) out.push([x - 7, y - 7, x + 7, y + 7]);
  return out;
}

/** The panel's overlays (tools, info line, legend) as canvas rectangles. */
function overlays(d) {
  const panel = d.canvas.parentElement;
  if (!panel) return [];
  const c = d.canvas.getBoundingClientRect();
  const out = [];
  for (const el of panel.querySelectorAll(".diagram-tools, .diagram-info, .legend")) {
    if (el.hidden) continue;
    const r = el.getBoundingClientRect();
    if (r.width && r.height) out.push([r.left - c.left - 2, r.top - c.top - 2, r.right - c.left + 2, r.bottom - c.top + 2]);
  }
  return out;
}

/**
 * Bus names and voltages, and branch loadings, where they cover no symbol, no line in view,
 * no overlay and no other label: for each, the first free spot of a few around it, else none
 * (the tooltip and the details panel still tell). Records what it placed on the diagram
 * (labelRects, symbolRects) for tests.
 */
export function drawLabels(d, vis, rB, visBr) {
  const { ctx, k, tx, ty, bus, br, w, h } = d;
  ctx.textBaseline = "middle";
  ctx.lineJoin = "round";
  ctx.lineWidth = 3;
  ctx.strokeStyle = BG;
  const symbolRects = symbols(d, rB);
  d.symbolRects = symbolRects;
  const overlayRects = overlays(d); // a label under the legend or the tools cannot be read
  // the branches in view, as screen segments: a label must not lie across a line
  const segs = [];
  const inView = (s) => !((s[0] < 0 && s[2] < 0) || (s[0] > w && s[2] > w) || (s[1] < 0 && s[3] < 0) || (s[1] > h && s[3] > h));
  for (let i = 0; i < d.nbr; i++) {
    const a = br.from[i], b = br.to[i];
    if (a < 0 || b < 0) continue;
    const sg = [bus.x[a] * k + tx, bus.y[a] * k + ty, bus.x[b] * k + tx, bus.y[b] * k + ty];
    if (inView(sg)) segs.push(sg); // a label is on screen: only lines in view can cross it
  }
  for (let j = 0; j < d.ns; j++) {
    const a = d.sw.bus[j], o = d.sw.other[j];
    if (d.sw.branch[j] >= 0 || a < 0 || o < 0) continue;
    segs.push([bus.x[a] * k + tx, bus.y[a] * k + ty, bus.x[o] * k + tx, bus.y[o] * k + ty]);
  }
  const placed = d.labelRects;
  const overlaps = (r, q) => r[0] < q[2] && r[2] > q[0] && r[1] < q[3] && r[3] > q[1];
  const free = (r) => {
    if (r[0] < 2 || r[1] < 2 || r[2] > w - 2 || r[3] > h - 2) return false;
    for (const q of placed) if (overlaps(r, q)) return false;
    for (const q of symbolRects) if (overlaps(r, q)) return false;
    for (const q of overlayRects) if (overlaps(r, q)) return false;
    for (const sg of segs) if (segHitsRect(sg, r)) return false;
    return true;
  };
  const order = d.selected && d.selected.kind === "bus" ? [d.selected.index, ...vis] : vis;
  const done = new Set();
  for (const i of order) {
    if (done.has(i)) continue;
    done.add(i);
    const bx = bus.x[i] * k + tx, by = bus.y[i] * k + ty;
    const v = d.busV[i];
    const value = v === v ? `${v.toFixed(3)} pu` : "–";
    ctx.font = "600 11px system-ui, sans-serif";
    const lw = Math.ceil(Math.max(ctx.measureText(bus.name[i]).width, 6.7 * value.length)) + 2;
    const lh = 27, gap = rB + 5;
    // right, left, above, below, then the diagonals: the first place that covers nothing
    const spots = [
      [bx + gap, by - lh / 2], [bx - gap - lw, by - lh / 2],
      [bx - lw / 2, by - gap - lh], [bx - lw / 2, by + gap],
      [bx + gap - 2, by - gap - lh + 4], [bx + gap - 2, by + gap - 4],
      [bx - gap - lw + 2, by - gap - lh + 4], [bx - gap - lw + 2, by + gap - 4],
    ];
    let at = null;
    for (const [x0, y0] of spots) {
      const r = [x0, y0, x0 + lw, y0 + lh];
      if (free(r)) {
        at = r;
        break;
      }
    }
    if (!at) continue; // no room: the tooltip and the details panel still tell
    placed.push(at);
    const x = at[0] + 1, y = at[1] + lh / 2;
    ctx.fillStyle = "#aab6c2";
    ctx.strokeText(bus.name[i], x, y - 6);
    ctx.fillText(bus.name[i], x, y - 6);
    ctx.font = "11px ui-monospace, monospace";
    ctx.fillStyle = BUS_TEXT[d.busCls[i]];
    ctx.strokeText(value, x, y + 7);
    ctx.fillText(value, x, y + 7);
  }
  if (visBr > 60) return;
  ctx.font = "10px ui-monospace, monospace";
  ctx.textAlign = "center";
  for (let i = 0; i < d.nbr; i++) {
    const a = br.from[i], b = br.to[i];
    if (a < 0 || b < 0) continue;
    const ax = bus.x[a] * k + tx, ay = bus.y[a] * k + ty, bx = bus.x[b] * k + tx, by = bus.y[b] * k + ty;
    const len = Math.hypot(bx - ax, by - ay);
    if (len < 70) continue;
    const l = d.brLoad[i];
    if (l !== l || d.brOpen[i]) continue;
    // beside the line, near the middle, on whichever side is free
    const nx = -(by - ay) / len, ny = (bx - ax) / len;
    const text = `${l.toFixed(0)}%`;
    const tw = Math.ceil(ctx.measureText(text).width) + 4;
    let at = null;
    for (const [f, d] of [[0.5, 12], [0.5, -12], [0.62, 12], [0.62, -12], [0.38, 12], [0.38, -12]]) {
      const mx = ax + (bx - ax) * f + nx * d, my = ay + (by - ay) * f + ny * d;
      const r = [mx - tw / 2, my - 6, mx + tw / 2, my + 6];
      if (free(r)) {
        at = [mx, my, r];
        break;
      }
    }
    if (!at) continue;
    placed.push(at[2]);
    ctx.fillStyle = d.brCls[i] === L.OK ? "#6fa97a" : LINE_COLOR[d.brCls[i]];
    ctx.strokeText(text, at[0], at[1]);
    ctx.fillText(text, at[0], at[1]);
  }
  ctx.textAlign = "start";
}

/** Whether segment [x0, y0, x1, y1] crosses rectangle [rx0, ry0, rx1, ry1] (Liang–Barsky). */
function segHitsRect([x0, y0, x1, y1], [rx0, ry0, rx1, ry1]) {
  const dx = x1 - x0, dy = y1 - y0;
  let t0 = 0, t1 = 1;
  for (const [p, q] of [[-dx, x0 - rx0], [dx, rx1 - x0], [-dy, y0 - ry0], [dy, ry1 - y0]]) {
    if (p === 0) {
      if (q < 0) return false;
    } else {
      const r = q / p;
      if (p < 0) {
        if (r > t1) return false;
        if (r > t0) t0 = r;
      } else {
        if (r < t0) return false;
        if (r < t1) t1 = r;
      }
    }
  }
  return t0 <= t1;
}
