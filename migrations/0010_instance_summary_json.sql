-- Each instance's listing item (shared/domain/records.py's instance_summary: the summary fields,
-- keys sorted, no whitespace, timestamps as Python's isoformat writes them in UTC), written when
-- the row is written, so that a page of the list is an index scan that copies these bytes
-- instead of formatting every row of every page on every read
-- (docs/ARCHITECTURE.md#listing-instances). A trigger, not a generated column: to_char and
-- row_to_json are not immutable. Changing the summary fields means a new migration that replaces
-- dark_instance_summary and rewrites the rows.
--
-- Safe on a live table: the new column is nullable (a catalogue change, no rewrite), and the lock
-- it needs is given up after 5 s instead of queueing every other statement behind it (the
-- migration then fails and is run again). Rows written before it keep NULL until migrate()'s
-- backfill (shared/adapters/db.py) fills them in small batches; until then the list formats such a
-- row when it reads it, with the same function.
SET LOCAL lock_timeout = '5s';

CREATE FUNCTION dark_iso_utc(value timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT replace(to_char(value AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '')
        || '+00:00'
$$;

ALTER TABLE instances ADD COLUMN summary_json text;

CREATE FUNCTION dark_instance_summary(i instances) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT row_to_json(item)::text FROM (
        SELECT i.address AS address,
               dark_iso_utc(i.created_at) AS created_at,
               i.id::text AS id,
               i.provider_id AS provider_id,
               i.reason AS reason,
               i.status AS status,
               i.tenant AS tenant,
               dark_iso_utc(i.updated_at) AS updated_at,
               i.vm_name AS vm_name
    ) AS item
$$;

-- The schema's functions by name whatever a writer's search_path says.
CREATE FUNCTION instances_summary_json() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    NEW.summary_json := dark_instance_summary(NEW);
    RETURN NEW;
END
$$;

CREATE TRIGGER instances_summary_json BEFORE INSERT OR UPDATE ON instances
    FOR EACH ROW EXECUTE FUNCTION instances_summary_json();
