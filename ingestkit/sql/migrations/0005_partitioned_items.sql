-- ingestkit.items partitioned by month of finished_at (see schema.sql), with a
-- smaller index for looking keys up: (key) instead of (processor, key).
-- The existing rows are not rewritten: the table becomes the partition
-- items_legacy, for every time up to the month after its newest row (or after
-- the current month); the monthly partitions start after it. --prune deletes from
-- it row by row until it is all older than --keep, then drops or rebuilds it.
-- Attaching reads the table twice (its newest row, the check) and builds the
-- key index: on a large history this takes a while, once.
-- A database whose items table is partitioned already is left as it is.
DO $mig$
DECLARE
    upto timestamptz;
BEGIN
    IF (SELECT c.relkind FROM pg_catalog.pg_class c
        WHERE c.oid = 'ingestkit.items'::regclass) <> 'r' THEN
        RETURN;
    END IF;
    ALTER TABLE ingestkit.items RENAME TO items_legacy;
    ALTER INDEX ingestkit.items_batch_status_idx RENAME TO items_legacy_batch_status_idx;
    DROP INDEX IF EXISTS ingestkit.items_processor_key_idx;
    CREATE TABLE ingestkit.items (
        batch_id       uuid NOT NULL,  -- ingestkit.batches (id); no foreign key: see 0003
        processor      text NOT NULL,
        key            text NOT NULL,
        status         text NOT NULL CONSTRAINT items_status_check
                   CHECK (status IN ('succeeded', 'failed', 'error', 'skipped')),
        attempt        int NOT NULL DEFAULT 1,
        content_hash   text,
        duration_ms    double precision,
        error_type     text,
        error_message  text,
        traceback      text,
        log            text,
        payload        jsonb,
        finished_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
        -- not public
        location       text
    ) PARTITION BY RANGE (finished_at);
    CREATE INDEX items_batch_status_idx ON ingestkit.items (batch_id, status);
    CREATE INDEX items_key_idx ON ingestkit.items (key);
    SELECT (date_trunc('month', greatest(max(finished_at), now()) AT TIME ZONE 'UTC')
            + interval '1 month') AT TIME ZONE 'UTC'
    INTO upto FROM ingestkit.items_legacy;
    EXECUTE format('ALTER TABLE ingestkit.items ATTACH PARTITION ingestkit.items_legacy'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', upto);
    CREATE TABLE ingestkit.items_default PARTITION OF ingestkit.items DEFAULT;
END
$mig$;

-- The monthly partitions of ingestkit.items from the month of ``at`` on, ``months``
-- of them, those no partition covers yet. Each is created apart and attached (which
-- does not block runs writing items); a month that cannot be made now (the default
-- partition holds rows of it, a lock is busy, no privilege) is left to the default
-- partition. Returns how many it made.
CREATE OR REPLACE FUNCTION ingestkit.add_items_partitions(at timestamptz, months int)
RETURNS int LANGUAGE plpgsql AS $fn$
DECLARE
    first timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    lo timestamptz;
    hi timestamptz;
    part text;
    made int := 0;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        lo := (first + make_interval(months => i)) AT TIME ZONE 'UTC';
        hi := (first + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        part := 'items_' || to_char(lo AT TIME ZONE 'UTC', 'YYYY_MM');
        CONTINUE WHEN EXISTS (  -- a partition covers some of that month already
            SELECT 1
            FROM pg_catalog.pg_inherits h JOIN pg_catalog.pg_class c ON c.oid = h.inhrelid,
                 regexp_match(pg_get_expr(c.relpartbound, c.oid),
                              $re$FROM \((.+)\) TO \((.+)\)$re$) b
            WHERE h.inhparent = 'ingestkit.items'::regclass
              AND (b[1] = 'MINVALUE' OR btrim(b[1], '''')::timestamptz < hi)
              AND (b[2] = 'MAXVALUE' OR btrim(b[2], '''')::timestamptz > lo));
        BEGIN
            PERFORM set_config('lock_timeout', '2s', true);
            EXECUTE format('CREATE TABLE ingestkit.%I (LIKE ingestkit.items INCLUDING DEFAULTS'
                           ' INCLUDING CONSTRAINTS)', part);
            EXECUTE format('ALTER TABLE ingestkit.items ATTACH PARTITION ingestkit.%I'
                           ' FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
            made := made + 1;
        EXCEPTION WHEN invalid_object_definition OR check_violation OR lock_not_available
                    OR duplicate_table OR unique_violation OR insufficient_privilege THEN
            NULL;  -- its rows go to the default partition
        END;
    END LOOP;
    RETURN made;
END
$fn$;

-- --prune on one partition of ingestkit.items whose rows all finished before
-- ``cutoff``: the rows it keeps are each key's latest outcome and the rows of
-- batches that are running or started after the cutoff. With none kept the
-- partition is detached and dropped; with fewer kept than removed it is rebuilt
-- (the kept rows copied into a new table attached for the same range); else,
-- or when the lock for detaching is busy, its other rows are deleted.
-- Returns how many rows it removed, and how: dropped, rebuilt, deleted or kept.
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
        ' duration_ms, error_type, error_message, traceback, log, payload, finished_at, location';
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
