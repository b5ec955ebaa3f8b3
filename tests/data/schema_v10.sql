-- The schema of ingestkit as schema version 10 had it (schema.sql of main before
-- migration 0011: ingestkit.items a partitioned table), for tests/test_prune.py::
-- test_a_version_10_history_moves_into_compact_rows_without_changing_a_value.
-- ingestkit's own tables, in schema "ingestkit" of the target database.
-- This file is the whole current schema: a new database gets it in one go.
-- An existing one is brought up to date by migrations/NNNN_*.sql, applied in
-- order; the highest migration number is the version this file describes.

-- Schema "ingestkit" itself is created by schema.py when missing (a role that may
-- not create schemas can be given one: CREATE SCHEMA ingestkit AUTHORIZATION role).

CREATE TABLE ingestkit.schema_version (
    version     int PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE ingestkit.batch_lock_seq CYCLE MAXVALUE 2147483647;

-- One row per run of the ingestkit command.
CREATE TABLE ingestkit.batches (
    id           uuid PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'finished', 'interrupted')),
    exit_code    int,
    argv         jsonb,
    hostname     text,
    counts       jsonb NOT NULL DEFAULT '{}'::jsonb,
    meta         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- not public: liveness of a running batch (an advisory lock held by its process)
    pid          int,
    backend_pid  int DEFAULT pg_backend_pid(),  -- of the connection holding the locks
    lock_key     int NOT NULL DEFAULT nextval('ingestkit.batch_lock_seq')::int
);
CREATE INDEX batches_started_at_idx ON ingestkit.batches (started_at DESC);
CREATE INDEX batches_running_idx ON ingestkit.batches (id) WHERE status = 'running';

-- One row per item outcome (append-only audit trail). "unchanged" items add no row.
-- Partitioned by month of finished_at (UTC) so that --prune drops or rebuilds whole
-- months instead of rewriting the table: ingestkit.items_YYYY_MM, made at each batch
-- start for the current and the next month (add_items_partitions below), and
-- items_default for rows outside them. No primary key: none is needed, and one
-- would have to include finished_at.
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
    location       text,
    -- the fields that differ from the key's last succeeded record (store_payloads
    -- latest or all): {"field": [before, after]}, for the summary and --trace
    changes        jsonb
) PARTITION BY RANGE (finished_at);
CREATE TABLE ingestkit.items_default PARTITION OF ingestkit.items DEFAULT;
-- (batch_id, status) deduplicates to a few bytes a row; a key is looked up by an
-- 8-byte hash of it alone (--trace re-checks the key and filters the processor
-- from the few rows a key has; see migration 0008).
CREATE INDEX items_batch_status_idx ON ingestkit.items (batch_id, status);
CREATE INDEX items_key_idx ON ingestkit.items (hashtextextended(key, 0));
-- the few rows that changed a key's record, for the batch's summary
CREATE INDEX items_changes_idx ON ingestkit.items (batch_id) WHERE changes IS NOT NULL;

-- The latest outcome of each (processor, key): what "already ingested", --lf and
-- item.attempt are decided from, in one indexed read per chunk.
CREATE TABLE ingestkit.latest (
    processor      text NOT NULL,
    key            text NOT NULL,
    batch_id       uuid NOT NULL,
    status         text NOT NULL,
    attempt        int NOT NULL,
    content_hash   text,
    error_message  text,
    payload        jsonb,
    finished_at    timestamptz NOT NULL,
    -- the content whose writes are in the database: its last success
    succeeded_hash text,
    -- that success's record (store_payloads latest or all), to show what changed:
    -- json (its text as sent), not jsonb: parsed only when a changed record is
    -- compared with it (migration 0009)
    record         json,
    -- set when a full read of the source no longer yielded this failed key: the
    -- batch that found it gone. --lf does not feed it; a new outcome clears it.
    retired_batch  uuid,
    PRIMARY KEY (processor, key)
);
CREATE INDEX latest_failed_idx ON ingestkit.latest (processor, key)
    WHERE status IN ('failed', 'error') AND retired_batch IS NULL;

