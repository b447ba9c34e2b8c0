-- Invites (docs/ARCHITECTURE.md#invites): a tenant's onboarding token, stored only as its SHA-256.
-- The token is 32 random bytes (256 bits), so a fast hash is enough: a slow, salted hash defends
-- guessable passwords against a stolen table, and nobody can enumerate 2^256 tokens. The hash is
-- unique, and the lookup by it is an index probe.
--
-- `revoked_at IS NULL` is the tenant's current invite (pending, used or expired by its
-- `expires_at`); at most one per tenant. A new invite revokes the current one in the same
-- transaction, under a transaction-level advisory lock on the tenant, so two concurrent issues
-- leave exactly one current invite: the later one.
CREATE TABLE invites (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant      text        NOT NULL,
    token_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    CHECK (expires_at > created_at)
);
CREATE UNIQUE INDEX invites_one_current_per_tenant ON invites (tenant) WHERE revoked_at IS NULL;
