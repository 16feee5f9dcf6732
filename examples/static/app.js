// Starts a run and renders it live. EventSource does the resuming: when the connection
// drops it reconnects by itself and sends the id of the last event it received
// (Last-Event-ID), and the server continues right after it.
"use strict";

const $ = (id) => document.getElementById(id);
let source = null;
let run = null;
let opens = 0;

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function notice(text) {
  const item = document.createElement("li");
  item.textContent = text;
  $("notices").appendChild(item);
}

// The text a chunk adds: the "text" field of a JSON chunk, or the data as it is.
function chunkText(data) {
  try {
    const value = JSON.parse(data);
    if (value && typeof value.text === "string") return value.text;
  } catch (_) { /* not JSON: plain text */ }
  return data;
}

function finish(state, text) {
  source.close(); // without this, EventSource would reconnect after the stream ends
  $("cancel").disabled = true;
  $("start").disabled = false;
  setStatus(state, text);
  document.body.dataset.finished = state;
}

function onMessage(event) {
  $("last-id").textContent = event.lastEventId;
  if (event.data === "[DONE]") return finish("done", "done");
  const output = $("output");
  output.dataset.seqs = (output.dataset.seqs ? output.dataset.seqs + "," : "") + event.lastEventId;
  output.textContent += chunkText(event.data);
}

// "error" is both the name of stored error events (a MessageEvent with data) and the
// event EventSource fires when its connection fails (no data).
function onError(event) {
  if (typeof event.data === "string") {
    let message = event.data;
    try { message = JSON.parse(event.data).error.message; } catch (_) { /* keep the raw data */ }
    return finish("error", "error: " + message);
  }
  if (source.readyState === EventSource.CONNECTING) {
    setStatus("reconnecting", "connection lost, reconnecting...");
  } else if (source.readyState === EventSource.CLOSED && !document.body.dataset.finished) {
    finish("closed", "the server closed the stream");
  }
}

function onOpen() {
  opens += 1;
  if (opens > 1) {
    $("reconnects").textContent = String(opens - 1);
    notice("reconnected, resuming after event " + ($("last-id").textContent || "0"));
  }
  setStatus("streaming", "streaming");
}

function follow(streamUrl) {
  source = new EventSource(streamUrl);
  source.onopen = onOpen;
  source.onmessage = onMessage;
  source.addEventListener("error", onError);
  source.addEventListener("cancelled", () => finish("cancelled", "cancelled"));
  source.addEventListener("gap", (event) => notice("gap: " + JSON.parse(event.data).gap.message));
  source.addEventListener("restarted", (event) =>
    notice("the task restarted (attempt " + JSON.parse(event.data).attempt + ")"));
}

async function start() {
  $("start").disabled = true;
  $("output").textContent = "";
  delete $("output").dataset.seqs;
  delete document.body.dataset.finished;
  $("notices").textContent = "";
  $("reconnects").textContent = "0";
  opens = 0;
  setStatus("starting", "starting...");
  const response = await fetch("/runs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({}),
  });
  if (!response.ok) {
    $("start").disabled = false;
    return setStatus("error", "could not start a run: HTTP " + response.status);
  }
  run = await response.json();
  $("run-id").textContent = run.run_id;
  $("cancel").disabled = false;
  follow(run.stream_url);
}

async function cancel() {
  $("cancel").disabled = true;
  await fetch(run.cancel_url, { method: "POST" });
  // The run ends with a "cancelled" event on the stream, which closes it.
}

$("start").addEventListener("click", start);
$("cancel").addEventListener("click", cancel);
