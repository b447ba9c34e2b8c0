-- Adaptive waits (docs/ARCHITECTURE.md#waits): recent finished waits of each kind, as the polls
-- that bracketed them saw them (seconds since the row entered the status it waited in). One row per
-- instance and kind: a step that runs twice records nothing new. The adapter keeps the newest few
-- of each kind and deletes older ones as it records.
CREATE TABLE wait_samples (
    kind         text             NOT NULL CHECK (kind IN ('create', 'boot')),
    instance_id  uuid             NOT NULL,
    not_done_at  double precision NOT NULL CHECK (not_done_at >= 0),
    done_at      double precision NOT NULL CHECK (done_at >= not_done_at),
    recorded_at  timestamptz      NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kind, instance_id)
);
CREATE INDEX wait_samples_newest ON wait_samples (kind, recorded_at DESC);
