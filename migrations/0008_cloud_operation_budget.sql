-- The distributed cloud operation budget (shared/adapters/capacity.py): one row per cloud mutation
-- (create or delete) a pipeline chain holds a slot for. A slot belongs to the instance, not to a
-- worker, so a worker's death leaks nothing: the chain that resumes the instance holds it still.
CREATE TABLE cloud_operation_slots (
    instance_id uuid PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('create', 'delete')),
    acquired_at timestamptz NOT NULL DEFAULT now()
);

-- The queue for a slot: pending rows, oldest first.
CREATE INDEX instances_pending_oldest ON instances (created_at, id) WHERE status = 'pending';
