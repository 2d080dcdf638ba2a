// The three pages. Each renders from what app.js fetched (`store`) into a
// fresh element; every value shown comes from the /v1 API and is set as
// text, never as HTML (dead letters carry anyone's bytes).

import { lineChart } from "./chart.js";

/** Builds an element: h("td", {class: "x"}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const fmt = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"));
const rate = (n) => (n === null || n === undefined ? "-" : n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString("en-US"));

/** A stable colour per host name. */
export function hostColour(host) {
  if (!host) return "var(--unassigned)";
  // FNV-1a, then the golden angle: names a character apart (host-a,
  // host-b) land far apart on the colour wheel.
  let hash = 2166136261;
  for (const ch of host) hash = Math.imul(hash ^ ch.charCodeAt(0), 16777619) >>> 0;
  return `hsl(${Math.round((hash * 137.508) % 360)} 60% 42%)`;
}

/** `name@version` → [name, version or null]. */
export function parsePluginRef(ref) {
  const at = ref.lastIndexOf("@");
  if (at < 0) return [ref, null];
  const v = Number(ref.slice(at + 1));
  return Number.isInteger(v) ? [ref.slice(0, at), v] : [ref, null];
}

/**
 * A pipeline's state for the overview: paused (registry flag), stalled
 * (a partition on this host, with its reason), unassigned (nobody holds a
 * partition), or running.
 */
export function pipelineState(pipeline, here, progress) {
  if (pipeline.paused) return { state: "paused", reason: "paused through the API" };
  const mine = (here.pipelines || []).filter((a) => a.pipeline === pipeline.name);
  for (const a of mine) {
    for (const p of a.partitions) {
      if (p.state === "stalled") return { state: "stalled", reason: `${p.topic}/${p.partition}: ${p.reason}` };
    }
  }
  const parts = progress ? progress.partitions : [];
  if (parts.length > 0 && parts.every((p) => !p.host)) return { state: "unassigned", reason: "no host holds a partition" };
  if (!progress) return { state: "unknown", reason: "progress not read yet" };
  return { state: "running", reason: "" };
}

/** Messages/s over the samples of the last `windowMs`. */
export function rates(samples, windowMs = 10000) {
  if (samples.length < 2) return { in: null, out: null, dlq: null };
  const last = samples[samples.length - 1];
  const first = samples.find((s) => last.t - s.t <= windowMs) || samples[0];
  const dt = (last.t - first.t) / 1000;
  if (dt <= 0) return { in: null, out: null, dlq: null };
  const per = (k) => Math.max(0, (last[k] - first[k]) / dt);
  return { in: per("committed"), out: per("out"), dlq: per("dlq") };
}

function stateBadge({ state, reason }) {
  return h("span", { class: `badge state-${state}`, title: reason || null, "data-state": state }, state, reason && state !== "running" ? h("span", { class: "reason" }, " — " + reason) : null);
}

function partitionGrid(progress) {
  const cells = (progress ? progress.partitions : []).map((p) =>
    h("span", {
      class: "cell",
      style: `background:${hostColour(p.host)}`,
      title: `${p.topic}/${p.partition} on ${p.host || "nobody"}, lag ${p.lag}`,
      "data-topic": p.topic,
      "data-partition": p.partition,
      "data-host": p.host || "",
    }, p.partition),
  );
  return h("div", { class: "grid" }, cells);
}

function hostLegend(hosts) {
  return h("div", { class: "hosts" }, hosts.map((host) => h("span", { class: "host", "data-host": host }, h("span", { class: "swatch", style: `background:${hostColour(host)}` }), host)));
}

