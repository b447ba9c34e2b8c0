// The page of one VM: identity, how to reach it, the live guest view, Heal, and the timeline.
// Refreshed in place every few seconds; a heal report stays on screen until the next heal.
"use strict";

import {
  age,
  api,
  badge,
  byId,
  canTearDown,
  clockTime,
  confirmTeardown,
  copyText,
  duration,
  el,
  localTime,
  poll,
  setAttr,
  setText,
  tearDown,
  updateBadge,
  watchHealth,
} from "./common.js";

const REFRESH_MS = 3000;
const REPORT_DEPTH = 4;
// The statuses heal answers in, given an address (the gateway's rule, shared/domain/lifecycle.py).
const HEALABLE = new Set(["initializing", "ready", "failed", "lost"]);
const canHeal = (instance) =>
  Boolean(instance && instance.address && HEALABLE.has(instance.status));

const page = byId("instance-page");
const tenant = page.dataset.tenant;
const instanceId = page.dataset.instanceId;
const apiPath = `/instances/${encodeURIComponent(tenant)}/${encodeURIComponent(instanceId)}`;
const titleBadge = badge("pending");
const factBadge = badge("pending");
let current = null; // the latest instance record
let timelineSignature = "";
let forgesSignature = null;
let pagePoll = null;

// --- identity ----------------------------------------------------------------------------------

function renderIdentity(instance) {
  document.title = `${instance.vm_name} · dark-orchestrator`;
  setText(byId("title-vm"), instance.vm_name);
  if (!titleBadge.isConnected) byId("title-status").append(titleBadge);
  if (!factBadge.isConnected) byId("f-status").append(factBadge);
  updateBadge(titleBadge, instance.status);
  updateBadge(factBadge, instance.status);
  for (const name of ["tenant", "id", "vm_name", "provider_id", "address"]) {
    setText(byId(`f-${name}`), instance[name] || "—");
  }
  setText(byId("f-reason"), instance.reason || "—");
  for (const name of ["created_at", "updated_at"]) {
    setText(byId(`f-${name}`), `${localTime(instance[name])} (${age(instance[name])} ago)`);
  }
  byId("teardown").hidden = !canTearDown(instance.status);
  byId("heal").disabled = !canHeal(instance);
  setAttr(byId("heal"), "title", canHeal(instance) ? null : "Heal needs a VM with an address");
}

// --- entry points ------------------------------------------------------------------------------

function renderEntryPoints(detail) {
  const { instance, entry_points: entry } = detail;
  const none = byId("connect-none");
  byId("connect").hidden = !entry;
  none.hidden = Boolean(entry);
  if (entry) {
    const opencode = byId("e-opencode");
    setAttr(opencode, "href", entry.opencode_url);
    setText(opencode, `${entry.opencode_url} ↗`);
    const agent = byId("e-agent");
    setAttr(agent, "href", entry.agent_url);
    setText(agent, entry.agent_url);
    setText(byId("e-ssh"), `ssh -i ~/.ssh/<your key> dark@${instance.address}`);
  } else if (instance.status === "retired") {
    setText(none, "The VM is gone. Its old address may belong to another VM by now.");
  } else {
    setText(none, "No way in yet: the VM has no address.");
  }
  byId("pubkey-block").hidden = !detail.ssh_pubkey;
  setText(byId("e-pubkey"), detail.ssh_pubkey || "");
  renderForges(detail.forges || []);
}

// What init reported per forge: whether dark-agent registered the VM's key with it.
function renderForges(forges) {
  const signature = JSON.stringify(forges);
  if (signature === forgesSignature) return;
  forgesSignature = signature;
  byId("forges").hidden = forges.length === 0;
  byId("forges-none").hidden = forges.length > 0;
  const rowsOut = forges.map((forge) =>
    el(
      "tr",
      {},
      el("td", { text: forge.name }),
      el("td", { className: "mono", text: forge.host || "—" }),
      el("td", {
        className: forge.registered ? "good" : "warn",
        text: forge.registered ? "registered" : "not registered",
      }),
    ),
  );
  byId("forges").tBodies[0].replaceChildren(...rowsOut);
}

// --- the guest ---------------------------------------------------------------------------------

function renderGuest(detail) {
  const { guest, instance } = detail;
  const banner = byId("guest-banner");
  const facts = byId("guest-facts");
  const healthy = guest.reachable && guest.health;
  facts.hidden = !healthy;
  banner.hidden = Boolean(healthy);
  if (healthy) {
    const status = byId("g-status");
    setText(status, guest.health.status);
    status.className = guest.health.status === "ok" ? "good" : "warn";
    setText(byId("g-version"), guest.health.version || "unknown");
    const uptime = guest.health.uptime_secs;
    const known = uptime !== null && uptime !== undefined;
    setText(byId("g-uptime"), known ? duration(uptime) : "unknown");
    return;
  }
  let text;
  let state = "error";
  if (!instance.address) {
    state = "neutral";
    text = instance.status === "retired"
      ? "The VM is gone."
      : "No guest to ask yet: the VM has no address.";
  } else if (guest.reachable) {
    state = "warn";
    text = `The guest answers, but not healthy: ${guest.error}`;
  } else {
    text = `Unreachable: ${guest.error}`;
  }
  banner.dataset.state = state;
  setText(banner, text);
}

