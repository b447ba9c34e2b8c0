-- Who is creating a tenant's identity (docs/ARCHITECTURE.md#invariants: one *init* per tenant,
-- ever, until offboarding). An instance inserts its claim before it calls the guest's init, and
-- only the instance whose claim row it is may init; the others wait for its bundle and import it.
-- Unlike an advisory lock, a claim survives its holder's connection. It is deleted with the bundle.
CREATE TABLE identity_claims (
    tenant      text PRIMARY KEY,
    instance_id uuid NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
