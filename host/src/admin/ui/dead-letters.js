// The console's dead-letters view: a pipeline's newest dead letters
// (GET /pipelines/{name}/dead-letters), filtered by reason and time, with
// headers on expand; a selection is previewed (a dry run) and then, once
// confirmed, replayed (POST /pipelines/{name}/dead-letters/replay).
//
// The page's helpers (requests with the tab's token, DOM building,
// previews) come from app.js through `setupDeadLetters`, so this module
// imports nothing.

let $, el, api, ApiError, askToken, withToken, clip, previewText, formatTime, cssId;

/** Wires the view to the page; returns `{ open(name) }` for the cards. */
export function setupDeadLetters(helpers) {
  ({ $, el, api, ApiError, askToken, withToken, clip, previewText, formatTime, cssId } = helpers);
  setup();
  return { open: openDeadLetters };
}

/** The dead-letters view: its pipeline, the records shown, the selection,
 * and the ids the last dry run previewed (Replay needs a fresh preview). */
const dlq = { name: null, records: [], selected: new Set(), previewed: null, loading: false };

function openDeadLetters(name) {
  const section = $("dlq");
  if (dlq.name !== name) {
    dlq.name = name;
    dlq.records = [];
    dlq.selected.clear();
    dlq.previewed = null;
    $("dlq-rows").replaceChildren();
    $("dlq-outcome").hidden = true;
  }
  $("dlq-title").textContent = `Dead letters: ${name}`;
  section.hidden = false;
  section.scrollIntoView({ behavior: "smooth", block: "start" });
  $("dlq-reason").focus();
  loadDeadLetters();
}

function dlqStatus(text, kind = "") {
  $("dlq-status").textContent = text;
  $("dlq-status").className = `tap-status ${kind}`;
}