// A report of unknown shape, as nested lists of text (never as HTML).
function reportTree(value, depth = 0) {
  if (value === null || value === undefined) return el("span", { className: "muted", text: "—" });
  if (typeof value !== "object" || depth >= REPORT_DEPTH) {
    const text = typeof value === "object" ? JSON.stringify(value) : String(value);
    const good = ["ok", "healthy", "true"].includes(text);
    return el("span", { className: good ? "good" : "", text });
  }
  const list = Array.isArray(value);
  const entries = list ? value.map((v, i) => [String(i + 1), v]) : Object.entries(value);
  if (entries.length === 0) return el("span", { className: "muted", text: list ? "none" : "—" });
  return el(
    "dl",
    { className: "facts report" },
    ...entries.flatMap(([key, v]) => [
      el("dt", { text: key }),
      el("dd", {}, reportTree(v, depth + 1)),
    ]),
  );
}

async function heal() {
  const button = byId("heal");
  const result = byId("heal-result");
  const error = byId("heal-error");
  button.disabled = true;
  setText(button, "Healing…");
  try {
    const report = await api("POST", `${apiPath}/heal`);
    error.hidden = !report.error;
    const failure = report.reachable ? "Heal failed" : "Unreachable";
    setText(error, report.error ? `${failure}: ${report.error}` : "");
    byId("heal-report").replaceChildren(report.heal ? reportTree(report.heal) : "");
  } catch (err) {
    error.hidden = false;
    setText(error, `Heal refused: ${err.message}`);
    byId("heal-report").replaceChildren();
  } finally {
    result.hidden = false;
    setText(byId("heal-when"), `at ${clockTime()}`);
    setText(button, "Heal");
    button.disabled = !canHeal(current);
  }
}

// --- timeline ----------------------------------------------------------------------------------

function renderTimeline(events) {
  const signature = JSON.stringify(events);
  if (signature === timelineSignature) return;
  timelineSignature = signature;
  let previousAt = null;
  const items = events.map((event) => {
    const at = new Date(event.at);
    const secs = previousAt === null ? null : (at - previousAt) / 1000;
    const step = secs === null ? "" : `+${secs < 10 ? `${secs.toFixed(1)} s` : duration(secs)}`;
    previousAt = at;
    return el(
      "li",
      { "data-to": event.to },
      el("time", { datetime: event.at, title: localTime(event.at), text: at.toLocaleString() }),
      el("span", { className: "step muted small", text: step }),
      el("span", { className: "change" }, ...change(event)),
      el("span", { className: "why", text: event.reason || "" }),
    );
  });
  byId("timeline").replaceChildren(...items);
}

// created: the first status; a move: from → to; a note (from = to): an action with no move.
function change(event) {
  if (!event.from) return [badge(event.to)];
  if (event.from === event.to) return [el("span", { className: "tag", text: "note" })];
  return [badge(event.from), el("span", { className: "arrow", text: "→" }), badge(event.to)];
}

// --- refresh -----------------------------------------------------------------------------------

async function refresh() {
  const updated = byId("page-updated");
  const pageError = byId("page-error");
  try {
    const [detail, events] = await Promise.all([
      api("GET", apiPath),
      api("GET", `${apiPath}/events`),
    ]);
    current = detail.instance;
    pageError.hidden = true;
    renderIdentity(detail.instance);
    renderEntryPoints(detail);
    renderGuest(detail);
    renderTimeline(events.items);
    updated.dataset.state = "ok";
    setText(updated, `Live · updated ${clockTime()}`);
  } catch (err) {
    updated.dataset.state = "error";
    if (err.status === 404) {
      setText(updated, "");
      pageError.hidden = false;
      setText(pageError, `No instance ${instanceId} for tenant ${tenant}.`);
    } else {
      setText(updated, `Not updating (${err.message}); retrying…`);
    }
  }
}

async function onTearDown() {
  if (!current) return;
  const mode = await confirmTeardown(current);
  if (!mode) return;
  const pageError = byId("page-error");
  try {
    await tearDown(current, mode);
  } catch (err) {
    pageError.hidden = false;
    setText(pageError, `Teardown refused: ${err.message}`);
  }
  pagePoll.now();
}

for (const button of document.querySelectorAll("button.copy")) {
  button.addEventListener("click", async () => {
    const source = byId(button.dataset.copy);
    try {
      await copyText(source.textContent, source);
      setText(button, "Copied");
    } catch {
      setText(button, "Select and copy");
    }
    setTimeout(() => setText(button, "Copy"), 1500);
  });
}
byId("heal").addEventListener("click", heal);
byId("teardown").addEventListener("click", onTearDown);
watchHealth();
pagePoll = poll(refresh, REFRESH_MS);
