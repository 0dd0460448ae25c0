// Metric curves, drawn with uPlot (vendor/uplot, loaded as the global `uPlot`). A chart shows the keys
// `pick` chooses from the job's per-step series; it is rebuilt when a new key appears (an evaluation
// metric first seen mid-job) and only fed new data otherwise.

import { h, replace } from "./dom.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const HEIGHT = 240;

export class MetricChart {
  constructor(id, emptyText, pick) {
    this.pick = pick;
    this.emptyText = emptyText;
    this.keys = [];
    this.plot = null;
    // data-points: how many values are drawn, for people and tests alike.
    this.element = h("div", { class: "chart", id, dataset: { points: "0" } }, h("p", { class: "empty" }, emptyText));
    this.onResize = () => this.plot?.setSize({ width: this.width(), height: HEIGHT });
    window.addEventListener("resize", this.onResize);
  }

  width() { return Math.max(300, this.element.clientWidth || 560); }

  /** `series`: points `{step, key: value…}` sorted by step. */
  update(series) {
    const keys = this.pick(series);
    const rows = series.filter((p) => keys.some((k) => typeof p[k] === "number"));
    const data = [rows.map((p) => p.step), ...keys.map((k) => rows.map((p) => (typeof p[k] === "number" ? p[k] : null)))];
    this.element.dataset.points = String(data.slice(1).flat().filter((v) => v !== null).length);
    if (!rows.length) {
      this.plot?.destroy();
      this.plot = null;
      replace(this.element, h("p", { class: "empty" }, this.emptyText));
      return;
    }
    if (this.plot && keys.join() === this.keys.join()) {
      this.plot.setData(data);
      return;
    }
    this.plot?.destroy();
    replace(this.element);
    this.keys = keys;
    this.plot = new uPlot({
      width: this.width(), height: HEIGHT,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { size: 60 }],
      series: [{ label: "step" }, ...keys.map((key, i) => ({
        label: key, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
        points: { show: true, size: 5 },
      }))],
    }, data, this.element);
  }

  destroy() {
    window.removeEventListener("resize", this.onResize);
    this.plot?.destroy();
  }
}

/** The keys of the series, in first-seen order. */
export function keysOf(series) {
  const keys = new Set();
  for (const point of series) for (const key of Object.keys(point)) keys.add(key);
  return [...keys];
}
