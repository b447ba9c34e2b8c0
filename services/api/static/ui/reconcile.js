// The reconcile panel: the latest runs (newest first) with what each did, and "Run now".
// Each run is a <details> keyed by its id and kept across refreshes, so an opened one stays open;
// its body is rebuilt only when the run's record changed (a run still going, then finished).
"use strict";

import {
  age,
  api,
  byId,
  clockTime,
  duration,
  el,
  instancePath,
  localTime,
  poll,
  setText,
} from "./common.js";

const RUNS_REFRESH_MS = 5000;
const RUNS_SHOWN = 10;

const runs = new Map(); // run id → { details, summary, body, signature }
let runsPoll = null;

function counted(counts) {
  return Object.entries(counts || {}).filter(([, n]) => n > 0);
}

function summaryParts(run) {
  const started = el("time", { datetime: run.started_at, title: localTime(run.started_at) });
  started.textContent = `${age(run.started_at)} ago`;
  const parts = [started, el("span", { className: "tag", text: run.trigger || "run" })];
  if (run.dry_run) parts.push(el("span", { className: "tag tag-dry", text: "dry run" }));
  if (run.finished_at) {
    const secs = (new Date(run.finished_at) - new Date(run.started_at)) / 1000;
    parts.push(el("span", { className: "muted small", text: secs < 1 ? "< 1 s" : duration(secs) }));
  } else {
    parts.push(el("span", { className: "tag tag-running", text: "running" }));
  }
  const kinds = counted(run.counts);
  if (kinds.length === 0 && run.finished_at && !(run.errors || []).length) {
    parts.push(el("span", { className: "muted", text: "nothing to do" }));
  }
  for (const [kind, n] of kinds) {
    parts.push(el("span", { className: "chip", text: `${kind.replace("_", " ")} ${n}` }));
  }
  if ((run.errors || []).length) {
    const text = `${run.errors.length} error(s)`;
    parts.push(el("span", { className: "chip chip-error", text }));
  }
  return parts;
}

function errorText(error) {
  if (error && typeof error === "object") {
    return Object.entries(error).map(([key, value]) => `${key}: ${value}`).join(" · ");
  }
  return String(error);
}

function bodyParts(run) {
  const parts = [];
  const actions = run.actions || [];
  if (actions.length) {
    const rowsOut = actions.map((action) => {
      const name = action.vm_name || action.instance_id || action.vm_id || "—";
      const target = action.tenant && action.instance_id
        ? el("a", { href: instancePath(action.tenant, action.instance_id), text: name })
        : document.createTextNode(name);
      return el(
        "tr",
        {},
        el("td", { text: (action.kind || "").replace("_", " ") }),
        el("td", { className: "mono" }, target),
        el("td", { text: action.detail || "" }),
        el("td", { text: action.result || "" }),
      );
    });
    const head = ["Action", "VM", "Detail", "Result"].map((text) => el("th", { scope: "col", text }));
    parts.push(
      el(
        "table",
        { className: "grid compact" },
        el("thead", {}, el("tr", {}, ...head)),
        el("tbody", {}, ...rowsOut),
      ),
    );
  } else if (run.finished_at) {
    const text = "No action: the cloud and the registry agreed.";
    parts.push(el("p", { className: "muted small", text }));
  }
  const errors = run.errors || [];
  if (errors.length) {
    const items = errors.map((error) => el("li", { text: errorText(error) }));
    parts.push(el("ul", { className: "errors" }, ...items));
  }
  const footer = `Run ${run.id} · started ${localTime(run.started_at)}`;
  parts.push(el("p", { className: "muted small", text: footer }));
  return parts;
}

function render(items) {
  const container = byId("reconcile-runs");
  const shown = items.slice(0, RUNS_SHOWN);
  const seen = new Set();
  let previous = null;
  for (const run of shown) {
    let entry = runs.get(run.id);
    if (!entry) {
      const summary = el("summary");
      const body = el("div", { className: "run-body" });
      const details = el("details", { className: "run" }, summary, body);
      entry = { details, summary, body, signature: "" };
      runs.set(run.id, entry);
    }
    // The summary's ages move on every refresh; the body only when the record changes.
    entry.summary.replaceChildren(...summaryParts(run));
    const signature = JSON.stringify(run);
    if (signature !== entry.signature) {
      entry.body.replaceChildren(...bodyParts(run));
      entry.signature = signature;
    }
    seen.add(run.id);
    const expected = previous ? previous.nextSibling : container.firstChild;
    if (expected !== entry.details) container.insertBefore(entry.details, expected);
    previous = entry.details;
  }
  for (const [id, entry] of runs) {
    if (!seen.has(id)) {
      entry.details.remove();
      runs.delete(id);
    }
  }
  const empty = byId("reconcile-empty");
  empty.hidden = shown.length > 0;
  setText(empty, "No reconcile run yet.");
}

async function refresh() {
  try {
    render((await api("GET", "/reconcile/runs")).items);
  } catch (err) {
    const empty = byId("reconcile-empty");
    empty.hidden = false;
    setText(empty, `Reconcile runs cannot be read: ${err.message}`);
  }
}

async function runNow() {
  const button = byId("reconcile-run");
  const message = byId("reconcile-message");
  button.disabled = true;
  try {
    const dryRun = byId("reconcile-dry-run").checked;
    await api("POST", "/reconcile", { body: { dry_run: dryRun } });
    message.dataset.state = "ok";
    const what = dryRun ? "A dry run" : "A run";
    setText(message, `${what} was queued at ${clockTime()}; it shows below when it starts.`);
  } catch (err) {
    message.dataset.state = "error";
    setText(message, `Not queued: ${err.message}`);
  } finally {
    button.disabled = false;
  }
  runsPoll.now();
  setTimeout(runsPoll.now, 1500);
}

export function watchReconcile() {
  byId("reconcile-run").addEventListener("click", runNow);
  runsPoll = poll(refresh, RUNS_REFRESH_MS);
}
