// The Sluice console: reads the admin API of the host that served it, and
// steers it. Plain ES module, no framework, nothing fetched from elsewhere:
// every request goes to this origin (paths starting with "/").
//
// The token the user types lives in `token` below, in this tab's memory
// only; it is sent as `Authorization: Bearer …` (never a cookie). That is
// also why the live tap is read with fetch and a stream reader rather than
// EventSource, which cannot send headers. The dead-letters view is its own
// module (/ui/dead-letters.js), given the helpers below.

import { setupDeadLetters } from "/ui/dead-letters.js";

/** How often the pipelines and metrics are read (ms). */
const POLL_MS = 2000;
/** Samples kept per pipeline for the sparklines: two minutes. */
const HISTORY = 60;
/** Rows the tap table keeps; older ones are dropped from the view. */
const TAP_ROWS = 200;

/** The rates shown per pipeline: counter in `stats`, label, css class. */
const RATES = [
  ["received", "Received", "received"],
  ["outputs", "Outputs", "outputs"],
  ["dead_lettered", "Dead-lettered", "dead"],
  ["retries", "Retries", "retries"],
];

let token = null;
/** name -> { card, samples: [{t, stats, latency}], metrics } */
const pipelines = new Map();
/** The previous /metrics histogram buckets by pipeline, for latency deltas. */
let lastBuckets = new Map();
let pollTimer = null;
let polling = false;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

// ---------------------------------------------------------------- requests

/** An API answer that was not 2xx, with the server's `error` text. */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

/** A request to this host's admin API; JSON answers are parsed. */
async function api(method, path, { body, contentType, accept = "application/json", extra = {} } = {}) {
  const init = { method, headers: headers({ Accept: accept, ...extra }), cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    init.body = body;
    if (contentType) init.headers["Content-Type"] = contentType;
  }
  const response = await fetch(path, init);
  const type = response.headers.get("Content-Type") || "";
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      if (type.includes("json")) message = (await response.json()).error || message;
      else message = (await response.text()).trim() || message;
    } catch { /* keep the status line */ }
    throw new ApiError(response.status, message);
  }
  return type.includes("json") ? response.json() : response.text();
}

// ------------------------------------------------------------------- token

let tokenWaiters = [];

