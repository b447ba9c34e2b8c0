// What both dashboard pages share: calls to the gateway's JSON API with the session (and its CSRF
// token on state-changing calls), DOM building from text only, time formatting, status badges,
// the health indicator, polling and the teardown dialog. Nothing from the server is ever parsed
// as HTML: text goes in with textContent, attributes with setAttribute.
"use strict";

const csrfMeta = document.querySelector('meta[name="csrf-token"]');
const CSRF_TOKEN = csrfMeta ? csrfMeta.content : "";
const CSRF_HEADER = csrfMeta ? csrfMeta.dataset.header : "X-CSRF-Token";
const SAFE_METHODS = new Set(["GET", "HEAD"]);

export class ApiFailure extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

// Calls the API; resolves to the parsed body, or rejects with an ApiFailure carrying the error
// shape's code and message (status 0 when the gateway cannot be reached at all). A 401 means the
// session ended: back to sign-in, returning here afterwards.
export async function api(method, path, { body, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, cache: "no-store" };
  init.credentials = "same-origin";
  if (!SAFE_METHODS.has(method)) init.headers[CSRF_HEADER] = CSRF_TOKEN;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiFailure(0, "unreachable", "the gateway cannot be reached");
  }
  const data = await response.json().catch(() => null);
  if (response.status === 401) {
    const next = window.location.pathname + window.location.search;
    window.location.assign(`/ui/?next=${encodeURIComponent(next)}`);
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiFailure(
      response.status,
      error.code || "http_" + response.status,
      error.message || response.statusText,
      error.details,
    );
  }
  return data;
}

export const byId = (id) => document.getElementById(id);

// <tag> with attributes and children; strings become text nodes.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

// Sets text only when it changed: no flicker, no lost text selection on an unchanged cell.
export function setText(node, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

export function setAttr(node, name, value) {
  if (value === null || value === undefined) {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else if (node.getAttribute(name) !== String(value)) {
    node.setAttribute(name, String(value));
  }
}

// --- time --------------------------------------------------------------------------------------

const localFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  timeZoneName: "short",
});

export function localTime(iso) {
  return iso ? localFormat.format(new Date(iso)) : "";
}

export function clockTime(date = new Date()) {
  const options = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  return date.toLocaleTimeString(undefined, options);
}

export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function age(iso) {
  return iso ? duration((Date.now() - new Date(iso).getTime()) / 1000) : "";
}

// --- statuses ----------------------------------------------------------------------------------

export function statusLabel(status) {
  return String(status || "").replace("_", " ");
}

export function badge(status) {
  const node = el("span", { className: "badge" });
  updateBadge(node, status);
  return node;
}

export function updateBadge(node, status) {
  setText(node, statusLabel(status));
  const className = `badge badge-${status}`;
  if (node.className !== className) node.className = className;
}

// Teardown is allowed from every status but retired (and is already under way in tearing_down).
export const canTearDown = (status) => status !== "retired" && status !== "tearing_down";

// --- polling -----------------------------------------------------------------------------------

// Runs `task` now and then every `ms` after the previous run finished (never two at once), and
// not while the tab is hidden; `poll.now()` runs it again at once (or right after the current
// run, if one is under way: its answer may predate what the caller just changed).
export function poll(task, ms) {
  let timer = null;
  let running = false;
  let again = false;
  const run = async () => {
    clearTimeout(timer);
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      if (!document.hidden) await task();
    } finally {
      running = false;
      timer = setTimeout(run, again ? 0 : ms);
      again = false;
    }
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) run();
  });
  run();
  return { now: run };
}

// The header's dot: /ready's verdict on Postgres and Redis, or that the gateway is unreachable.
export function watchHealth() {
  const node = byId("health");
  if (!node) return;
  const text = node.querySelector(".health-text");
  poll(async () => {
    let state = "ok";
    let label = "Healthy";
    let detail = "Postgres and Redis reachable";
    try {
      await api("GET", "/ready");
    } catch (err) {
      state = "down";
      if (err.status === 503) {
        const down = Object.keys(err.details).filter((name) => err.details[name] !== "ok");
        label = down.length ? `${down.join(", ")} down` : "Not ready";
        detail = err.message;
      } else {
        label = "Gateway unreachable";
        detail = err.message;
      }
    }
    node.dataset.state = state;
    setText(text, label);
    setAttr(node, "title", `Gateway dependencies (/ready): ${detail}`);
  }, 10000);
}

// --- teardown ----------------------------------------------------------------------------------

// Asks for confirmation and the mode; resolves to "keep", "retire", or null when cancelled.
export function confirmTeardown(instance) {
  const dialog = byId("teardown-dialog");
  setText(dialog.querySelector('[data-slot="vm"]'), instance.vm_name);
  setText(dialog.querySelector('[data-slot="tenant"]'), instance.tenant);
  setText(dialog.querySelector('[data-slot="status"]'), statusLabel(instance.status));
  dialog.querySelector('input[value="keep"]').checked = true;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const mode = dialog.querySelector('input[name="mode"]:checked').value;
        resolve(dialog.returnValue === "confirm" ? mode : null);
      },
      { once: true },
    );
  });
}

export function tearDown(instance, mode) {
  const path = `/instances/${encodeURIComponent(instance.tenant)}/${instance.id}`;
  return api("DELETE", `${path}?mode=${encodeURIComponent(mode)}`);
}

// --- clipboard ---------------------------------------------------------------------------------

// The Clipboard API needs a secure context (https or localhost); elsewhere, select and copy.
export async function copyText(text, sourceNode) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const range = document.createRange();
  range.selectNodeContents(sourceNode);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  document.execCommand("copy");
}

export function instancePath(tenant, id) {
  return `/ui/instances/${encodeURIComponent(tenant)}/${encodeURIComponent(id)}`;
}
