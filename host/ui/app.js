// The dashboard's shell: the token prompt, hash routing (#/, #/pipeline/N,
// #/plugins), and one poller that reads the API every POLL_MS and keeps a
// short lag history per pipeline in memory (it starts when the page opens).

import { ApiError, call, encode, get, setToken, token, upload } from "./api.js";
import { overviewPage, pipelinePage, pluginsPage } from "./pages.js";

const POLL_MS = 1000;
const HISTORY_MS = 10 * 60 * 1000;

const store = {
  here: { host: null, pipelines: [] },
  pipelines: [],
  plugins: [],
  progress: {},
  history: {},
  deadLetters: {},
  logs: {},
  logsOff: false,
  flash: "",
  lastError: "",
  polledAt: null,
};

/** Inputs the user has typed in since the last action: kept across redraws. */
const dirty = new Set();

function route() {
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/pipeline\/(.+)$/);
  if (m) return { page: "pipeline", name: decodeURIComponent(m[1]) };
  if (hash.startsWith("#/plugins")) return { page: "plugins" };
  return { page: "overview" };
}

function render() {
  const main = document.getElementById("main");
  const r = route();
  // Keep what the user is typing across refreshes.
  const focused = document.activeElement && document.activeElement.id;
  const kept = {};
  for (const id of ["deploy-config", "upload-name"]) {
    const el = document.getElementById(id);
    if (el) kept[id] = el.value;
  }
  const fileInput = document.getElementById("upload-file");
  let page;
  if (r.page === "pipeline") page = pipelinePage(store, r.name, actions);
  else if (r.page === "plugins") page = pluginsPage(store, actions);
  else page = overviewPage(store);
  if (r.page === "plugins" && fileInput) page.querySelector("#upload-file").replaceWith(fileInput);
  main.replaceChildren(page);
  for (const [id, value] of Object.entries(kept)) {
    const el = document.getElementById(id);
    if (el && dirty.has(id)) el.value = value;
  }
  if (focused) document.getElementById(focused)?.focus();
  for (const id of ["deploy-config", "upload-name"]) {
    document.getElementById(id)?.addEventListener("input", () => dirty.add(id));
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === r.page);
  }
  const status = document.getElementById("status");
  status.textContent = store.lastError ? `error: ${store.lastError}` : store.polledAt ? `host ${store.here.host} · updated ${new Date(store.polledAt).toLocaleTimeString()}` : "loading…";
  status.className = store.lastError ? "error" : "muted";
  status.dataset.polled = store.polledAt ? "yes" : "no";
}

function askToken(message) {
  const dialog = document.getElementById("token-dialog");
  document.getElementById("token-message").textContent = message;
  if (!dialog.open) dialog.showModal();
}

async function poll() {
  try {
    const [here, pipelines, plugins] = await Promise.all([get("assignments"), get("pipelines"), get("plugins")]);
    store.here = here;
    store.pipelines = pipelines.pipelines;
    store.plugins = plugins.plugins;
    const r = route();
    await Promise.all(store.pipelines.map(async (p) => {
      try {
        const info = await get(`pipelines/${encode(p.name)}/progress`);
        store.progress[p.name] = info;
        const pr = info.progress;
        const sample = {
          t: pr.taken_ms,
          lag: pr.total_lag,
          committed: pr.committed_total,
          out: Object.values(pr.output_end_offsets).reduce((a, b) => a + b, 0),
          dlq: pr.dead_letter_end_offset || 0,
        };
        const hist = (store.history[p.name] ||= []);
        if (!hist.length || hist[hist.length - 1].t !== sample.t) hist.push(sample);
        while (hist.length && sample.t - hist[0].t > HISTORY_MS) hist.shift();
      } catch (e) {
        store.progress[p.name] = { ...(store.progress[p.name] || { members: [] }), error: e.message };
      }
    }));
    if (r.page === "pipeline" && store.pipelines.some((p) => p.name === r.name)) {
      try {
        store.deadLetters[r.name] = (await get(`pipelines/${encode(r.name)}/dead-letters?limit=10`)).dead_letters;
      } catch (e) {
        store.deadLetters[r.name] = [];
      }
      if (!store.logsOff) {
        try {
          store.logs[r.name] = (await get(`pipelines/${encode(r.name)}/logs?limit=50`)).lines;
        } catch (e) {
          // 404: plugin logs are off on this host (the default); stop asking.
          store.logs[r.name] = null;
          if (e instanceof ApiError && e.status === 404) store.logsOff = true;
        }
      }
    }
    store.lastError = "";
    store.polledAt = Date.now();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      askToken(token() ? "The token was refused. Admin token:" : "This host needs its admin token:");
    }
    store.lastError = e.message;
  }
  render();
}

const actions = {
  async deploy(pipeline, pluginRef, configText) {
    let config;
    try {
      config = JSON.parse(configText);
    } catch (e) {
      store.flash = `config is not JSON: ${e.message}`;
      return render();
    }
    const body = { ...pipeline, plugin: pluginRef, config };
    delete body.name;
    try {
      const stored = await call("PUT", `pipelines/${encode(pipeline.name)}`, JSON.stringify(body));
      store.flash = `deployed ${stored.plugin}: each partition switches at its next batch`;
      dirty.delete("deploy-config");
    } catch (e) {
      store.flash = `deploy failed: ${e.message}`;
    }
    await poll();
  },
  async setPaused(name, paused) {
    try {
      await call("POST", `pipelines/${encode(name)}/${paused ? "pause" : "resume"}`);
      store.flash = paused ? "paused: every host stops it" : "resumed";
    } catch (e) {
      store.flash = `failed: ${e.message}`;
    }
    await poll();
  },
  async upload(name, file) {
    if (!name || !file) {
      store.flash = "choose a name and a .wasm file";
      return render();
    }
    try {
      store.flash = `uploading ${file.name}…`;
      const v = await upload(`plugins/${encode(name)}`, file, (f) => {
        const bar = document.getElementById("upload-progress");
        if (bar) bar.value = f;
      });
      store.flash = `uploaded ${v.name} version ${v.version} (${v.size_bytes} bytes)`;
      dirty.delete("upload-name");
    } catch (e) {
      store.flash = `upload failed: ${e.message}`;
    }
    await poll();
  },
};

function start() {
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setToken(document.getElementById("token-input").value.trim());
    document.getElementById("token-dialog").close();
    poll();
  });
  document.getElementById("forget-token").addEventListener("click", () => {
    setToken(null);
    askToken("Admin token:");
  });
  window.addEventListener("hashchange", () => {
    store.flash = "";
    render();
    poll();
  });
  render();
  poll();
  setInterval(poll, POLL_MS);
}

start();
