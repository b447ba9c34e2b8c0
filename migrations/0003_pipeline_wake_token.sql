-- The pipeline's continuation token. Each scheduled continuation of an instance's work carries the
-- token current when it was scheduled; a message whose token is no longer the row's is stale (a
-- redelivery, a duplicate, or work cancelled by a teardown) and is dropped. So exactly one chain
-- of messages drives each instance, however often Redis redelivers.
ALTER TABLE instances ADD COLUMN wake_token uuid NOT NULL DEFAULT gen_random_uuid();