/** Opens the token dialog; resolves once the user gave one (or cancelled). */
function askToken(why) {
  const dialog = $("token-dialog");
  $("token-why").textContent = why;
  if (!dialog.open) {
    $("token-input").value = "";
    dialog.showModal();
    $("token-input").focus();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

function setupToken() {
  const dialog = $("token-dialog");
  $("token-form").addEventListener("submit", () => {
    const given = $("token-input").value.trim();
    token = given || null;
    $("token-input").value = "";
    updateTokenButton();
    for (const resolve of tokenWaiters.splice(0)) resolve(Boolean(token));
    poll();
  });
  const cancel = () => {
    dialog.close();
    for (const resolve of tokenWaiters.splice(0)) resolve(false);
  };
  $("token-cancel").addEventListener("click", cancel);
  dialog.addEventListener("cancel", (event) => { event.preventDefault(); cancel(); });
  $("token-button").addEventListener("click", () => {
    if (token) {
      token = null;
      updateTokenButton();
      notice("Token forgotten.", "ok");
      poll();
    } else {
      askToken("Enter a token to see pipelines on a host that requires one, or to change things.");
    }
  });
}

function updateTokenButton() {
  $("token-button").textContent = token ? "Forget token" : "Enter token";
}

// ------------------------------------------------------------------ status

function notice(text, kind = "") {
  const node = $("notice");
  node.textContent = text;
  node.className = `notice ${kind}`;
  node.hidden = !text;
}

function status(text, error = false) {
  const node = $("status");
  node.textContent = text;
  node.classList.toggle("error", error);
}

// ------------------------------------------------------------------ polling

async function poll() {
  if (polling) return;
  polling = true;
  clearTimeout(pollTimer);
  try {
    const listing = await api("GET", "/pipelines");
    let metricsText = null;
    try {
      metricsText = await api("GET", "/metrics", { accept: "text/plain" });
    } catch { /* latency and lag are extras: the page works without them */ }
    render(listing.pipelines || [], metricsText ? parseMetrics(metricsText) : null);
    status(`Updated ${new Date().toLocaleTimeString()}`);
    document.body.classList.remove("stale");
    if ($("notice").classList.contains("error")) notice("");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      status("A token is needed", true);
      notice(token ? "That token was refused. Enter the admin.read_token or admin.token of this host." : "This host requires a token to show its pipelines.", "error");
      // Not awaited: polling goes on behind the dialog, which stays open
      // until a token is given; giving one polls at once.
      askToken(token ? "That token was refused: try again." : "This host requires a read token to show its pipelines.");
      return;
    }
    status("Cannot reach the admin API", true);
    // What is shown is the last answer: say so.
    document.body.classList.add("stale");
    // fetch fails with a TypeError when nothing answers at all.
    const why = error instanceof ApiError ? error.message : "the host does not answer (stopped, restarting, or unreachable from here)";
    notice(`Cannot read the pipelines: ${why}. Trying again every ${POLL_MS / 1000} s; what is shown is the last answer.`, "error");
  } finally {
    polling = false;
    pollTimer = setTimeout(poll, POLL_MS);
  }
}

// ----------------------------------------------------------------- metrics

/**
 * The parts of the Prometheus text the page shows: plugin call duration
 * buckets and source lag, by pipeline.
 */
function parseMetrics(text) {
  const buckets = new Map();
  const lag = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][\w:]*)\{([^}]*)\}\s+(\S+)/.exec(line);
    if (!match) continue;
    const [, name, labelText, valueText] = match;
    const labels = {};
    for (const pair of labelText.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    const value = Number(valueText);
    if (!labels.pipeline || Number.isNaN(value)) continue;
    if (name === "sluice_plugin_call_duration_seconds_bucket") {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      if (!buckets.has(labels.pipeline)) buckets.set(labels.pipeline, []);
      buckets.get(labels.pipeline).push([le, value]);
    } else if (name === "sluice_source_lag") {
      lag.set(labels.pipeline, value);
    }
  }
  for (const list of buckets.values()) list.sort((a, b) => a[0] - b[0]);
  return { buckets, lag };
}

/** A quantile of the calls between two bucket readings (as Prometheus' histogram_quantile). */
function quantile(q, now, before) {
  if (!now) return null;
  const counts = now.map(([le, count], i) => [le, count - (before && before[i] && before[i][0] === le ? before[i][1] : 0)]);
  const total = counts.length ? counts[counts.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, count] of counts) {
    if (count >= rank) {
      if (le === Infinity) return lowerBound;
      const inBucket = count - lowerCount;
      return inBucket > 0 ? lowerBound + (le - lowerBound) * ((rank - lowerCount) / inBucket) : le;
    }
    lowerBound = le;
    lowerCount = count;
  }
  return lowerBound;
}

// ------------------------------------------------------------------ render

function render(list, metrics) {
  const now = performance.now();
  const seen = new Set();
  const cards = $("cards");
  for (const view of list) {
    seen.add(view.name);
    let entry = pipelines.get(view.name);
    if (!entry) {
      entry = { card: makeCard(view.name), samples: [] };
      pipelines.set(view.name, entry);
    }
    let latency = null;
    if (metrics) {
      const current = metrics.buckets.get(view.name);
      const before = lastBuckets.get(view.name);
      latency = { p50: quantile(0.5, current, before), p99: quantile(0.99, current, before), lag: metrics.lag.get(view.name) };
    }
    if (view.stats) {
      entry.samples.push({ t: now, stats: view.stats, latency });
      if (entry.samples.length > HISTORY + 1) entry.samples.shift();
    }
    updateCard(entry, view, latency);
  }
  if (metrics) lastBuckets = metrics.buckets;
  // Keep the page order the API's (by name); drop pipelines that are gone.
  for (const [name, entry] of pipelines) {
    if (!seen.has(name)) {
      entry.card.root.remove();
      pipelines.delete(name);
    }
  }
  list.forEach((view, index) => {
    const root = pipelines.get(view.name).card.root;
    if (cards.children[index] !== root) cards.insertBefore(root, cards.children[index] || null);
  });
  const empty = $("empty");
  empty.hidden = list.length > 0;
  empty.textContent = "No pipelines run on this host yet. They appear here once they start (a pipeline that finished its input is gone).";
  refreshTapChoices();
}