-- Batches shared by several workers (ingestkit -n N, ingestkit worker --batch ID).
-- One row per shared batch: what its workers need to know besides the tasks.
-- Unlogged: it lives only as long as the batch, and a server crash ends the batch.
CREATE UNLOGGED TABLE ingestkit.dispatch (
    batch_id  uuid PRIMARY KEY,
    options   jsonb NOT NULL,            -- batch-wide options workers take from here
    fed       boolean NOT NULL DEFAULT false,   -- every item has been queued
    stop      text,                      -- why workers stop taking work early
    problems  jsonb NOT NULL DEFAULT '[]'::jsonb  -- workers' teardown and fatal errors
);

-- No foreign keys between these: cleaning up after a dead batch must never wait
-- for (or deadlock with) a worker still finishing a chunk of it.

-- Items waiting for a worker, a chunk per row. A worker claims a row with
-- FOR UPDATE SKIP LOCKED in the transaction that commits the chunk's outcomes,
-- and deletes it there: a worker that dies leaves the row to the others.
CREATE UNLOGGED TABLE ingestkit.tasks (
    batch_id   uuid NOT NULL,
    seq        int NOT NULL,
    processor  text NOT NULL,
    fresh      boolean NOT NULL,          -- the processor had no outcome before the batch
    size       int NOT NULL,
    items      text NOT NULL,             -- JSON: keys, records, hashes (see workers.py)
    PRIMARY KEY (batch_id, seq)
);

-- The outcomes of committed chunks, for the leader's reporters: written in the
-- chunk's transaction, taken (deleted) by the leader.
CREATE UNLOGGED TABLE ingestkit.results (
    batch_id   uuid NOT NULL,
    processor  text NOT NULL,
    unchanged  int NOT NULL,
    reports    text NOT NULL              -- JSON: the chunk's item reports
);
CREATE INDEX results_batch_idx ON ingestkit.results (batch_id);

-- The keys of a shared batch's file tasks (ingestkit/dispatch.py): of two files
-- with the same key, the one whose worker reserved it first runs it.
CREATE UNLOGGED TABLE ingestkit.batch_keys (
    batch_id      uuid NOT NULL,
    processor     text NOT NULL,
    key           text NOT NULL,
    location      text,
    content_hash  text,
    PRIMARY KEY (batch_id, processor, key)
);

-- The monthly partitions of ingestkit.items from the month of ``at`` on, ``months``
-- of them, those no partition covers yet. Each is created apart and attached (which
-- does not block runs writing items); a month that cannot be made now (the default
-- partition holds rows of it, a lock is busy, no privilege) is left to the default
-- partition. Returns how many it made.
CREATE FUNCTION ingestkit.add_items_partitions(at timestamptz, months int)
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
CREATE FUNCTION ingestkit.prune_items_partition(
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

-- Incremental state (the ``state`` fixture, ingestkit/state.py): one JSON object
-- per processor, written in the transaction of the chunk whose items changed it.
CREATE TABLE ingestkit.state (
    processor   text PRIMARY KEY,            -- node id
    value       jsonb NOT NULL DEFAULT '{}'::jsonb,
    batch_id    uuid,                        -- the batch that wrote it last
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The file ledger (ingestkit/files.py): every file a reader read, per processor.
-- A file whose sha256 was read completely (status 'complete') is not parsed again.
CREATE TABLE ingestkit.files (
    processor   text NOT NULL,               -- node id
    path        text NOT NULL,               -- relative to the rootdir
    size        bigint NOT NULL,
    sha256      text NOT NULL,
    items       int NOT NULL,                -- records read from it
    status      text NOT NULL,               -- complete | failed | partial
    batch_id    uuid,                        -- the batch that read it last
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (processor, path)
);
CREATE INDEX files_processor_sha256_idx ON ingestkit.files (processor, sha256);
