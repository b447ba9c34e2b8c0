// The fleet dashboard: the instance table (filtered, refreshed in place every few seconds and on
// Refresh), the provision form, teardown per row, and the tenants panel. The reconcile panel is
// reconcile.js.
//
// Refreshing never rebuilds what the user may be looking at or holding: rows are keyed by id and
// only their changed cells are rewritten, so scroll position, focus, an open dialog, an open
// <select> and a text selection all survive. Filters live in the URL (reload and bookmarks keep
// them); "hide retired" is also remembered in this browser.
"use strict";

import {
  age,
  api,
  badge,
  byId,
  canTearDown,
  clockTime,
  confirmTeardown,
  el,
  instancePath,
  localTime,
  poll,
  setAttr,
  setText,
  statusLabel,
  tearDown,
  updateBadge,
  watchHealth,
} from "./common.js";
import { watchReconcile } from "./reconcile.js";

const FLEET_REFRESH_MS = 3000;
const TENANTS_REFRESH_MS = 5000;
const PAGE_SIZE = 200;
const HIDE_RETIRED_KEY = "dark.hideRetired";

const fleetBody = byId("fleet").tBodies[0];
const rows = new Map(); // instance id → { tr, cells, instance }
const knownTenants = new Set();
let fleetGeneration = 0; // answers to an older filter setting are dropped
let fleetPoll = null;
let tenantsPoll = null;

// --- filters -----------------------------------------------------------------------------------

const filters = (() => {
  const params = new URLSearchParams(window.location.search);
  const remembered = window.localStorage.getItem(HIDE_RETIRED_KEY) === "1";
  return {
    tenant: params.get("tenant") || "",
    status: params.get("status") || "",
    hideRetired: params.has("hide_retired") ? params.get("hide_retired") === "1" : remembered,
  };
})();

function showFilters() {
  ensureOption(byId("filter-tenant"), filters.tenant);
  byId("filter-tenant").value = filters.tenant;
  byId("filter-status").value = filters.status;
  byId("filter-hide-retired").checked = filters.hideRetired;
}

function applyFilters() {
  const params = new URLSearchParams();
  if (filters.tenant) params.set("tenant", filters.tenant);
  if (filters.status) params.set("status", filters.status);
  if (filters.hideRetired) params.set("hide_retired", "1");
  const query = params.toString();
  window.history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
  window.localStorage.setItem(HIDE_RETIRED_KEY, filters.hideRetired ? "1" : "0");
  fleetGeneration += 1;
  fleetPoll.now();
}

function filterByTenant(tenant) {
  filters.tenant = tenant;
  showFilters();
  applyFilters();
  byId("fleet").scrollIntoView({ behavior: "smooth", block: "start" });
}

function ensureOption(select, value) {
  if (value && !Array.from(select.options).some((option) => option.value === value)) {
    select.append(el("option", { value, text: value }));
  }
}

// --- the fleet table ---------------------------------------------------------------------------

function newRow(instance) {
  const link = el("a", { href: instancePath(instance.tenant, instance.id) });
  const cells = {
    tenant: el("td"),
    vm: el("td", { className: "mono" }, link),
    status: el("td", {}, badge(instance.status)),
    address: el("td", { className: "mono" }),
    age: el("td", { className: "nowrap" }),
    reason: el("td", { className: "reason" }),
    actions: el("td", { className: "actions" }),
  };
  const button = el("button", {
    type: "button",
    className: "danger-outline small",
    text: "Tear down…",
  });
  button.addEventListener("click", () => onTearDown(rows.get(instance.id).instance));
  cells.actions.append(button);
  const tr = el("tr", { "data-id": instance.id });
  tr.append(...Object.values(cells));
  return { tr, cells, button, instance };
}

