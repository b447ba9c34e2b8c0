-- Fleet registry, lifecycle events, encrypted credential bundles, tenants, reconcile runs.
-- No table holds a secret in plaintext.

CREATE TABLE instances (
    id                uuid PRIMARY KEY,
    tenant            text NOT NULL,
    status            text NOT NULL CHECK (status IN ('pending', 'provisioning', 'initializing',
                          'ready', 'tearing_down', 'retired', 'failed', 'lost')),
    vm_name           text NOT NULL UNIQUE,
    idempotency_key   uuid NOT NULL UNIQUE,
    request_key       text,
    provider_id       text UNIQUE,
    operation_id      text,
    address           text,
    reason            text,
    ssh_pubkey        text,
    forges            jsonb NOT NULL DEFAULT '[]'::jsonb,
    teardown_mode     text CHECK (teardown_mode IN ('keep', 'retire')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    status_changed_at timestamptz NOT NULL DEFAULT now()
);

-- The API's Idempotency-Key is scoped to the tenant.
CREATE UNIQUE INDEX instances_request_key ON instances (tenant, request_key)
    WHERE request_key IS NOT NULL;
-- Newest-first keyset pagination, overall and per tenant.
CREATE INDEX instances_newest ON instances (created_at DESC, id DESC);
CREATE INDEX instances_tenant_newest ON instances (tenant, created_at DESC, id DESC);
-- Reconcile and the per-tenant cap look at rows that are not retired.
CREATE INDEX instances_open ON instances (status) WHERE status <> 'retired';

CREATE TABLE instance_events (
    id          bigserial PRIMARY KEY,
    instance_id uuid NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    from_status text,
    to_status   text NOT NULL,
    reason      text
);
CREATE INDEX instance_events_by_instance ON instance_events (instance_id, id);

-- Envelope-encrypted bundles: a transit-wrapped data key, a nonce and the AES-256-GCM ciphertext,
-- with the tenant bound as associated data.
CREATE TABLE credential_bundles (
    tenant      text PRIMARY KEY,
    format      text NOT NULL,
    wrapped_key text NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    name            text PRIMARY KEY,
    onboarded_at    timestamptz,
    updated_at      timestamptz,
    offboarded_at   timestamptz,
    secrets_version integer
);

CREATE TABLE reconcile_runs (
    id          bigserial PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    dry_run     boolean NOT NULL,
    trigger     text NOT NULL DEFAULT 'schedule',
    counts      jsonb NOT NULL DEFAULT '{}'::jsonb,
    actions     jsonb NOT NULL DEFAULT '[]'::jsonb,
    errors      jsonb NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX reconcile_runs_newest ON reconcile_runs (started_at DESC);
