-- Each instance's listing item (shared/domain/records.py's instance_summary: the summary fields,
-- keys sorted, no whitespace, timestamps as Python's isoformat writes them in UTC), written when
-- the row is written, so that a page of the list is an index scan that copies these bytes
-- instead of formatting every row of every page on every read
-- (docs/ARCHITECTURE.md#listing-instances). A trigger, not a generated column: to_char and
-- row_to_json are not immutable. Changing the summary fields means a new migration that replaces
-- the function and rewrites the rows.
CREATE FUNCTION dark_iso_utc(value timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT replace(to_char(value AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '')
        || '+00:00'
$$;

CREATE FUNCTION instances_summary_json() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.summary_json := (
        SELECT row_to_json(item)::text FROM (
            SELECT NEW.address AS address,
                   dark_iso_utc(NEW.created_at) AS created_at,
                   NEW.id::text AS id,
                   NEW.provider_id AS provider_id,
                   NEW.reason AS reason,
                   NEW.status AS status,
                   NEW.tenant AS tenant,
                   dark_iso_utc(NEW.updated_at) AS updated_at,
                   NEW.vm_name AS vm_name
        ) AS item
    );
    RETURN NEW;
END
$$;

ALTER TABLE instances ADD COLUMN summary_json text;
CREATE TRIGGER instances_summary_json BEFORE INSERT OR UPDATE ON instances
    FOR EACH ROW EXECUTE FUNCTION instances_summary_json();
-- Existing rows: an update that changes nothing else has the trigger write each one's item.
UPDATE instances SET summary_json = NULL;
ALTER TABLE instances ALTER COLUMN summary_json SET NOT NULL;