function updateRow(row, instance, highlight) {
  const changed = row.instance.status !== instance.status;
  row.instance = instance;
  const { cells } = row;
  setText(cells.tenant, instance.tenant);
  setText(cells.vm.firstChild, instance.vm_name);
  updateBadge(cells.status.firstChild, instance.status);
  setText(cells.address, instance.address || "—");
  setText(cells.age, age(instance.created_at));
  setAttr(cells.age, "title", `Created ${localTime(instance.created_at)}`);
  setText(cells.reason, instance.reason || "");
  setAttr(cells.reason, "title", instance.reason || null);
  row.button.hidden = !canTearDown(instance.status);
  row.tr.dataset.status = instance.status;
  if (changed && highlight) {
    row.tr.classList.remove("changed");
    void row.tr.offsetWidth; // restart the animation
    row.tr.classList.add("changed");
  }
}

function renderFleet(page) {
  const items = page.items.filter((i) => !(filters.hideRetired && i.status === "retired"));
  const seen = new Set();
  let previous = null;
  for (const instance of items) {
    knownTenants.add(instance.tenant);
    let row = rows.get(instance.id);
    if (row) {
      updateRow(row, instance, true);
    } else {
      row = newRow(instance);
      rows.set(instance.id, row);
      updateRow(row, instance, false);
    }
    seen.add(instance.id);
    // Move a row only when it is out of place: moving a node takes the focus out of it.
    const expected = previous ? previous.nextSibling : fleetBody.firstChild;
    if (expected !== row.tr) fleetBody.insertBefore(row.tr, expected);
    previous = row.tr;
  }
  for (const [id, row] of rows) {
    if (!seen.has(id)) {
      row.tr.remove();
      rows.delete(id);
    }
  }
  const empty = byId("fleet-empty");
  empty.hidden = items.length > 0;
  const filtered = filters.tenant || filters.status || filters.hideRetired;
  setText(
    empty,
    filtered ? "No instance matches these filters." : "No instances yet: provision one above.",
  );
  const more = byId("fleet-more");
  more.hidden = !page.next_cursor;
  setText(more, `Showing the newest ${PAGE_SIZE}; narrow the filters to see older instances.`);
  setText(byId("fleet-summary"), summary(page.items));
  refreshTenantFilter();
}

function summary(items) {
  const counts = new Map();
  for (const item of items) counts.set(item.status, (counts.get(item.status) || 0) + 1);
  return Array.from(counts, ([status, n]) => `${n} ${statusLabel(status)}`).join(" · ");
}

async function refreshFleet() {
  const generation = fleetGeneration;
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (filters.tenant) params.set("tenant", filters.tenant);
  if (filters.status) params.set("status", filters.status);
  const updated = byId("fleet-updated");
  try {
    const page = await api("GET", `/instances?${params}`);
    if (generation !== fleetGeneration) return;
    renderFleet(page);
    updated.dataset.state = "ok";
    setText(updated, `Live · updated ${clockTime()}`);
  } catch (err) {
    updated.dataset.state = "error";
    setText(updated, `Not updating (${err.message}); retrying…`);
  }
}

async function onTearDown(instance) {
  const mode = await confirmTeardown(instance);
  if (!mode) return;
  const message = byId("fleet-message");
  try {
    await tearDown(instance, mode);
    showMessage(message, `Tearing down ${instance.vm_name} (${mode} the bundle).`, "ok");
  } catch (err) {
    showMessage(message, `Teardown of ${instance.vm_name} refused: ${err.message}`, "error");
  }
  fleetPoll.now();
  tenantsPoll.now();
}

function showMessage(node, text, state, ...extra) {
  node.replaceChildren(text, ...extra);
  node.dataset.state = state;
}

// --- provisioning ------------------------------------------------------------------------------

