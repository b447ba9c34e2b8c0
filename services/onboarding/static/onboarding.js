// The onboarding page: PUT the form as JSON, show the field errors of a 422 next to their inputs,
// show the presence/version status (GET). The server validates everything; this script only
// places its answers. Text from the server is set with textContent, never parsed as HTML, and
// the token lives only in its input (no storage, no cookies).
//
// An invite link carries the tenant's token in the URL's fragment (#token=…), which a browser
// never sends to a server: the script takes it from there, removes it from the address bar (and
// so from history), asks GET /whoami whose it is, and fixes the tenant field to that name.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);
  const form = byId("onboarding");
  const message = byId("message");
  const forgeRows = Array.from(document.querySelectorAll(".forge")).map((row) => row.dataset.row);
  const SECRET_INPUTS = [
    "claude_oauth_token",
    "nks_pat",
    ...forgeRows.map((row) => `forge-${row}-token`),
  ];

  function clearErrors() {
    for (const el of document.querySelectorAll(".error")) el.textContent = "";
    for (const input of form.querySelectorAll("input")) input.removeAttribute("aria-invalid");
  }

  function asText(messages) {
    if (Array.isArray(messages)) return messages.map(asText).join(" ");
    if (messages && typeof messages === "object") {
      return Object.entries(messages).map(([key, value]) => `${key}: ${asText(value)}`).join("; ");
    }
    return String(messages);
  }

  // Puts `messages` next to the input whose error slot is `error-<slot>`; false if there is none.
  function showFieldError(slot, messages) {
    const el = byId(`error-${slot}`);
    if (!el) return false;
    el.textContent = asText(messages);
    const input = byId(slot.startsWith("forges-") ? slot.replace("forges-", "forge-") : slot);
    if (input) input.setAttribute("aria-invalid", "true");
    return true;
  }

  // The tenant name as one path segment. A name the URL itself would rewrite ('.', '..') or drop
  // (empty) cannot reach the server as typed, so those two rules are told here.
  function tenantPath() {
    const tenant = byId("tenant").value;
    if (tenant === "") {
      showFieldError("tenant", "enter the tenant name");
      return null;
    }
    if (tenant.startsWith(".")) {
      showFieldError("tenant", "tenant must not start with '.'");
      return null;
    }
    return `/tenants/${encodeURIComponent(tenant)}/secrets`;
  }

  function request(method, path, body) {
    const headers = { Authorization: `Bearer ${byId("token").value}` };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init);
  }

  // The body, and for each forge it sends, the page row it came from (rows left empty are skipped,
  // so the API's forge index and the row differ).
  function collect() {
    const forges = [];
    const rowOfForge = [];
    for (const row of forgeRows) {
      const forge = {};
      for (const part of ["name", "host", "token"]) forge[part] = byId(`forge-${row}-${part}`).value;
      if (forge.name || forge.host || forge.token) {
        forges.push(forge);
        rowOfForge.push(row);
      }
    }
    const body = {
      claude_oauth_token: byId("claude_oauth_token").value,
      nks_pat: byId("nks_pat").value,
      forges,
    };
    return { body, rowOfForge };
  }

  async function errorOf(response) {
    try {
      const parsed = await response.json();
      if (parsed && parsed.error) return parsed.error;
    } catch (_ignored) {
      // Not our JSON (a proxy's page): the status line is all there is to say.
    }
    return { code: "error", message: `${response.status} ${response.statusText}`, details: {} };
  }

  async function showFailure(response, rowOfForge) {
    const error = await errorOf(response);
    const fields = (error.details && error.details.fields) || {};
    const unplaced = [];
    for (const [field, messages] of Object.entries(fields)) {
      if (field === "forges" && messages && !Array.isArray(messages)) {
        for (const [index, forgeErrors] of Object.entries(messages)) {
          const row = rowOfForge[Number(index)];
          for (const [part, partMessages] of Object.entries(forgeErrors)) {
            if (!showFieldError(`forges-${row}-${part}`, partMessages)) {
              showFieldError("forges", `row ${Number(row) + 1}: ${asText(partMessages)}`);
            }
          }
        }
      } else if (!showFieldError(field, messages)) {
        unplaced.push(`${field}: ${asText(messages)}`);
      }
    }
    if (response.status === 401) showFieldError("token", error.message);
    message.textContent = [error.message, ...unplaced].join(" — ");
  }

  function showStatus(status) {
    byId("status-tenant").textContent = status.tenant;
    byId("status-version").textContent = String(status.version);
    byId("status-updated").textContent = status.updated_at;
    byId("status-claude_oauth_token").textContent = status.fields.claude_oauth_token ? "set" : "not set";
    byId("status-nks_pat").textContent = status.fields.nks_pat ? "set" : "not set";
    byId("status-forges").textContent = status.fields.forges.length
      ? status.fields.forges.join(", ")
      : "none";
    byId("status").hidden = false;
  }

  async function checkStatus() {
    const path = tenantPath();
    if (path === null) return;
    let response;
    try {
      response = await request("GET", path);
    } catch (_unreachable) {
      message.textContent = "The onboarding service could not be reached.";
      return;
    }
    if (response.ok) {
      showStatus(await response.json());
      return;
    }
    byId("status").hidden = true;
    await showFailure(response, []);
  }

  async function save(event) {
    event.preventDefault();
    clearErrors();
    const path = tenantPath();
    if (path === null) return;
    const { body, rowOfForge } = collect();
    message.textContent = "Saving…";
    let response;
    try {
      response = await request("PUT", path, body);
    } catch (_unreachable) {
      message.textContent = "The onboarding service could not be reached; nothing was saved.";
      return;
    }
    if (response.status !== 204) {
      await showFailure(response, rowOfForge);
      return;
    }
    for (const id of SECRET_INPUTS) byId(id).value = "";
    message.textContent = "Saved.";
    await checkStatus();
  }

  // The invite in the fragment, if any; the fragment is dropped from the address bar either way.
  function inviteToken() {
    if (!location.hash) return null;
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    history.replaceState(null, "", location.pathname + location.search);
    return token || null;
  }

  async function useInvite(token) {
    byId("token").value = token;
    let response;
    try {
      response = await request("GET", "/whoami");
    } catch (_unreachable) {
      message.textContent = "The onboarding service could not be reached.";
      return;
    }
    if (response.status === 401) {
      message.textContent =
        "This invite link has expired or was replaced; ask your operator for a new one.";
      return;
    }
    if (!response.ok) {
      await showFailure(response, []);
      return;
    }
    const who = await response.json();
    if (who.role !== "tenant") return;
    const tenant = byId("tenant");
    tenant.value = who.tenant;
    tenant.readOnly = true;
    byId("token-field").hidden = true;
    byId("invite-tenant").textContent = who.tenant;
    byId("invite").hidden = false;
    const status = await request("GET", tenantPath());
    if (status.ok) {
      showStatus(await status.json());
    } else if (status.status === 404) {
      message.textContent = "Nothing is stored for this tenant yet.";
    } else {
      await showFailure(status, []);
    }
  }

  form.addEventListener("submit", save);
  byId("check").addEventListener("click", () => {
    clearErrors();
    message.textContent = "";
    checkStatus();
  });
  const invite = inviteToken();
  if (invite) useInvite(invite);
})();
