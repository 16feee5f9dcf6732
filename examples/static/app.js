// The reference page: starts runs, renders them live with EventSource, survives reloads.
//
// Resuming is the server's job: every event carries `id: <seq>`, and a stream opened with
// `last_event_id=<seq>` (or EventSource's own Last-Event-ID header when it reconnects by
// itself) continues right after it. The page only has to remember where it was:
// - the run is in the URL (`?run=<id>`), so a reload or a restored tab knows which run;
// - what it rendered (text, seq ids, last event id) is in sessionStorage, per tab;
// - the tokens of the runs this browser started are in localStorage. They expire (an hour by
//   default): while the page shows a run, it swaps them for fresh ones at half their lifetime
//   (POST /runs/{id}/token with the one it has), and opens the stream again with the fresh
//   one when the server refused the old one to EventSource's own reconnect.
// Restarts follow the project's client rule: `restarted` with `"resume": false` means the
// new attempt starts over, so the output rendered before it is dropped.
"use strict";

const $ = (id) => document.getElementById(id);
const RUNS_KEY = "celery-streaming:runs";
const viewKey = (runId) => "celery-streaming:view:" + runId;
const MAX_LOG = 300;

let source = null; // the EventSource of the run on screen
let run = null; // {run_id, token, cancel_token, token_url, renew_at, stream_url, cancel_url}
let view = null; // what this tab rendered of the run (kept in sessionStorage)
let flowerUrl = null;
let totals = {}; // run id -> chunks the demo will write
let leaving = false; // the page is unloading: its stream's close is not the run's business

// -- storage ---------------------------------------------------------------------------------

function knownRuns() {
  try { return JSON.parse(localStorage.getItem(RUNS_KEY)) || {}; } catch (_) { return {}; }
}

function rememberRun(created) {
  const runs = knownRuns();
  runs[created.run_id] = {
    run_id: created.run_id, token: created.token, cancel_token: created.cancel_token,
    token_url: created.token_url, renew_at: Date.now() + created.expires_in * 500,
    stream_url: created.stream_url, cancel_url: created.cancel_url, started: Date.now(),
  };
  saveRuns(runs);
}

function saveRuns(runs) {
  const ids = Object.keys(runs).sort((a, b) => runs[b].started - runs[a].started);
  for (const old of ids.slice(50)) delete runs[old];
  localStorage.setItem(RUNS_KEY, JSON.stringify(runs));
}

// -- tokens ----------------------------------------------------------------------------------

async function freshToken(url, token) {
  const response = await fetch(url, {
    method: "POST", headers: { Authorization: "Bearer " + token }, cache: "no-store",
  });
  if (!response.ok) throw new Error("token refresh: HTTP " + response.status);
  return response.json();
}

// Swaps the shown run's tokens for fresh ones once half their lifetime has passed.
async function renewTokens() {
  const shown = run;
  if (!shown || !shown.token_url || view.ended || Date.now() < shown.renew_at) return;
  let read, cancel;
  try {
    [read, cancel] = await Promise.all([freshToken(shown.token_url, shown.token),
                                        freshToken(shown.token_url, shown.cancel_token)]);
  } catch (_) {
    return; // expired already (the tab slept) or the server is away: the next tick tries
  }
  const withToken = (url, token) => url.split("?")[0] + "?token=" + encodeURIComponent(token);
  Object.assign(shown, {
    token: read.token, cancel_token: cancel.token,
    renew_at: Date.now() + read.expires_in * 500,
    stream_url: withToken(shown.stream_url, read.token),
    cancel_url: withToken(shown.cancel_url, cancel.token),
  });
  const runs = knownRuns();
  runs[shown.run_id] = shown;
  saveRuns(runs);
}

function newView(runId) {
  return { runId, text: "", seqs: [], lastId: "", reconnects: 0, attempt: 1, ended: null,
           message: "", notices: [] };
}

function loadView(runId) {
  try { return JSON.parse(sessionStorage.getItem(viewKey(runId))); } catch (_) { return null; }
}

function saveView() {
  sessionStorage.setItem(viewKey(view.runId), JSON.stringify(view));
}

// -- rendering -------------------------------------------------------------------------------

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text || state;
}

