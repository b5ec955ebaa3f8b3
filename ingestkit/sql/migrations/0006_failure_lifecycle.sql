-- The failure lifecycle (SPEC §9): retired failures, each key's last succeeded
-- record, and the fields an item changed. See docs/tables.md.
-- IF NOT EXISTS: safe to apply again if this migration is renumbered at a merge.
ALTER TABLE ingestkit.latest ADD COLUMN IF NOT EXISTS record jsonb;
ALTER TABLE ingestkit.latest ADD COLUMN IF NOT EXISTS retired_batch uuid;
DROP INDEX IF EXISTS ingestkit.latest_failed_idx;
CREATE INDEX latest_failed_idx ON ingestkit.latest (processor, key)
    WHERE status IN ('failed', 'error') AND retired_batch IS NULL;
DO $mig$
BEGIN
    IF (SELECT c.relkind FROM pg_catalog.pg_class c
        WHERE c.oid = 'ingestkit.items'::regclass) NOT IN ('r', 'p') THEN
        RETURN;  -- items is a view over ingestkit.outcomes (0011): nothing to do
    END IF;
    ALTER TABLE ingestkit.items ADD COLUMN IF NOT EXISTS changes jsonb;
    CREATE INDEX IF NOT EXISTS items_changes_idx ON ingestkit.items (batch_id)
        WHERE changes IS NOT NULL;
END
$mig$;

-- --prune's partition rebuild copies the new column too.
CREATE OR REPLACE FUNCTION ingestkit.prune_items_partition(
    part text, cutoff timestamptz, OUT removed bigint, OUT how text
) LANGUAGE plpgsql AS $fn$
DECLARE
    kept_rows CONSTANT text := $k$(EXISTS (
        SELECT 1 FROM ingestkit.latest l
        WHERE l.processor = i.processor AND l.key = i.key AND l.batch_id = i.batch_id)
      OR EXISTS (
        SELECT 1 FROM ingestkit.batches b
        WHERE b.id = i.batch_id AND (b.status = 'running' OR b.started_at >= $1)))$k$;
    columns CONSTANT text := 'batch_id, processor, key, status, attempt, content_hash,'
        ' duration_ms, error_type, error_message, traceback, log, payload, finished_at, location,'
        ' changes';
    copy text := left(part, 50) || '_pruned';
    bound text;
    total bigint;
    kept bigint;
BEGIN
    EXECUTE format('SELECT count(*), count(*) FILTER (WHERE %s) FROM ingestkit.%I i',
                   kept_rows, part)
        INTO total, kept USING cutoff;
    IF kept = total THEN
        removed := 0;
        how := 'kept';
        RETURN;
    END IF;
    IF kept <= total - kept THEN
        BEGIN
            PERFORM set_config('lock_timeout', '10s', true);
            SELECT pg_get_expr(c.relpartbound, c.oid) INTO bound
            FROM pg_catalog.pg_class c
            WHERE c.relnamespace = 'ingestkit'::regnamespace AND c.relname = part;
            IF kept > 0 THEN
                EXECUTE format('CREATE TABLE ingestkit.%I (LIKE ingestkit.items'
                               ' INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', copy);
                EXECUTE format('INSERT INTO ingestkit.%I (%s) SELECT %s FROM ingestkit.%I i'
                               ' WHERE %s', copy, columns, columns, part, kept_rows)
                    USING cutoff;
            END IF;
            EXECUTE format('ALTER TABLE ingestkit.items DETACH PARTITION ingestkit.%I', part);
            EXECUTE format('DROP TABLE ingestkit.%I', part);
            IF kept > 0 THEN
                EXECUTE format('ALTER TABLE ingestkit.%I RENAME TO %I', copy, part);
                EXECUTE format('ALTER TABLE ingestkit.items ATTACH PARTITION ingestkit.%I %s',
                               part, bound);
            END IF;
            PERFORM set_config('lock_timeout', '0', true);
            removed := total - kept;
            how := CASE WHEN kept > 0 THEN 'rebuilt' ELSE 'dropped' END;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- runs are busy with ingestkit.items: delete row by row instead
        END;
    END IF;
    EXECUTE format('DELETE FROM ingestkit.%I i WHERE NOT %s', part, kept_rows) USING cutoff;
    GET DIAGNOSTICS removed = ROW_COUNT;
    how := 'deleted';
END
$fn$;