function idempotencyKey() {
  // crypto.randomUUID needs a secure context; getRandomValues does not.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function onProvision(event) {
  event.preventDefault();
  const select = byId("provision-tenant");
  const submit = byId("provision-submit");
  const message = byId("provision-message");
  const tenant = select.value;
  if (!tenant) return;
  submit.disabled = true;
  showMessage(message, `Provisioning for ${tenant}…`, "busy");
  try {
    // One key per click: a retried or doubled request is the same provision, not a second VM.
    const { instance } = await api("POST", "/instances", {
      body: { tenant },
      headers: { "Idempotency-Key": idempotencyKey() },
    });
    const href = instancePath(instance.tenant, instance.id);
    const link = el("a", { href, text: instance.vm_name });
    showMessage(message, `Requested at ${clockTime()} for ${tenant}: `, "ok", link);
  } catch (err) {
    showMessage(message, `Not provisioned: ${err.message}`, "error");
  } finally {
    submit.disabled = select.options.length === 0 || !select.value;
  }
  fleetPoll.now();
  tenantsPoll.now();
}

// --- tenants -----------------------------------------------------------------------------------

const tenantRows = new Map(); // name → { tr, cells }

// Options are replaced only when they changed, so an open drop-down stays open.
function fillSelect(select, values, placeholder) {
  const wanted = values.map((value) => [value, value]);
  if (placeholder) wanted.unshift(["", placeholder]);
  const current = Array.from(select.options, (option) => [option.value, option.text]);
  if (JSON.stringify(current) === JSON.stringify(wanted)) return;
  const chosen = select.value;
  select.replaceChildren(...wanted.map(([value, text]) => el("option", { value, text })));
  if (wanted.some(([value]) => value === chosen)) select.value = chosen;
}

function refreshTenantFilter() {
  const select = byId("filter-tenant");
  const names = Array.from(knownTenants).sort();
  if (filters.tenant && !knownTenants.has(filters.tenant)) names.push(filters.tenant);
  fillSelect(select, names, "All tenants");
  select.value = filters.tenant;
}

function renderTenants(items) {
  const onboarded = items.filter((t) => t.onboarded).map((t) => t.name).sort();
  const select = byId("provision-tenant");
  if (onboarded.length) {
    fillSelect(select, onboarded, null);
    select.disabled = false;
  } else {
    fillSelect(select, [], "No onboarded tenant yet");
    select.disabled = true;
  }
  byId("provision-submit").disabled = !onboarded.length;

  const body = byId("tenants").tBodies[0];
  const seen = new Set();
  let previous = null;
  for (const tenant of [...items].sort((a, b) => a.name.localeCompare(b.name))) {
    knownTenants.add(tenant.name);
    let row = tenantRows.get(tenant.name);
    if (!row) {
      const filterButton = el("button", { type: "button", className: "link", text: tenant.name });
      filterButton.title = "Show this tenant's instances";
      filterButton.addEventListener("click", () => filterByTenant(tenant.name));
      const cells = {
        name: el("td", {}, filterButton),
        state: el("td"),
        secrets: el("td"),
        invite: el("td"),
        live: el("td", { className: "num" }),
      };
      row = { tr: el("tr"), cells };
      row.tr.append(...Object.values(cells));
      tenantRows.set(tenant.name, row);
    }
    const { cells } = row;
    const { onboarded_at: onboardedAt, updated_at: updatedAt, secrets_version: version } = tenant;
    setText(cells.state, tenant.onboarded ? `onboarded ${age(onboardedAt)} ago` : "not onboarded");
    setAttr(cells.state, "title", onboardedAt ? `Onboarded ${localTime(onboardedAt)}` : null);
    cells.state.className = tenant.onboarded ? "" : "muted";
    setText(cells.secrets, version ? `v${version} · ${age(updatedAt)} ago` : "—");
    setAttr(cells.secrets, "title", updatedAt ? `Updated ${localTime(updatedAt)}` : null);
    setText(cells.invite, inviteLabel(tenant.invite));
    setAttr(cells.invite, "title", inviteTitle(tenant.invite));
    cells.invite.className = tenant.invite.state === "pending" ? "" : "muted";
    setText(cells.live, tenant.live_instances);
    seen.add(tenant.name);
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (expected !== row.tr) body.insertBefore(row.tr, expected);
    previous = row.tr;
  }
  for (const [name, row] of tenantRows) {
    if (!seen.has(name)) {
      row.tr.remove();
      tenantRows.delete(name);
    }
  }
  const empty = byId("tenants-empty");
  empty.hidden = items.length > 0;
  setText(
    empty,
    "No tenant yet. Invite one: the tenant hands over its secrets on the onboarding page.",
  );
}

