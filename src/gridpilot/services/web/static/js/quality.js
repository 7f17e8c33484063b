// Data quality on the diagram. Suspect: a measurement the estimator removed as bad data, or
// whose latest report was not good (IEC 61850-7-3 quality bits: invalid, questionable,
// substituted, old data, overflow). Missing: the equipment a device measures while the
// estimator lists that device missing. Marks go on the measured equipment (a load's or a
// generator's on its bus); the details panel lists the reasons.

import { get } from "./api.js";
import { MARK } from "./diagram.js";

export const QUALITY_BITS = [[1, "invalid"], [2, "questionable"], [4, "substituted"], [8, "old data"], [16, "overflow"]];

/** "good", or the names of the quality bits set ("invalid, old data"). */
export function qualityText(bits) {
  if (!bits) return "good";
  const names = QUALITY_BITS.filter(([b]) => bits & b).map(([, n]) => n);
  return names.length ? names.join(", ") : `quality ${bits}`;
}

/** "<source>/<mrid>/<measurand>/<terminal>" (a bad-data sensor) to its parts. */
export function parseSensor(sensor) {
  const p = String(sensor).split("/");
  if (p.length < 4) return { source: p[0] || "", mrid: p[1] || "", measurand: "", terminal: "" };
  return { source: p[0], mrid: p.slice(1, -2).join("/"), measurand: p[p.length - 2], terminal: p[p.length - 1] };
}

export class Quality {
  constructor(app) {
    this.app = app;
    this.reset();
  }

  reset() {
    this.points = new Map(); // device id -> the mrids it measures
    this.kinds = new Map(); // device id -> kind
    this.flagged = []; // [{source, mrid, measurand, terminal, quality}]
    this.bad = []; // [{source, mrid, measurand, terminal}]
    this.missing = []; // device ids
    this.byEquipment = new Map(); // mrid -> {suspect: [...], missing: [...]}
  }

  /** The devices of the grid and what they measure (for the missing marks). */
  async load(grid) {
    try {
      const devices = await get(this.app.gridPath("/devices"));
      if (grid !== this.app.grid) return;
      this.points = new Map(devices.map((d) => [d.id, [...new Set(d.points.map((p) => p.mrid))]]));
      this.kinds = new Map(devices.map((d) => [d.id, d.kind]));
    } catch (e) {
      this.app.toast(`The field devices could not be read (${e.message}): missing measurements are not marked.`, "error");
    }
    this.apply();
  }

  onEstimate(msg) {
    this.bad = (msg.bad_data || []).map(parseSensor);
    this.missing = msg.missing_sources || [];
    this.apply();
  }

  onFlagged(flagged) {
    this.flagged = flagged;
    this.apply();
  }

  /** What is known about the measurements of one piece of equipment. */
  about(mrid) {
    return this.byEquipment.get(mrid) || { suspect: [], missing: [] };
  }

  apply() {
    const by = new Map();
    const entry = (mrid) => {
      if (!by.has(mrid)) by.set(mrid, { suspect: [], missing: [] });
      return by.get(mrid);
    };
    for (const b of this.bad) entry(b.mrid).suspect.push({ ...b, why: "removed as bad data by the estimator" });
    for (const f of this.flagged) entry(f.mrid).suspect.push({ ...f, why: qualityText(f.quality) });
    for (const dev of this.missing) {
      for (const mrid of this.points.get(dev) || []) entry(mrid).missing.push(dev);
    }
    this.byEquipment = by;
    const topo = this.app.topo, d = this.app.diagram;
    if (!topo || !d) return;
    // loads and generators are drawn at their bus
    const atBus = (mrid) => topo.loads[mrid] ?? topo.generators[mrid] ?? mrid;
    const busMarks = new Map(), branchMarks = new Map();
    for (const [mrid, e] of by) {
      const m = e.suspect.length ? MARK.SUSPECT : MARK.MISSING;
      const target = d.find("branch", mrid) >= 0 ? [branchMarks, mrid] : [busMarks, atBus(mrid)];
      if (target[0].get(target[1]) !== MARK.SUSPECT) target[0].set(target[1], m);
    }
    d.setMarks(busMarks, branchMarks);
    document.body.dataset.suspect = String([...busMarks.values(), ...branchMarks.values()].filter((m) => m === MARK.SUSPECT).length);
    document.body.dataset.missing = String([...busMarks.values(), ...branchMarks.values()].filter((m) => m === MARK.MISSING).length);
  }
}
