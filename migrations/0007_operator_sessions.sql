-- The dashboard's sessions (docs/ARCHITECTURE.md#dashboard-sessions). The signed cookie names a
-- row here; signing out deletes it, so a copy of the cookie stops working at once. The row keeps a
-- hash of the session id (never the id itself) and an HMAC of the operator token the session was
-- started with (never the token): the session is valid only while that token is still configured.
CREATE TABLE operator_sessions (
    id_hash      bytea PRIMARY KEY,
    token_digest text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX operator_sessions_expiry ON operator_sessions (expires_at);