function makeCard(name) {
  const root = el("article", { class: "card", "aria-labelledby": `p-${cssId(name)}` });
  const refs = { root };
  refs.title = el("h3", { id: `p-${cssId(name)}`, text: name });
  refs.state = el("span", { class: "badge" });
  refs.source = el("span", { class: "source" });
  root.append(el("div", { class: "card-head" }, refs.title, refs.state, refs.source));
  refs.problem = el("p", { class: "problem", role: "note", hidden: true });
  root.append(refs.problem);

  refs.facts = el("dl", { class: "facts" });
  refs.rates = el("div", { class: "rates" });
  refs.rateCells = {};
  for (const [key, label, cls] of RATES) refs.rateCells[key] = makeRate(refs.rates, label, cls);
  refs.rateCells.latency = makeRate(refs.rates, "Call latency p50 / p99", "latency");
  refs.noRates = el("p", { class: "empty small", text: "No rates while it is not running.", hidden: true });
  root.append(el("div", { class: "card-body" }, refs.facts, el("div", {}, el("h4", { class: "visually-hidden", text: `Rates of ${name}` }), refs.rates, refs.noRates)));

  // A candidate version being tried: its first differing events, side by side.
  refs.candidate = el("section", { class: "candidate", hidden: true, "aria-label": `Candidate version of ${name}` });
  root.append(refs.candidate);

  refs.result = el("p", { class: "result", role: "status", "aria-live": "polite" });
  refs.promote = el("button", { type: "button", class: "ghost", text: "Promote candidate", title: "Make the candidate version current", hidden: true, onclick: () => candidateAct(name, "promote", refs) });
  refs.abort = el("button", { type: "button", class: "ghost", text: "Abort candidate", title: "Stop trying the candidate version", hidden: true, onclick: () => candidateAct(name, "abort", refs) });
  refs.reload = el("button", { type: "button", class: "ghost", text: "Reload", title: "Load the plugin file again", onclick: () => act(name, "reload", refs) });
  refs.rollback = el("button", { type: "button", class: "ghost", text: "Roll back", title: "Back to the previous version", onclick: () => act(name, "rollback", refs) });
  refs.pause = el("button", { type: "button", class: "ghost", text: "Pause", onclick: () => act(name, refs.pause.dataset.action, refs) });
  refs.file = el("input", { type: "file", accept: ".wasm,application/wasm", class: "visually-hidden", tabindex: "-1", "aria-hidden": "true", id: `f-${cssId(name)}`, onchange: () => chooseUpload(name, refs) });
  refs.upload = el("button", { type: "button", class: "ghost", text: "Upload version…", onclick: () => refs.file.click() });
  refs.tap = el("button", { type: "button", text: "Live tap", onclick: () => openTap(name) });
  refs.dlq = el("button", { type: "button", text: "Dead letters", onclick: () => deadLetters.open(name) });
  root.append(el("div", { class: "actions", role: "group", "aria-label": `Actions on ${name}` }, refs.tap, refs.dlq, refs.reload, refs.rollback, refs.pause, refs.upload, refs.file, refs.promote, refs.abort, refs.result));
  return refs;
}

function makeRate(parent, label, cls) {
  const value = el("span", { class: "value", text: "—" });
  const total = el("span", { class: "total" });
  const chart = svg("svg", { class: "spark", viewBox: "0 0 120 30", preserveAspectRatio: "none", role: "img" });
  const area = svg("polygon");
  const line = svg("polyline");
  // The chart's floor, across its whole width: the time it covers shows
  // even while little history is drawn.
  const floor = svg("line", { x1: 0, y1: 29.5, x2: 120, y2: 29.5, class: "floor" });
  chart.append(floor, area, line);
  const node = el("div", { class: `rate ${cls}` }, el("span", { class: "label", text: label }), value, total, chart);
  parent.append(node);
  return { node, value, total, chart, line, area, label };
}