// --- invites -----------------------------------------------------------------------------------

function inviteLabel(invite) {
  if (invite.state === "pending") return `pending until ${localTime(invite.expires_at)}`;
  if (invite.state === "used") return `used ${age(invite.used_at)} ago`;
  if (invite.state === "expired") return "expired";
  return "none";
}

function inviteTitle(invite) {
  if (invite.state === "used") {
    return `Used ${localTime(invite.used_at)}; works until ${localTime(invite.expires_at)}`;
  }
  if (invite.state === "expired") return `Expired ${localTime(invite.expires_at)}`;
  return null;
}

// The link is shown once: it is in this page's DOM until the next invite, and nowhere else.
async function onInvite(event) {
  event.preventDefault();
  const input = byId("invite-tenant");
  const message = byId("invite-message");
  const tenant = input.value.trim();
  if (!tenant) {
    showMessage(message, "Enter the tenant's name.", "error");
    return;
  }
  byId("invite-result").hidden = true;
  byId("invite-url").value = "";
  byId("invite-submit").disabled = true;
  showMessage(message, `Inviting ${tenant}…`, "busy");
  try {
    const issued = await api("POST", `/tenants/${encodeURIComponent(tenant)}/invites`);
    byId("invite-url").value = issued.url;
    setText(byId("invite-expires"), localTime(issued.expires_at));
    byId("invite-result").hidden = false;
    showMessage(message, `Invited ${tenant} at ${clockTime()}.`, "ok");
    input.value = "";
  } catch (err) {
    const fields = (err.details && err.details.fields) || {};
    const reason = fields.tenant ? fields.tenant.join(" ") : err.message;
    showMessage(message, `Not invited: ${reason}`, "error");
  } finally {
    byId("invite-submit").disabled = false;
  }
  tenantsPoll.now();
}

// The Clipboard API needs a secure context (https or localhost); elsewhere, select and copy.
async function onCopyInvite() {
  const url = byId("invite-url");
  url.select();
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(url.value);
    } else if (!document.execCommand("copy")) {
      throw new Error("copy refused");
    }
    showMessage(byId("invite-message"), "Link copied.", "ok");
  } catch (_err) {
    showMessage(byId("invite-message"), "Copy failed: select the link and copy it.", "error");
  }
}

async function refreshTenants() {
  try {
    renderTenants((await api("GET", "/tenants")).items);
  } catch (err) {
    const empty = byId("tenants-empty");
    empty.hidden = false;
    setText(empty, `Tenants cannot be read: ${err.message}`);
  }
}

// --- start -------------------------------------------------------------------------------------

showFilters();
byId("filter-tenant").addEventListener("change", (e) => {
  filters.tenant = e.target.value;
  applyFilters();
});
byId("filter-status").addEventListener("change", (e) => {
  filters.status = e.target.value;
  applyFilters();
});
byId("filter-hide-retired").addEventListener("change", (e) => {
  filters.hideRetired = e.target.checked;
  applyFilters();
});
byId("provision-form").addEventListener("submit", onProvision);
byId("invite-form").addEventListener("submit", onInvite);
byId("invite-copy").addEventListener("click", onCopyInvite);
// The same runs as the timers', now: the fleet in place, and the tenants' live counts with it.
byId("fleet-refresh").addEventListener("click", () => {
  fleetPoll.now();
  tenantsPoll.now();
});
byId("provision-tenant").addEventListener("change", (e) => {
  byId("provision-submit").disabled = !e.target.value;
});

watchHealth();
fleetPoll = poll(refreshFleet, FLEET_REFRESH_MS);
tenantsPoll = poll(refreshTenants, TENANTS_REFRESH_MS);
watchReconcile();