async function loadDeadLetters() {
  const name = dlq.name;
  if (!name || dlq.loading) return;
  const form = $("dlq-form");
  const params = new URLSearchParams();
  const limit = Math.min(1000, Math.max(1, Number(form.elements.limit.value) || 100));
  params.set("limit", String(limit));
  if (form.elements.reason.value) params.set("reason", form.elements.reason.value);
  if (form.elements.since.value) params.set("since", form.elements.since.value);
  dlq.loading = true;
  dlqStatus(`Reading the dead letters of ${name}…`);
  try {
    let answer;
    try {
      answer = await api("GET", `/pipelines/${encodeURIComponent(name)}/dead-letters?${params}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401 && (await askToken("Reading dead letters needs a read token."))) {
        answer = await api("GET", `/pipelines/${encodeURIComponent(name)}/dead-letters?${params}`);
      } else {
        throw error;
      }
    }
    if (dlq.name !== name) return;
    dlq.records = answer.dead_letters || [];
    const ids = new Set(dlq.records.map((r) => r.id));
    for (const id of [...dlq.selected]) if (!ids.has(id)) dlq.selected.delete(id);
    dlq.previewed = null;
    renderDeadLetters();
    const filtered = params.has("reason") || params.has("since");
    const where = `in ${answer.destination}`;
    if (dlq.records.length === 0) {
      dlqStatus(filtered ? `No dead letters match these filters ${where}.` : `No dead letters ${where}. Events the plugin rejects or that run out of attempts appear here.`);
    } else {
      const more = answer.more ? ` Older ones may match too: ${answer.scanned.toLocaleString()} records read (at most ${answer.max_scan.toLocaleString()}); raise "Newest" or narrow the filters.` : "";
      dlqStatus(`${dlq.records.length} dead letter${dlq.records.length === 1 ? "" : "s"} ${where}, newest first.${more}`);
    }
    if (answer.replay_unavailable) dlqStatus(`${$("dlq-status").textContent} Replay is not possible: ${answer.replay_unavailable}`);
  } catch (error) {
    if (dlq.name === name) {
      dlq.records = [];
      renderDeadLetters();
      dlqStatus(`Cannot read the dead letters: ${error.message}`, "error");
    }
  } finally {
    dlq.loading = false;
  }
}

function renderDeadLetters() {
  const rows = $("dlq-rows");
  rows.replaceChildren();
  for (const record of dlq.records) {
    const selected = dlq.selected.has(record.id);
    const check = el("input", { type: "checkbox", "aria-label": `Select the dead letter of event ${record.event_id}`, checked: selected });
    check.addEventListener("change", () => {
      if (check.checked) dlq.selected.add(record.id);
      else dlq.selected.delete(record.id);
      row.classList.toggle("selected", check.checked);
      selectionChanged();
    });
    const detailId = `dlq-detail-${cssId(record.id)}`;
    const expand = el("button", { type: "button", class: "ghost", "aria-expanded": "false", "aria-controls": detailId, text: `Show (${(record.headers || []).length})` });
    const digest = record.plugin_digest || "";
    const row = el("tr", { class: selected ? "selected" : "" },
      el("td", {}, check),
      el("td", { class: "mono", text: record.time ? formatTime(record.time) : "—", title: record.time || undefined }),
      el("td", {}, el("span", { class: "reason", text: record.reason })),
      el("td", { text: record.attempts ?? "—" }),
      el("td", { class: "message", text: record.message || "—" }),
      el("td", { class: "mono", text: `${record.plugin || "?"} ${digest.slice(0, 12)}`, title: digest || undefined }),
      el("td", { class: "payload", text: clip(previewText(record.payload), 300) }),
      el("td", {}, expand));
    const facts = el("dl", { class: "facts" },
      el("dt", { text: "Event" }), el("dd", { class: "mono", text: record.event_id || "—" }),
      el("dt", { text: "Source" }), el("dd", { class: "mono", text: record.source || "—" }),
      el("dt", { text: "Record id" }), el("dd", { class: "mono", text: record.id }),
      el("dt", { text: "Plugin digest" }), el("dd", { class: "mono", text: digest || "—" }));
    if (record.key) facts.append(el("dt", { text: "Key" }), el("dd", { class: "mono", text: previewText(record.key) }));
    for (const [key, value] of record.headers || []) facts.append(el("dt", { class: "mono", text: key }), el("dd", { class: "mono", text: previewText(value) }));
    if (!(record.headers || []).length) facts.append(el("dt", { text: "Headers" }), el("dd", { text: "none" }));
    const detail = el("tr", { class: "detail", id: detailId, hidden: true }, el("td", { colspan: 8 }, facts));
    expand.addEventListener("click", () => {
      const open = detail.hidden;
      detail.hidden = !open;
      expand.setAttribute("aria-expanded", String(open));
      expand.textContent = open ? "Hide" : `Show (${(record.headers || []).length})`;
    });
    rows.append(row, detail);
  }
  selectionChanged();
}

function selectionChanged() {
  const count = dlq.selected.size;
  const all = $("dlq-all");
  all.checked = count > 0 && count === dlq.records.length;
  all.indeterminate = count > 0 && count < dlq.records.length;
  all.disabled = dlq.records.length === 0;
  $("dlq-selected").textContent = count === 0 ? "None selected" : `${count} selected`;
  $("dlq-preview").disabled = count === 0;
  const previewed = dlq.previewed && dlq.previewed.size === count && [...dlq.selected].every((id) => dlq.previewed.has(id));
  $("dlq-replay").disabled = !previewed;
}

/** The selected ids, oldest first: the order the events failed in. */
function selectedIds() {
  return dlq.records.filter((r) => dlq.selected.has(r.id)).map((r) => r.id).reverse();
}

async function replayDeadLetters(dryRun) {
  const name = dlq.name;
  const ids = selectedIds();
  if (!name || ids.length === 0) return;
  dlqStatus(dryRun ? "Previewing the replay…" : `Replaying ${ids.length}…`);
  try {
    const answer = await withToken(() => api("POST", `/pipelines/${encodeURIComponent(name)}/dead-letters/replay`, {
      body: JSON.stringify({ ids, dry_run: dryRun }),
      contentType: "application/json",
    }));
    if (answer === null) return dlqStatus("Cancelled: replaying needs the admin token.");
    showOutcome(answer);
    if (dryRun) {
      dlq.previewed = answer.would_replay > 0 ? new Set(ids) : null;
      selectionChanged();
      dlqStatus(`Preview: ${answer.would_replay} would be replayed${answer.failed ? `, ${answer.failed} cannot be` : ""}. Nothing was sent.`);
      if (!$("dlq-replay").disabled) $("dlq-replay").focus();
    } else {
      dlq.previewed = null;
      dlq.selected.clear();
      selectionChanged();
      renderDeadLetters();
      dlqStatus(`Replayed ${answer.replayed}${answer.failed ? `; ${answer.failed} failed` : ""}.`, answer.failed ? "error" : "ok");
    }
  } catch (error) {
    dlqStatus(`${dryRun ? "Preview" : "Replay"} failed: ${error.message}`, "error");
  }
}

function showOutcome(answer) {
  const box = $("dlq-outcome");
  const list = $("dlq-outcome-list");
  list.replaceChildren();
  $("dlq-outcome-title").textContent = answer.dry_run
    ? `Preview: would replay ${answer.would_replay} to ${answer.to}`
    : `Replayed ${answer.replayed} to ${answer.to}${answer.failed ? `, ${answer.failed} failed` : ""}`;
  const verb = { "would-replay": "would replay", replayed: "replayed", failed: "failed" };
  for (const record of answer.records || []) {
    const text = `${verb[record.status] || record.status}: event ${record.event_id} (${record.reason})${record.to ? ` → ${record.to}` : ""}: ${clip(previewText(record.payload), 120)}${record.error ? ` — ${record.error}` : ""}`;
    list.append(el("li", { class: record.status, text }));
  }
  box.hidden = false;
}

function setup() {
  $("dlq-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadDeadLetters();
  });
  for (const id of ["dlq-reason", "dlq-since"]) $(id).addEventListener("change", () => loadDeadLetters());
  $("dlq-close").addEventListener("click", () => {
    $("dlq").hidden = true;
    dlq.name = null;
  });
  $("dlq-all").addEventListener("change", () => {
    if ($("dlq-all").checked) for (const r of dlq.records) dlq.selected.add(r.id);
    else dlq.selected.clear();
    renderDeadLetters();
  });
  $("dlq-preview").addEventListener("click", () => replayDeadLetters(true));
  const dialog = $("replay-dialog");
  $("dlq-replay").addEventListener("click", () => {
    const count = dlq.selected.size;
    $("replay-what").textContent = `Replay ${count} dead letter${count === 1 ? "" : "s"} of ${dlq.name} to its source?`;
    dialog.showModal();
    $("replay-cancel").focus();
  });
  $("replay-cancel").addEventListener("click", () => dialog.close());
  $("replay-form").addEventListener("submit", () => replayDeadLetters(false));
}