function cssId(name) {
  return name.replace(/[^A-Za-z0-9_-]/g, "_");
}

function updateCard(entry, view, latency) {
  const refs = entry.card;
  refs.state.textContent = view.state;
  refs.state.className = `badge ${view.state}`;
  refs.source.textContent = view.source || "";

  let problem = "";
  if (view.state === "restarting" && view.restart) {
    problem = `Restarting (attempt ${view.restart.attempt}, next try ${formatTime(view.restart.next_try)}): ${view.restart.last_error}`;
  } else if (view.state === "failed") {
    // The host's error says "failed after N restart(s) …" itself.
    const error = view.error || "failed (no reason given)";
    problem = error.startsWith("failed") ? `F${error.slice(1)}` : `Failed: ${error}`;
  } else if (view.plugin && view.plugin.last_rejection && !(Date.parse(view.plugin.last_rejection.at) < Date.parse(view.plugin.current.loaded_at))) {
    // Shown until a version loads after it.
    const r = view.plugin.last_rejection;
    problem = `Last version refused (${r.origin}, ${formatTime(r.at)}): ${r.error}`;
  }
  refs.problem.textContent = problem;
  refs.problem.hidden = !problem;

  const facts = [];
  if (view.plugin) {
    const p = view.plugin;
    facts.push(["Plugin", p.name]);
    facts.push(["Version", versionText(p.current)]);
    facts.push(["Loaded", `${formatTime(p.current.loaded_at)} (${p.current.origin}, ${p.current.load_ms} ms)`]);
    const accepts = p.current.accepts;
    facts.push(["Accepts", !accepts ? "any (no manifest)" : accepts.join(",") === "*" ? "any version (*)" : accepts.join(", ") || "nothing declared"]);
    facts.push(["Previous", p.previous ? `${versionText(p.previous)}, loaded ${formatTime(p.previous.loaded_at)} (${p.previous.origin})` : "none"]);
    facts.push(["Reloads", `${p.reloads} done, ${p.rejections} refused`]);
    const rollout = p.rollout || {};
    if (rollout.candidate) facts.push(["Candidate", candidateText(rollout.candidate)]);
    if (rollout.last) facts.push(["Last candidate", `${rollout.last.digest.slice(0, 12)} ${rollout.last.outcome} ${formatTime(rollout.last.at)}: ${rollout.last.reason}`]);
  }
  updateCandidate(refs, view.plugin && view.plugin.rollout && view.plugin.rollout.candidate);
  if (view.stats) facts.push(["Breaker", view.breaker ? `${view.breaker.state} (${view.breaker.failures} failures in window, opened ${view.breaker.opened}×)` : "none configured"]);
  facts.push(["Restarts", String(view.restarts ?? 0)]);
  if (view.started_at) facts.push(["Started", formatTime(view.started_at)]);
  if (latency && latency.lag !== undefined) facts.push(["Source lag", `${latency.lag} messages`]);
  // Replaced only when something changed: a reader selecting text or a
  // screen reader in the list is not disturbed every 2 s.
  const factsKey = JSON.stringify(facts);
  if (refs.factsKey !== factsKey) {
    refs.factsKey = factsKey;
    refs.facts.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  }

  const running = view.state === "running" || view.state === "paused";
  refs.rates.hidden = !view.stats;
  refs.noRates.hidden = Boolean(view.stats);
  if (!view.stats) entry.samples.length = 0; // a new run counts from 0 again
  const samples = entry.samples;
  for (const [key, label] of RATES) {
    const cell = refs.rateCells[key];
    const series = rateSeries(samples, key);
    const now = series.length ? series[series.length - 1] : null;
    cell.value.textContent = now === null ? "—" : `${formatRate(now)}/s`;
    cell.total.textContent = view.stats ? `${view.stats[key].toLocaleString()} total` : "";
    drawSpark(cell, series, `${label} per second over the last ${Math.round((series.length * POLL_MS) / 1000)} s; now ${now === null ? "not known yet" : formatRate(now)}`);
  }
  const lat = refs.rateCells.latency;
  const p50 = samples.map((s) => (s.latency ? s.latency.p50 : null));
  const last = samples.length ? samples[samples.length - 1].latency : null;
  lat.value.textContent = last && last.p50 !== null ? `${formatSeconds(last.p50)} / ${formatSeconds(last.p99)}` : "—";
  lat.total.textContent = last && last.p50 === null ? "no calls" : "";
  drawSpark(lat, p50.slice(1), `Median plugin call latency over the last samples; now ${last && last.p50 !== null ? formatSeconds(last.p50) : "no calls"}`);

  refs.reload.disabled = !running;
  refs.rollback.disabled = !(running && view.plugin && view.plugin.previous);
  refs.pause.disabled = !running;
  refs.upload.disabled = !running;
  refs.tap.disabled = !running;
  refs.dlq.disabled = !running;
  refs.pause.dataset.action = view.state === "paused" ? "resume" : "pause";
  refs.pause.textContent = view.state === "paused" ? "Resume" : "Pause";
}