function render() {
  const output = $("output");
  output.textContent = view.text;
  if (view.seqs.length) output.dataset.seqs = view.seqs.join(",");
  else delete output.dataset.seqs;
  $("run-id").textContent = view.runId;
  $("last-id").textContent = view.lastId || "-";
  $("reconnects").textContent = String(view.reconnects);
  $("attempt").textContent = String(view.attempt);
  $("notices").replaceChildren(...view.notices.map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  renderProgress();
  const link = $("flower-link");
  link.hidden = !flowerUrl;
  $("no-flower").hidden = Boolean(flowerUrl);
  if (flowerUrl) link.href = flowerUrl + "/task/" + encodeURIComponent(view.runId);
}

function renderProgress() {
  const total = totals[view.runId];
  const bar = $("progress");
  if (view.ended === "done") bar.value = 1;
  else if (total) bar.value = Math.min(view.seqs.length / total, 1);
  else bar.removeAttribute("value");
}

function notice(text) {
  view.notices.push(text);
  render();
}

function logEvent(id, name, mark) {
  const item = document.createElement("li");
  if (mark) {
    item.className = "mark";
    item.textContent = "— " + mark + " —";
  } else {
    const idSpan = document.createElement("span");
    idSpan.className = "id";
    idSpan.textContent = id ? "#" + id : "(no id)";
    item.append(idSpan, name);
  }
  const log = $("events");
  log.append(item);
  while (log.children.length > MAX_LOG) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

// The text a chunk adds: the "text" field of a JSON chunk, or the data as it is.
function chunkText(data) {
  try {
    const value = JSON.parse(data);
    if (value && typeof value.text === "string") return value.text;
  } catch (_) { /* not JSON: plain text */ }
  return data;
}

// -- the event stream ------------------------------------------------------------------------

function took(event) {
  if (event.lastEventId) view.lastId = event.lastEventId;
  let preview = event.data === "[DONE]" ? "[DONE]" : chunkText(event.data);
  if (preview.length > 28) preview = preview.slice(0, 27) + "…";
  logEvent(event.lastEventId, event.type + "  " + JSON.stringify(preview));
}

function onMessage(event) {
  took(event);
  if (event.data === "[DONE]") return finish("done", "done");
  view.text += chunkText(event.data);
  view.seqs.push(Number(event.lastEventId));
  saveView();
  render();
}

function onRestarted(event) {
  took(event);
  const info = JSON.parse(event.data);
  view.attempt = info.attempt;
  if (info.resume === true) {
    notice("attempt " + info.attempt + " continues after chunk " + info.chunks);
  } else {
    view.text = "";
    view.seqs = [];
    notice("attempt " + info.attempt + " started over: the earlier output was dropped");
  }
  saveView();
  render();
}

// "error" is both the name of stored error events (a MessageEvent with data) and the
// event EventSource fires when its connection fails (no data).
function onError(event) {
  if (typeof event.data === "string") {
    took(event);
    let kind = "error";
    let message = event.data;
    try {
      const body = JSON.parse(event.data).error;
      kind = body.kind || "error";
      message = body.message;
    } catch (_) { /* keep the raw data */ }
    return finish(kind, kind + ": " + message);
  }
  if (!source || leaving) return;
  if (source.readyState === EventSource.CONNECTING) {
    setStatus("reconnecting", "connection lost, reconnecting...");
  } else if (source.readyState === EventSource.CLOSED && !view.ended) {
    // Refused (an expired token, a 503, a 204 for a cursor already at the end): not an
    // ending of the run, so nothing is saved. Open it again if the token is newer than the
    // one it was opened with (at most once per renewal: no loop on a refusal that stays);
    // else a reload tries again.
    const closed = source;
    renewTokens().then(() => {
      if (source !== closed || view.ended) return;
      if (run && run.token !== closed.token) return connect(true);
      $("drop").disabled = true;
      setStatus("closed", "the server closed the stream");
    });
  }
}

function connect(resuming) {
  let url = run.stream_url;
  if (view.lastId) url += "&last_event_id=" + encodeURIComponent(view.lastId);
  const opened = new EventSource(url);
  opened.token = run.token;
  source = opened;
  let reopening = resuming;
  opened.onopen = () => {
    if (reopening) {
      view.reconnects += 1;
      logEvent(null, null, "resumed after #" + (view.lastId || "0"));
      saveView();
      render();
    }
    reopening = true; // any later open is EventSource reconnecting by itself
    setStatus("streaming");
  };
  opened.onmessage = onMessage;
  opened.addEventListener("error", onError);
  opened.addEventListener("restarted", onRestarted);
  opened.addEventListener("cancelled", (event) => {
    took(event);
    let reason = "cancelled";
    try { reason = "cancelled: " + JSON.parse(event.data).cancelled.reason; } catch (_) { /**/ }
    finish("cancelled", reason);
  });
  opened.addEventListener("gap", (event) => {
    took(event);
    notice("gap: " + JSON.parse(event.data).gap.message);
  });
  $("drop").disabled = false;
  $("cancel").disabled = false;
}

function finish(state, text) {
  if (source) source.close(); // without this, EventSource would reconnect after the end
  view.ended = state;
  view.message = text;
  saveView();
  showEnded();
  refreshRuns();
}

function showEnded() {
  $("cancel").disabled = true;
  $("drop").disabled = true;
  $("start").disabled = false;
  setStatus(view.ended, view.message);
  document.body.dataset.finished = view.ended;
  render();
}

// -- actions ---------------------------------------------------------------------------------

function show(runId) {
  run = knownRuns()[runId] || null;
  if (source) source.close();
  source = null;
  delete document.body.dataset.finished;
  $("events").replaceChildren();
  const saved = loadView(runId);
  view = saved || newView(runId);
  history.replaceState(null, "", "?run=" + encodeURIComponent(runId));
  render();
  if (!run) {
    setStatus("closed", "this browser has no read token for that run");
    return;
  }
  if (view.ended) return showEnded();
  if (saved) logEvent(null, null, "page loaded: resuming after #" + (view.lastId || "0"));
  $("start").disabled = false;
  connect(Boolean(saved));
}

async function start() {
  $("start").disabled = true;
  setStatus("starting", "starting...");
  const post = () => fetch("/runs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ rate: Number($("rate").value) }),
  });
  let response = await post();
  if (response.status === 401) {
    // The page session (a cookie as long-lived as the tokens) expired: loading the page sets
    // a fresh one.
    await fetch("/", { cache: "no-store" });
    response = await post();
  }
  if (!response.ok) {
    $("start").disabled = false;
    return setStatus("error", "could not start a run: HTTP " + response.status);
  }
  const created = await response.json();
  rememberRun(created);
  sessionStorage.removeItem(viewKey(created.run_id));
  show(created.run_id);
  refreshRuns();
}

function drop() {
  if (!source || view.ended) return;
  source.close();
  source = null;
  $("drop").disabled = true;
  setStatus("dropped", "connection dropped; reconnecting in 1 s...");
  logEvent(null, null, "connection dropped after #" + (view.lastId || "0"));
  setTimeout(() => { if (!view.ended) connect(true); }, 1000);
}

async function cancel() {
  $("cancel").disabled = true;
  await fetch(run.cancel_url, { method: "POST" });
  // The run ends with a "cancelled" event on the stream, which closes it.
}

// -- the list of recent runs -----------------------------------------------------------------

async function refreshRuns() {
  let body;
  try {
    const response = await fetch("/runs?limit=12", { cache: "no-store" });
    if (!response.ok) return;
    body = await response.json();
  } catch (_) {
    return; // the next refresh tries again
  }
  flowerUrl = body.flower_url;
  const known = knownRuns();
  const rows = body.runs.map((item) => runRow(item, known));
  $("runs").tBodies[0].replaceChildren(...rows);
  if (view) render();
}

function runRow(item, known) {
  totals[item.run_id] = item.total;
  const row = document.createElement("tr");
  if (view && item.run_id === view.runId) row.className = "current";
  const name = document.createElement("td");
  const code = document.createElement("code");
  code.textContent = item.run_id.slice(0, 12);
  code.title = item.run_id;
  if (known[item.run_id]) {
    const link = document.createElement("a");
    link.href = "?run=" + encodeURIComponent(item.run_id);
    link.addEventListener("click", (event) => { event.preventDefault(); show(item.run_id); });
    link.append(code);
    name.append(link);
  } else {
    name.append(code);
  }
  const state = document.createElement("td");
  const pill = document.createElement("span");
  pill.className = "pill";
  const shown = item.terminal || (item.state === "idle" ? "idle-run" : item.state);
  pill.dataset.state = shown;
  pill.textContent = (item.terminal || item.state) + (item.attempt > 1 ? " (attempt " + item.attempt + ")" : "");
  state.append(pill);
  const progress = document.createElement("td");
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = item.terminal === "done" ? 1 : item.total ? Math.min(item.last_seq / (item.total + 1), 1) : 0;
  progress.append(bar, " " + item.last_seq + (item.total ? " / " + (item.total + 1) : ""));
  const links = document.createElement("td");
  if (flowerUrl) {
    const flower = document.createElement("a");
    flower.href = flowerUrl + "/task/" + encodeURIComponent(item.run_id);
    flower.target = "_blank";
    flower.rel = "noopener";
    flower.textContent = "Flower";
    links.append(flower);
  }
  row.append(name, state, progress, links);
  return row;
}

// -- start -----------------------------------------------------------------------------------

addEventListener("pagehide", () => { leaving = true; });
addEventListener("pageshow", () => { leaving = false; });
$("start").addEventListener("click", start);
$("cancel").addEventListener("click", cancel);
$("drop").addEventListener("click", drop);
const wanted = new URLSearchParams(location.search).get("run");
refreshRuns().then(() => { if (wanted && !view) show(wanted); });
setInterval(refreshRuns, 2000);
setInterval(renewTokens, 1000);
