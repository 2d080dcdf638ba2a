// A small SVG line chart for the lag history: no library needed for one
// series of a few hundred points.

const NS = "http://www.w3.org/2000/svg";

/**
 * Draws `points` ([{t: ms, v: number}]) into `svg` (replacing what it
 * held), with the y axis from 0 to the largest value.
 */
export function lineChart(svg, points, { width = 640, height = 160, label = "" } = {}) {
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const pad = { left: 56, right: 8, top: 10, bottom: 22 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const el = (name, attrs, text) => {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node);
    return node;
  };
  el("rect", { x: pad.left, y: pad.top, width: w, height: h, class: "chart-bg" });
  if (points.length === 0) {
    el("text", { x: pad.left + 8, y: pad.top + 20, class: "chart-label" }, "no samples yet");
    return;
  }
  const t0 = points[0].t;
  const t1 = Math.max(points[points.length - 1].t, t0 + 1);
  const vmax = Math.max(1, ...points.map((p) => p.v));
  const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * w;
  const y = (v) => pad.top + h - (v / vmax) * h;
  for (const frac of [0, 0.5, 1]) {
    const v = vmax * frac;
    el("line", { x1: pad.left, x2: pad.left + w, y1: y(v), y2: y(v), class: "chart-grid" });
    el("text", { x: pad.left - 6, y: y(v) + 4, class: "chart-axis", "text-anchor": "end" }, Math.round(v).toLocaleString());
  }
  const d = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
  el("path", { d, class: "chart-line" });
  const seconds = Math.round((t1 - t0) / 1000);
  el("text", { x: pad.left, y: height - 6, class: "chart-axis" }, `${seconds} s ago`);
  el("text", { x: pad.left + w, y: height - 6, class: "chart-axis", "text-anchor": "end" }, "now");
  if (label) el("text", { x: pad.left + 8, y: pad.top + 16, class: "chart-label" }, label);
}