/** A candidate's mode and counts, in one line. */
function candidateText(c) {
  const n = c.counts;
  const ms = `${n.candidate_ms.toFixed(2)} ms/event (current ${n.current_ms.toFixed(2)})`;
  if (c.mode === "canary") {
    return `${c.digest.slice(0, 12)} · canary ${c.canary}: ${n.handled} handled, ${n.candidate_failures} failed and handed to the current version; current ${n.current_failures} of ${n.current_events} failed; ${ms}`;
  }
  return `${c.digest.slice(0, 12)} · shadow ${c.sample}: ${n.handled} compared, ${n.different} different, ${n.candidate_failures} failed (current ${n.current_failures}), ${n.effects_refused} calls refused; ${ms}`;
}

/** The candidate's first differing events as a table, replaced only when they change. */
function updateCandidate(refs, candidate) {
  const examples = (candidate && candidate.examples) || [];
  const key = JSON.stringify(examples) + (candidate ? candidate.digest : "");
  refs.promote.hidden = !candidate;
  refs.abort.hidden = !candidate;
  refs.candidate.hidden = examples.length === 0;
  if (refs.candidateKey === key) return;
  refs.candidateKey = key;
  if (examples.length === 0) return refs.candidate.replaceChildren();
  const head = el("tr", {}, ...["Event", "Difference", "Current version", "Candidate"].map((t) => el("th", { scope: "col", text: t })));
  const rows = examples.map((e) =>
    el("tr", {}, el("td", { text: e.event_id }), el("td", { text: e.difference }), el("td", {}, el("code", { text: JSON.stringify(e.current) })), el("td", {}, el("code", { text: JSON.stringify(e.candidate) }))),
  );
  refs.candidate.replaceChildren(
    el("h4", { text: `Differing events (first ${examples.length})` }),
    el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)),
  );
}

/** Promotes or aborts a pipeline's candidate version. */
async function candidateAct(name, action, refs) {
  result(refs, action === "promote" ? "Promoting the candidate…" : "Aborting the candidate…");
  const path = `/pipelines/${encodeURIComponent(name)}/candidate`;
  try {
    const answer = await withToken(() => (action === "promote" ? api("POST", `${path}/promote`) : api("DELETE", path)));
    if (answer === null) return result(refs, "Cancelled: no token.");
    result(refs, action === "promote" ? `Promoted: now serving ${answer.current.digest.slice(0, 12)}.` : "Candidate aborted; the current version serves on.", "ok");
    poll();
  } catch (error) {
    result(refs, `${action} failed: ${error.message}`, "error");
  }
}

function versionText(v) {
  return `${v.digest.slice(0, 12)} · generation ${v.generation}`;
}