/** Group overview: one row per pipeline. */
export function overviewPage(store) {
  const rows = store.pipelines.map((p) => {
    const info = store.progress[p.name];
    const progress = info && info.progress;
    const hosts = info ? info.members : [];
    const st = pipelineState(p, store.here, progress);
    const r = rates(store.history[p.name] || []);
    const [plugin, version] = parsePluginRef(p.plugin);
    return h("tr", { "data-pipeline": p.name, "data-state": st.state, "data-lag": progress ? progress.total_lag : "" },
      h("td", {}, h("a", { href: `#/pipeline/${encodeURIComponent(p.name)}` }, p.name), p.source === "config" ? h("span", { class: "muted" }, " (config file)") : null),
      h("td", {}, pluginLabel(plugin), version !== null ? h("span", { class: "version" }, ` v${version}`) : null),
      h("td", { "data-delivery": p.delivery || "at-least-once" }, p.delivery || "at-least-once"),
      h("td", {}, hostLegend(hosts)),
      h("td", {}, partitionGrid(progress)),
      h("td", { class: "num total-lag" }, progress ? fmt(progress.total_lag) : "-"),
      h("td", { class: "num rate-in", "data-rate": r.in === null ? "" : r.in.toFixed(3) }, rate(r.in)),
      h("td", { class: "num" }, rate(r.out)),
      h("td", { class: "num" }, rate(r.dlq)),
      h("td", {}, stateBadge(st)),
      info && info.error ? h("td", { class: "error" }, info.error) : null,
    );
  });
  return h("section", { id: "overview" },
    h("h2", {}, "Pipelines"),
    h("p", { class: "muted" }, `Seen from host ${store.here.host || "?"}; offsets and lag are the broker's, for every host of each group.`),
    h("table", { class: "pipelines" },
      h("thead", {}, h("tr", {}, ["pipeline", "plugin", "delivery", "hosts", "partitions", "lag", "in/s", "out/s", "dead letters/s", "state"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No pipelines yet: `kwasm pipeline apply FILE`."))),
    ),
  );
}

/** Dead-letter headers with a column of their own. */
const SHOWN_HEADERS = ["kwasm.error.kind", "kwasm.error.message", "kwasm.source.topic", "kwasm.source.partition", "kwasm.source.offset"];

/** A `.wasm` path shown by its file name (the whole path on hover). */
function pluginLabel(ref) {
  if (!ref.endsWith(".wasm")) return ref;
  return h("span", { title: ref }, ref.split("/").pop());
}

/** Pipeline detail: partitions, lag chart, dead letters, versions. */
export function pipelinePage(store, name, actions) {
  const p = store.pipelines.find((x) => x.name === name);
  if (!p) return h("section", {}, h("h2", {}, name), h("p", { class: "error" }, "No such pipeline."));
  const info = store.progress[name];
  const progress = info && info.progress;
  const st = pipelineState(p, store.here, progress);
  const here = new Map();
  for (const a of (store.here.pipelines || []).filter((a) => a.pipeline === name)) {
    for (const part of a.partitions) here.set(`${part.topic}/${part.partition}`, part);
  }
  const readOnly = p.source === "config";
  const [pluginName, currentVersion] = parsePluginRef(p.plugin);

  const partitionRows = (progress ? progress.partitions : []).map((part) => {
    const local = here.get(`${part.topic}/${part.partition}`);
    return h("tr", { "data-partition": part.partition, "data-host": part.host || "" },
      h("td", {}, part.topic), h("td", { class: "num" }, part.partition),
      h("td", {}, part.host ? [h("span", { class: "swatch", style: `background:${hostColour(part.host)}` }), part.host] : h("span", { class: "muted" }, "unassigned")),
      h("td", { class: "num" }, local ? fmt(local.position) : "-"),
      h("td", { class: "num" }, fmt(part.committed)),
      h("td", { class: "num" }, fmt(part.high_watermark)),
      h("td", { class: "num lag" }, fmt(part.lag)),
      h("td", {}, local ? local.state + (local.reason ? `: ${local.reason}` : "") : "-"),
    );
  });

  const chart = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  chart.setAttribute("class", "chart");
  chart.setAttribute("id", "lag-chart");
  lineChart(chart, (store.history[name] || []).map((s) => ({ t: s.t, v: s.lag })), { label: "total lag" });

  const letters = (store.deadLetters[name] || []).map((d) =>
    h("tr", {},
      h("td", { class: "num" }, `${d.partition}@${d.offset}`),
      h("td", {}, d.timestamp_ms ? new Date(d.timestamp_ms).toISOString().replace("T", " ").slice(0, 19) : "-"),
      h("td", {}, d.headers["kwasm.error.kind"] || "-"),
      h("td", {}, d.headers["kwasm.source.topic"] ? `${d.headers["kwasm.source.topic"]}/${d.headers["kwasm.source.partition"]}@${d.headers["kwasm.source.offset"]}` : "-"),
      h("td", { class: "wrap" }, d.headers["kwasm.error.message"] || ""),
      h("td", { class: "wrap mono" }, Object.entries(d.headers)
        .filter(([k]) => k.startsWith("kwasm.") && !SHOWN_HEADERS.includes(k))
        .map(([k, v]) => h("div", { title: v }, `${k.slice(6)}: ${k === "kwasm.plugin.digest" ? v.slice(0, 12) : v}`))),
      h("td", { class: "wrap mono" }, d.value === null ? "(null)" : d.value),
    ),
  );

  const versions = (store.plugins.find((x) => x.name === pluginName) || { versions: [] }).versions;
  const configText = h("textarea", { id: "deploy-config", rows: 4, cols: 60, spellcheck: "false", disabled: readOnly }, JSON.stringify(p.config || {}, null, 1));
  const versionRows = [...versions].reverse().map((v) => {
    const current = v.version === currentVersion;
    const label = current ? "current" : v.version > (currentVersion || 0) ? "deploy" : "roll back";
    return h("tr", { "data-version": v.version, class: current ? "current" : null },
      h("td", { class: "num" }, v.version), h("td", { class: "mono" }, v.digest.slice(0, 16)),
      h("td", { class: "num" }, fmt(v.size_bytes)), h("td", {}, new Date(v.created_ms).toISOString().slice(0, 19).replace("T", " ")),
      h("td", {}, h("button", {
        class: "deploy", "data-version": v.version, disabled: readOnly,
        onclick: () => actions.deploy(p, `${pluginName}@${v.version}`, document.getElementById("deploy-config").value),
      }, current ? "redeploy with config" : label)),
    );
  });

  const logs = store.logs[name];
  return h("section", { id: "pipeline", "data-pipeline": name, "data-state": st.state },
    h("h2", {}, "Pipeline ", h("code", {}, name), " ", stateBadge(st)),
    h("div", { class: "summary" },
      h("span", {}, "plugin ", h("b", {}, pluginLabel(p.plugin))),
      h("span", {}, "delivery ", h("b", {}, p.delivery || "at-least-once")),
      h("span", {}, "inputs ", h("b", {}, p.input_regex ? `/${p.input_regex}/` : p.inputs.join(", "))),
      h("span", {}, "output ", h("b", {}, p.output)),
      h("span", {}, "dead letters ", h("b", {}, p.dead_letter_topic)),
      h("span", {}, "total lag ", h("b", { class: "total-lag" }, progress ? fmt(progress.total_lag) : "-")),
      readOnly ? h("span", { class: "muted" }, "declared in a host's config file: read-only here")
        : h("button", { id: p.paused ? "resume" : "pause", onclick: () => actions.setPaused(p.name, !p.paused) }, p.paused ? "Resume" : "Pause"),
    ),
    h("h3", {}, "Partitions"),
    h("table", { class: "partitions" },
      h("thead", {}, h("tr", {}, ["topic", "partition", "host", "position", "committed", "high watermark", "lag", "state here"].map((c) => h("th", {}, c)))),
      h("tbody", {}, partitionRows)),
    h("p", { class: "muted" }, "Position and state are known only for the partitions of the host serving this page."),
    h("h3", {}, "Lag over time"), chart,
    h("h3", {}, "Plugin versions"),
    h("label", { for: "deploy-config" }, "config (JSON object of strings) for the deploy:"), h("br"), configText,
    h("table", { class: "versions" },
      h("thead", {}, h("tr", {}, ["version", "digest", "bytes", "uploaded (UTC)", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, versionRows)),
    h("p", { id: "deploy-status", class: "muted" }, store.flash || ""),
    h("h3", {}, "Recent dead letters"),
    letters.length ? h("table", { class: "dead-letters" },
      h("thead", {}, h("tr", {}, ["at", "time (UTC)", "kind", "source", "message", "headers", "value"].map((c) => h("th", {}, c)))),
      h("tbody", {}, letters)) : h("p", { class: "muted" }, `None in ${p.dead_letter_topic}.`),
    logs ? [h("h3", {}, "Latest plugin log lines"), logs.length ? h("pre", { class: "logs" }, logs.map((l) => `${l.time} ${l.host} ${l.plugin}@${l.version} ${l.topic}/${l.partition}@${l.offset} ${l.level}: ${l.message}\n`)) : h("p", { class: "muted" }, "No log lines.")] : null,
  );
}

/** Plugins: versions, digests, sizes, users; upload. */
export function pluginsPage(store, actions) {
  const users = (name, version, newest) =>
    store.pipelines.filter((p) => {
      const [n, v] = parsePluginRef(p.plugin);
      return n === name && (v === version || (v === null && version === newest));
    }).map((p) => p.name);
  const rows = store.plugins.flatMap((plugin) => {
    const newest = Math.max(...plugin.versions.map((v) => v.version));
    return [...plugin.versions].reverse().map((v) =>
      h("tr", { "data-plugin": plugin.name, "data-version": v.version },
        h("td", {}, plugin.name), h("td", { class: "num" }, v.version),
        h("td", { class: "mono", title: v.digest }, v.digest.slice(0, 16)),
        h("td", { class: "num" }, fmt(v.size_bytes)),
        h("td", {}, new Date(v.created_ms).toISOString().slice(0, 19).replace("T", " ")),
        h("td", {}, users(plugin.name, v.version, newest).map((u) => h("a", { href: `#/pipeline/${encodeURIComponent(u)}`, class: "user" }, u)))));
  });
  const nameInput = h("input", { id: "upload-name", placeholder: "plugin name", required: true });
  const fileInput = h("input", { id: "upload-file", type: "file", accept: ".wasm" });
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0 });
  return h("section", { id: "plugins" },
    h("h2", {}, "Plugins"),
    h("table", { class: "plugins" },
      h("thead", {}, h("tr", {}, ["plugin", "version", "digest", "bytes", "uploaded (UTC)", "used by"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No plugins yet.")))),
    h("h3", {}, "Upload a version"),
    // By id, not these elements: app.js carries the chosen file's input
    // over from the previous redraw.
    h("form", { id: "upload", onsubmit: (e) => {
      e.preventDefault();
      const byId = (id) => document.getElementById(id);
      actions.upload(byId("upload-name").value, byId("upload-file").files[0]);
    } },
      nameInput, " ", fileInput, " ", h("button", { type: "submit", id: "upload-button" }, "Upload"), " ", progress),
    h("p", { id: "upload-status", class: "muted" }, store.flash || ""),
  );
}
