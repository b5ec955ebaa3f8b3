-- The audit trail in fewer bytes (issue #20): ingestkit.items becomes a view over
-- ingestkit.outcomes, whose rows hold the batch and the processor by number
-- (ingestkit.batches.no, ingestkit.processors) and the content hash as a uuid's
-- 16 bytes, fixed-width columns first: about 70 bytes less per outcome row. The
-- view shows the public columns as before (SPEC §3).
-- Moving the rows rewrites the history once: every row is copied into the new
-- partitions (the same months), then the old table is dropped. A database whose
-- items are a view already is left as it is (but for the functions, made again).

CREATE TABLE IF NOT EXISTS ingestkit.processors (
    no         int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    processor  text NOT NULL UNIQUE
);
ALTER TABLE ingestkit.batches ADD COLUMN IF NOT EXISTS no int GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX IF NOT EXISTS batches_no_key ON ingestkit.batches (no);

CREATE OR REPLACE FUNCTION ingestkit.hash_uuid(hash text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$ SELECT CASE WHEN hash ~ '^[0-9a-f]{32}$' THEN hash::uuid END $fn$;

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
            WHERE h.inhparent = 'ingestkit.outcomes'::regclass
              AND (b[1] = 'MINVALUE' OR btrim(b[1], '''')::timestamptz < hi)
              AND (b[2] = 'MAXVALUE' OR btrim(b[2], '''')::timestamptz > lo));
        BEGIN
            PERFORM set_config('lock_timeout', '2s', true);
            EXECUTE format('CREATE TABLE ingestkit.%I (LIKE ingestkit.outcomes'
                           ' INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format('ALTER TABLE ingestkit.outcomes ATTACH PARTITION ingestkit.%I'
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

CREATE OR REPLACE FUNCTION ingestkit.prune_items_partition(
    part text, cutoff timestamptz, OUT removed bigint, OUT how text
) LANGUAGE plpgsql AS $fn$
DECLARE
    kept_rows CONSTANT text := $k$(EXISTS (
        SELECT 1 FROM ingestkit.latest l
        JOIN ingestkit.processors p ON p.processor = l.processor
        JOIN ingestkit.batches lb ON lb.id = l.batch_id
        WHERE p.no = i.processor_no AND l.key = i.key AND lb.no = i.batch_no)
      OR EXISTS (
        SELECT 1 FROM ingestkit.batches b
        WHERE b.no = i.batch_no AND (b.status = 'running' OR b.started_at >= $1)))$k$;
    columns CONSTANT text := 'finished_at, duration_ms, batch_no, processor_no, attempt,'
        ' content_hash, key, status, error_type, error_message, traceback, log, payload,'
        ' location, changes, content_hash_text';
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
                EXECUTE format('CREATE TABLE ingestkit.%I (LIKE ingestkit.outcomes'
                               ' INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', copy);
                EXECUTE format('INSERT INTO ingestkit.%I (%s) SELECT %s FROM ingestkit.%I i'
                               ' WHERE %s', copy, columns, columns, part, kept_rows)
                    USING cutoff;
            END IF;
            EXECUTE format('ALTER TABLE ingestkit.outcomes DETACH PARTITION ingestkit.%I', part);
            EXECUTE format('DROP TABLE ingestkit.%I', part);
            IF kept > 0 THEN
                EXECUTE format('ALTER TABLE ingestkit.%I RENAME TO %I', copy, part);
                EXECUTE format('ALTER TABLE ingestkit.outcomes ATTACH PARTITION ingestkit.%I %s',
                               part, bound);
            END IF;
            PERFORM set_config('lock_timeout', '0', true);
            removed := total - kept;
            how := CASE WHEN kept > 0 THEN 'rebuilt' ELSE 'dropped' END;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- runs are busy with ingestkit.outcomes: delete row by row instead
        END;
    END IF;
    EXECUTE format('DELETE FROM ingestkit.%I i WHERE NOT %s', part, kept_rows) USING cutoff;
    GET DIAGNOSTICS removed = ROW_COUNT;
    how := 'deleted';
END
$fn$;

DO $mig$
DECLARE
    part record;
    oldest timestamptz;
BEGIN
    IF (SELECT c.relkind FROM pg_catalog.pg_class c
        WHERE c.oid = 'ingestkit.items'::regclass) NOT IN ('r', 'p') THEN
        RETURN;
    END IF;
    -- the old table and its partitions step aside: the new ones take their names
    ALTER TABLE ingestkit.items RENAME TO items_v10;
    FOR part IN
        SELECT c.relname FROM pg_catalog.pg_inherits h
        JOIN pg_catalog.pg_class c ON c.oid = h.inhrelid
        WHERE h.inhparent = 'ingestkit.items_v10'::regclass
    LOOP
        EXECUTE format('ALTER TABLE ingestkit.%I RENAME TO %I', part.relname,
                       left(part.relname, 50) || '_v10');
    END LOOP;
    DROP INDEX IF EXISTS ingestkit.items_batch_status_idx, ingestkit.items_key_idx,
        ingestkit.items_changes_idx;

    CREATE TABLE ingestkit.outcomes (
        finished_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
        duration_ms    double precision,
        batch_no       int NOT NULL,
        processor_no   int NOT NULL,
        attempt        int NOT NULL DEFAULT 1,
        content_hash   uuid,
        key            text NOT NULL,
        status         text NOT NULL CONSTRAINT items_status_check
                       CHECK (status IN ('succeeded', 'failed', 'error', 'skipped')),
        error_type     text,
        error_message  text,
        traceback      text,
        log            text,
        payload        jsonb,
        location       text,
        changes        jsonb,
        content_hash_text text
    ) PARTITION BY RANGE (finished_at);
    CREATE TABLE ingestkit.items_default PARTITION OF ingestkit.outcomes DEFAULT;
    SELECT min(finished_at) INTO oldest FROM ingestkit.items_v10;
    PERFORM ingestkit.add_items_partitions(
        coalesce(oldest, now()),
        2 + (extract(year FROM age(date_trunc('month', now()),
                                   date_trunc('month', coalesce(oldest, now())))) * 12
             + extract(month FROM age(date_trunc('month', now()),
                                      date_trunc('month', coalesce(oldest, now())))))::int);

    INSERT INTO ingestkit.processors (processor)
    SELECT processor FROM ingestkit.items_v10
    UNION SELECT processor FROM ingestkit.latest
    ON CONFLICT (processor) DO NOTHING;
    -- rows of a batch whose row was deleted by hand keep a batch row to belong to
    INSERT INTO ingestkit.batches (id, started_at, finished_at, status)
    SELECT i.batch_id, min(i.finished_at), max(i.finished_at), 'interrupted'
    FROM ingestkit.items_v10 i
    WHERE NOT EXISTS (SELECT 1 FROM ingestkit.batches b WHERE b.id = i.batch_id)
    GROUP BY i.batch_id;

    INSERT INTO ingestkit.outcomes (finished_at, duration_ms, batch_no, processor_no, attempt,
                                    content_hash, key, status, error_type, error_message,
                                    traceback, log, payload, location, changes,
                                    content_hash_text)
    SELECT i.finished_at, i.duration_ms, b.no, p.no, i.attempt, h.hash, i.key, i.status,
           i.error_type, i.error_message, i.traceback, i.log, i.payload, i.location,
           i.changes, CASE WHEN h.hash IS NULL THEN i.content_hash END
    FROM ingestkit.items_v10 i
    JOIN ingestkit.batches b ON b.id = i.batch_id
    JOIN ingestkit.processors p ON p.processor = i.processor
    CROSS JOIN LATERAL (SELECT ingestkit.hash_uuid(i.content_hash) AS hash) h;
    DROP TABLE ingestkit.items_v10 CASCADE;

    CREATE INDEX items_batch_status_idx ON ingestkit.outcomes (batch_no, status);
    CREATE INDEX items_key_idx ON ingestkit.outcomes (hashtextextended(key, 0));
    CREATE INDEX items_changes_idx ON ingestkit.outcomes (batch_no) WHERE changes IS NOT NULL;
    CREATE VIEW ingestkit.items AS
    SELECT b.id AS batch_id, p.processor, o.key, o.status, o.attempt,
           coalesce(replace(o.content_hash::text, '-', ''), o.content_hash_text) AS content_hash,
           o.duration_ms, o.error_type, o.error_message, o.traceback, o.log, o.payload,
           o.finished_at, o.location, o.changes
    FROM ingestkit.outcomes o
    JOIN ingestkit.batches b ON b.no = o.batch_no
    JOIN ingestkit.processors p ON p.no = o.processor_no;
END
$mig$;