/** Per-second rates between consecutive samples of one counter. */
function rateSeries(samples, key) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].t - samples[i - 1].t) / 1000;
    const dv = samples[i].stats[key] - samples[i - 1].stats[key];
    out.push(dt > 0 ? Math.max(0, dv) / dt : 0);
  }
  return out;
}

function drawSpark(cell, series, description) {
  cell.chart.setAttribute("aria-label", description);
  // Newest on the right, one step per sample; a sample without a value
  // (no calls, for latency) is left out rather than drawn as 0.
  const step = 120 / (HISTORY - 1);
  const offset = 120 - step * (series.length - 1);
  const known = series.map((v, i) => [offset + i * step, v]).filter(([, v]) => v !== null && v !== undefined);
  if (known.length < 2) {
    cell.line.setAttribute("points", "");
    cell.area.setAttribute("points", "");
    return;
  }
  const max = Math.max(...known.map(([, v]) => v)) || 1;
  const points = known.map(([x, v]) => `${x.toFixed(1)},${(28 - (v / max) * 26).toFixed(1)}`);
  cell.line.setAttribute("points", points.join(" "));
  cell.area.setAttribute("points", `${known[0][0].toFixed(1)},30 ${points.join(" ")} ${known[known.length - 1][0].toFixed(1)},30`);
}

function formatRate(v) {
  if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
  if (v >= 10 || v === 0) return v.toFixed(0);
  return v.toFixed(1);
}

function formatSeconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

function formatTime(rfc3339) {
  const date = new Date(rfc3339);
  return Number.isNaN(date.getTime()) ? String(rfc3339) : date.toLocaleString();
}

// ----------------------------------------------------------------- actions

/** Runs a mutation; asks for the token when there is none or it is refused. */
async function withToken(run) {
  if (!token && !(await askToken("Changing a pipeline needs this host's admin.token."))) return null;
  try {
    return await run();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      if (await askToken("That token may not change pipelines: enter the admin.token.")) return run();
      return null;
    }
    throw error;
  }
}

async function act(name, action, refs) {
  const labels = { reload: "Reloading", rollback: "Rolling back", pause: "Pausing", resume: "Resuming" };
  result(refs, `${labels[action]}…`);
  try {
    const answer = await withToken(() => api("POST", `/pipelines/${encodeURIComponent(name)}/${action}`));
    if (answer === null) return result(refs, "Cancelled: no token.");
    const current = answer.current ? ` Now serving ${answer.current.digest.slice(0, 12)} (gen ${answer.current.generation}).` : "";
    const done = { reload: "Reloaded.", rollback: "Rolled back.", pause: "Paused: no events are taken from the source.", resume: "Resumed." };
    result(refs, `${done[action]}${current}`, "ok");
    poll();
  } catch (error) {
    result(refs, `${action} failed: ${error.message}`, "error");
  }
}

function result(refs, text, kind = "") {
  refs.result.textContent = text;
  refs.result.className = `result ${kind}`;
}

let pendingUpload = null;

async function chooseUpload(name, refs) {
  const file = refs.file.files && refs.file.files[0];
  refs.file.value = "";
  if (!file) return;
  result(refs, `Computing the sha256 of ${file.name}…`);
  try {
    const bytes = await file.arrayBuffer();
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    pendingUpload = { name, refs, bytes, hex };
    $("upload-pipeline").textContent = name;
    $("upload-file").textContent = file.name;
    $("upload-size").textContent = `${bytes.byteLength.toLocaleString()} bytes`;
    $("upload-sha").textContent = hex;
    $("upload-signature").value = "";
    result(refs, "");
    $("upload-dialog").showModal();
    $("upload-cancel").focus();
  } catch (error) {
    result(refs, `Cannot read ${file.name}: ${error.message}${window.isSecureContext ? "" : " (crypto.subtle needs HTTPS or localhost)"}`, "error");
  }
}

function setupUpload() {
  const dialog = $("upload-dialog");
  $("upload-cancel").addEventListener("click", () => {
    dialog.close();
    if (pendingUpload) result(pendingUpload.refs, "Upload cancelled.");
    pendingUpload = null;
  });
  $("upload-form").addEventListener("submit", async () => {
    const upload = pendingUpload;
    pendingUpload = null;
    if (!upload) return;
    const { name, refs, bytes, hex } = upload;
    const signature = $("upload-signature").value.trim();
    const extra = signature ? { "Sluice-Signature": signature } : {};
    result(refs, `Uploading ${hex.slice(0, 12)}…`);
    try {
      const answer = await withToken(() =>
        api("PUT", `/pipelines/${encodeURIComponent(name)}/plugin?sha256=${hex}`, { body: bytes, contentType: "application/wasm", extra }));
      if (answer === null) return result(refs, "Cancelled: no token.");
      result(refs, `Now serving ${answer.current.digest.slice(0, 12)} (gen ${answer.current.generation}).`, "ok");
      poll();
    } catch (error) {
      result(refs, `Upload refused: ${error.message}`, "error");
    }
  });
}

// --------------------------------------------------------------------- tap

const tap = { name: null, controller: null, paused: false, held: [], dropped: 0, count: 0 };

function openTap(name) {
  const section = $("tap");
  section.hidden = false;
  if (tap.name !== name) {
    stopTap();
    tap.name = name;
    $("tap-rows").replaceChildren();
  }
  $("tap-title").textContent = `Live tap: ${name}`;
  tapStatus(`Choose what to see and press Start. Events are sampled by the host (at most 500 a second per point) and cut to 1 KiB.`);
  section.scrollIntoView({ behavior: "smooth", block: "start" });
  $("tap-start").focus();
}

function refreshTapChoices() {
  if (tap.name && !pipelines.has(tap.name)) tapStatus(`Pipeline ${tap.name} is gone.`);
}

function tapStatus(text) {
  $("tap-status").textContent = text;
}

function setupTap() {
  $("tap-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startTap();
  });
  $("tap-stop").addEventListener("click", () => {
    stopTap();
    tapStatus(`Stopped. ${tap.count} events seen.`);
  });
  $("tap-pause").addEventListener("click", () => {
    tap.paused = !tap.paused;
    $("tap-pause").textContent = tap.paused ? "Resume view" : "Pause view";
    $("tap-pause").setAttribute("aria-pressed", String(tap.paused));
    if (!tap.paused) {
      for (const entry of tap.held.splice(0)) addRow(entry);
    }
    tapStatus(tap.paused ? "View paused: new events are held (the newest 200) until you resume." : `Tapping ${tap.name}.`);
  });
  $("tap-clear").addEventListener("click", () => {
    $("tap-rows").replaceChildren();
    tap.held = [];
  });
}

async function startTap() {
  stopTap();
  const name = tap.name;
  if (!name) return;
  const form = $("tap-form");
  const params = new URLSearchParams();
  for (const point of ["inputs", "outputs", "dead_letters"]) if (form.elements[point].checked) params.set(point, "true");
  const sample = Number(form.elements.sample.value);
  if (sample > 1) params.set("sample", String(Math.floor(sample)));
  const controller = new AbortController();
  tap.controller = controller;
  tap.paused = false;
  tap.held = [];
  tap.count = 0;
  tap.dropped = 0;
  $("tap-pause").textContent = "Pause view";
  $("tap-pause").disabled = false;
  $("tap-stop").disabled = false;
  $("tap-start").disabled = true;
  tapStatus(`Connecting to ${name}…`);
  try {
    const response = await fetch(`/pipelines/${encodeURIComponent(name)}/tap?${params}`, {
      headers: headers({ Accept: "text/event-stream" }), cache: "no-store", credentials: "omit", signal: controller.signal,
    });
    if (response.status === 401) {
      stopTap();
      if (await askToken("Tapping this host's pipelines needs a read token.")) startTap();
      return;
    }
    if (!response.ok || !response.body) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch { /* keep the status */ }
      throw new Error(message);
    }
    tapStatus(`Tapping ${name}. Waiting for events…`);
    await readEvents(response.body, (type, data) => onTapEvent(name, type, data));
    if (tap.controller === controller) {
      stopTap();
      if (!$("tap-status").textContent.startsWith("Ended")) tapStatus(`The tap closed. ${tap.count} events seen.`);
    }
  } catch (error) {
    if (error.name === "AbortError") return;
    if (tap.controller === controller) stopTap();
    tapStatus(`The tap failed: ${error.message}`);
  }
}

function stopTap() {
  if (tap.controller) tap.controller.abort();
  tap.controller = null;
  $("tap-start").disabled = false;
  $("tap-pause").disabled = true;
  $("tap-stop").disabled = true;
}

/** Reads server-sent events from a stream: calls `on(event, data)` for each. */
async function readEvents(body, on) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) on(type, data.join("\n"));
    }
  }
}

function onTapEvent(name, type, data) {
  let parsed;
  try {
    parsed = JSON.parse(data);
  } catch {
    return;
  }
  if (type === "end") {
    tapStatus(`Ended: ${parsed.reason}. ${tap.count} events seen.`);
    return;
  }
  if (type === "dropped") {
    tap.dropped += parsed.dropped;
    addOrHold({ marker: `${parsed.dropped} events not shown: the view read too slowly.` });
    return;
  }
  tap.count += 1;
  addOrHold(parsed);
  if (!tap.paused) tapStatus(`Tapping ${name}: ${tap.count} events seen${tap.dropped ? `, ${tap.dropped} missed` : ""}.`);
}

function addOrHold(entry) {
  if (tap.paused) {
    tap.held.push(entry);
    if (tap.held.length > TAP_ROWS) tap.held.shift();
  } else {
    addRow(entry);
  }
}

function addRow(entry) {
  const rows = $("tap-rows");
  let row;
  if (entry.marker) {
    row = el("tr", { class: "marker" }, el("td", { colspan: 7, text: entry.marker }));
  } else {
    const detail = entry.point === "dead-letter"
      ? `${entry.reason || "?"} after ${entry.attempts ?? "?"} attempt(s): ${entry.message || ""}`
      : entry.point === "output" ? (entry.reply ? "reply" : `→ ${entry.destination || "default route"}`) : "";
    // The digest header repeats the Version column in full: left out.
    const shownHeaders = (entry.headers || []).filter(([k, v]) => !(k === "sluice-plugin-digest" && entry.version && (v.text || "").startsWith(entry.version)));
    const meta = [entry.key ? `key: ${previewText(entry.key)}` : "", headerText(shownHeaders)].filter(Boolean).join("; ");
    row = el("tr", {},
      el("td", { class: "mono", text: timeOf(entry.at) }),
      el("td", {}, el("span", { class: `point ${entry.point}`, text: entry.point })),
      el("td", { class: "mono", text: entry.event }),
      el("td", { class: "mono", text: entry.version || "—" }),
      el("td", { text: detail }),
      el("td", { class: "meta", text: clip(meta, 160), title: meta.length > 160 ? meta : undefined }),
      el("td", { class: "payload", text: previewText(entry.payload) }));
  }
  rows.prepend(row);
  while (rows.children.length > TAP_ROWS) rows.lastElementChild.remove();
}

/** Long text cut for the table; the full text stays in the cell's title. */
function clip(text, max) {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

function headerText(headers) {
  if (!headers || headers.length === 0) return "";
  return headers.map(([k, v]) => `${k}: ${previewText(v)}`).join("; ");
}

function previewText(preview) {
  if (!preview) return "";
  const shown = preview.text !== undefined ? preview.text : preview.hex !== undefined ? `hex ${preview.hex}` : "";
  return preview.truncated ? `${shown}… (${preview.bytes.toLocaleString()} bytes)` : shown;
}

function timeOf(at) {
  const date = new Date(at);
  return Number.isNaN(date.getTime()) ? at : date.toLocaleTimeString(undefined, { hour12: false }) + `.${String(date.getMilliseconds()).padStart(3, "0")}`;
}

// -------------------------------------------------------------------- start

setupToken();
setupUpload();
setupTap();
const deadLetters = setupDeadLetters({ $, el, api, ApiError, askToken, withToken, clip, previewText, formatTime, cssId });
updateTokenButton();
poll();
