-- Every query ingestkit runs against its own schema, by name (see queries.py).
-- Values are always parameters; identifiers of users' tables are composed with
-- psycopg2.sql in lookup.py and database.py, never formatted in.

-- name: schema-exists
-- A catalog query, not to_regclass(): it reads with a fresh snapshot, so a run
-- that waited for the schema lock sees the tables the other run just created.
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_tables
    WHERE schemaname = 'ingestkit' AND tablename = 'schema_version'
);

-- name: namespace-exists
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'ingestkit');

-- name: create-namespace
CREATE SCHEMA ingestkit;

-- name: schema-version
SELECT max(version) FROM ingestkit.schema_version;

-- name: schema-lock
SELECT pg_advisory_xact_lock(%s);

-- name: set-schema-version
INSERT INTO ingestkit.schema_version (version) VALUES (%s) ON CONFLICT DO NOTHING;

-- name: insert-batch
-- The batch's lock is taken by the statement that inserts its row, so it is
-- held before the row commits: no other run ever sees the row 'running' and
-- its lock free, which would read as "the process died" (mark-interrupted).
WITH b AS (
    INSERT INTO ingestkit.batches (id, argv, hostname, pid, meta)
    VALUES (%(id)s, %(argv)s, %(hostname)s, %(pid)s, %(meta)s)
    RETURNING started_at, lock_key
)
SELECT started_at, lock_key, pg_advisory_lock(%(ns)s, lock_key) FROM b;

-- name: unlock-batch
SELECT pg_advisory_unlock(%(ns)s, %(lock_key)s);

-- name: finish-batch
UPDATE ingestkit.batches
SET finished_at = now(), status = %(status)s, exit_code = %(exit_code)s,
    counts = %(counts)s, meta = %(meta)s
WHERE id = %(id)s;

-- name: can-create-temp
-- Each chunk's outcome rows go through a temporary table (create-outcomes-table).
SELECT has_database_privilege(current_database(), 'TEMP'), current_user, current_database();

-- name: set-batch-exit-code
-- The process ended with another code than the one the batch was finished
-- with (an internal error after the batch row was written).
UPDATE ingestkit.batches SET exit_code = %(exit_code)s
WHERE id = %(id)s AND status <> 'running';

-- name: analyze
-- After a large first load the planner's row estimates for ingestkit.latest are
-- stale until autovacuum gets to it, and the next run's history reads would scan.
-- Only the columns those reads filter on: the wide record column (store_payloads =
-- latest) would double the time for statistics nothing uses.
ANALYZE ingestkit.latest (processor, key, status, retired_batch);

-- name: mark-interrupted
-- A batch still 'running' whose process is gone no longer holds its advisory
-- lock: taking it here proves the process died, without any timeout.
UPDATE ingestkit.batches
SET status = 'interrupted', finished_at = now()
WHERE status = 'running'
  AND id IS DISTINCT FROM %(own)s
  AND pg_try_advisory_xact_lock(%(ns)s, lock_key)
RETURNING id;

-- name: try-lock-processor
-- One batch at a time runs a processor: two runs at once would process the same
-- items twice. Session-level, on the control connection; released at its end.
SELECT pg_try_advisory_lock(%(ns)s, hashtext(%(processor)s));

-- name: lock-processor
SELECT pg_advisory_lock(%(ns)s, hashtext(%(processor)s));

-- name: unlock-processor
SELECT pg_advisory_unlock(%(ns)s, hashtext(%(processor)s));

-- name: processor-holder
SELECT b.id, b.hostname, b.pid
FROM pg_catalog.pg_locks l JOIN ingestkit.batches b ON b.backend_pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid = %(ns)s::oid AND l.objid = hashtext(%(processor)s)::oid
  AND b.status = 'running'
LIMIT 1;

-- name: processor-has-history
SELECT EXISTS (SELECT 1 FROM ingestkit.latest WHERE processor = %(processor)s);

-- name: history
-- The keys come as one JSON array (recorder.key_list): a constant array of a
-- chunk's thousands of keys costs three times more, most of it in the planner
-- estimating each element's selectivity.
SELECT key, status, attempt, error_message, succeeded_hash
FROM ingestkit.latest
WHERE processor = %(processor)s
  AND key = ANY(ARRAY(SELECT json_array_elements_text(%(keys)s::json)));

-- name: create-outcomes-table
CREATE TEMP TABLE IF NOT EXISTS ingestkit_outcomes (
    seq            int,
    processor      text,
    key            text,
    status         text,
    attempt        int,
    content_hash   text,
    duration_ms    double precision,
    error_type     text,
    error_message  text,
    traceback      text,
    log            text,
    -- json, not jsonb: validated once on COPY, and parsed into jsonb only for the
    -- rows ingestkit.items keeps it for; ingestkit.latest.record is json too
    payload        json,
    finished_epoch double precision,
    location       text,
    track          boolean,
    -- content_hash as a uuid when it is 32 hex digits (recorder.py decides: a
    -- regular expression here cost as much as the rest of insert-items)
    hash           uuid
);

-- name: create-commit-guard
-- A processor's own COMMIT would commit its chunk's other items without their
-- outcome rows. Each chunk that sends statements first inserts a row here
-- (arm-commit-guard); the deferred trigger fails any COMMIT that ingestkit did
-- not allow (allow-commit), so such a COMMIT rolls the chunk back instead, and
-- the runner runs its other items again.
CREATE TEMP TABLE IF NOT EXISTS ingestkit_guard (armed boolean) ON COMMIT DELETE ROWS;
CREATE OR REPLACE FUNCTION pg_temp.ingestkit_refuse_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('ingestkit.commit', true), '') <> 'on' THEN
        RAISE EXCEPTION 'COMMIT inside a processor'
            USING DETAIL = 'ingestkit commits each item''s writes together with its outcome',
                  HINT = 'do not commit (or roll back) in a processor';
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS ingestkit_guard ON pg_temp.ingestkit_guard;
CREATE CONSTRAINT TRIGGER ingestkit_guard AFTER INSERT ON pg_temp.ingestkit_guard
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION pg_temp.ingestkit_refuse_commit();

-- name: arm-commit-guard
INSERT INTO pg_temp.ingestkit_guard VALUES (true);

-- name: commit-guard-armed
-- False once something other than ingestkit ended the transaction the guard was armed in.
SELECT EXISTS (SELECT 1 FROM pg_temp.ingestkit_guard);

-- name: allow-commit
SELECT set_config('ingestkit.commit', 'on', true);

-- name: outcomes-copy
COPY pg_temp.ingestkit_outcomes FROM STDIN;

-- A chunk's outcome rows go from the temp table into the audit trail and the
-- latest-state table, in the transaction of the chunk's own writes: the three
-- blocks below, sent as one statement (recorder.py).

-- name: insert-items
-- Into ingestkit.outcomes, the compact rows behind the view ingestkit.items: the
-- batch and the processor by number (the recorder added the processor's row
-- before; a missing one fails the NOT NULL, never drops a row), the hash as a uuid.
INSERT INTO ingestkit.outcomes (finished_at, duration_ms, batch_no, processor_no, attempt,
                                content_hash, key, status, error_type, error_message,
                                traceback, log, payload, location, content_hash_text)
SELECT to_timestamp(o.finished_epoch), o.duration_ms,
       (SELECT b.no FROM ingestkit.batches b WHERE b.id = %(batch_id)s), p.no, o.attempt,
       o.hash, o.key, o.status, o.error_type, o.error_message, o.traceback, o.log,
       CASE WHEN o.status IN ('failed', 'error') OR %(store_all)s THEN o.payload::jsonb END,
       o.location, CASE WHEN o.hash IS NULL THEN o.content_hash END
FROM pg_temp.ingestkit_outcomes o
LEFT JOIN ingestkit.processors p ON p.processor = o.processor
ORDER BY o.seq;

-- name: number-processors
-- Node ids get their number before a chunk with their first outcome rows commits.
INSERT INTO ingestkit.processors (processor)
SELECT unnest(%(processors)s::text[])
ON CONFLICT (processor) DO NOTHING;

-- name: insert-latest
-- Followed by latest-on-conflict, unless no key of the chunk can have a row
-- yet (a first load): a plain insert costs a quarter less than an upsert.
INSERT INTO ingestkit.latest AS l (processor, key, batch_id, status, attempt, content_hash,
                                   error_message, payload, finished_at, succeeded_hash,
                                   record)
SELECT DISTINCT ON (processor, key)
       processor, key, %(batch_id)s, status, attempt, content_hash, error_message,
       CASE WHEN status IN ('failed', 'error') THEN payload::jsonb END,
       to_timestamp(finished_epoch),
       CASE WHEN status = 'succeeded' THEN content_hash END,
       CASE WHEN status = 'succeeded' THEN payload END
FROM pg_temp.ingestkit_outcomes
WHERE track
ORDER BY processor, key, seq DESC

-- name: latest-on-conflict
ON CONFLICT (processor, key) DO UPDATE
SET batch_id = excluded.batch_id, status = excluded.status, attempt = excluded.attempt,
    content_hash = excluded.content_hash, error_message = excluded.error_message,
    payload = excluded.payload, finished_at = excluded.finished_at,
    succeeded_hash = coalesce(excluded.succeeded_hash, l.succeeded_hash),
    -- a success with the record already kept sends none (runner: Item.record_kept)
    record = CASE WHEN excluded.succeeded_hash IS NULL THEN l.record
                  WHEN excluded.succeeded_hash = l.succeeded_hash
                      THEN coalesce(excluded.record, l.record)
                  ELSE excluded.record END,
    retired_batch = NULL;

-- name: truncate-outcomes
TRUNCATE pg_temp.ingestkit_outcomes;

-- name: restore-succeeded
-- Keys whose content went back to what last succeeded: their writes are in
-- place, so their latest outcome is that success again.
UPDATE ingestkit.latest
SET status = 'succeeded', content_hash = succeeded_hash, error_message = NULL, payload = NULL,
    attempt = 1, retired_batch = NULL
WHERE processor = %(processor)s
  AND key = ANY(ARRAY(SELECT json_array_elements_text(%(keys)s::json)));

-- name: last-failed
SELECT key, attempt, error_message, payload, content_hash
FROM ingestkit.latest
WHERE processor = %(processor)s AND status IN ('failed', 'error') AND retired_batch IS NULL
ORDER BY finished_at, key;

-- name: resolve-source-error
-- The source read to its end this batch: the error that it could not be read
-- (key '', no record) is over, so --lf no longer reads the whole source for it.
DELETE FROM ingestkit.latest
WHERE processor = %(processor)s AND key = '' AND status = 'error'
  AND coalesce(payload, 'null') = 'null'::jsonb;

-- name: last-failed-processors
SELECT DISTINCT processor FROM ingestkit.latest
WHERE status IN ('failed', 'error') AND retired_batch IS NULL;

-- name: deferred-constraints
-- Constraints checked at COMMIT unless told otherwise (quoted, for SET CONSTRAINTS).
-- Other sessions' temporary tables (another worker's commit guard) are not ours:
-- naming one fails once that session has ended and its temp schema is gone.
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.conname)
FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
WHERE c.condeferrable AND c.condeferred AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (n.oid = pg_my_temp_schema() OR n.nspname !~ '^pg_(toast_)?temp_')
  AND NOT (c.conname = 'ingestkit_guard' AND n.oid = pg_my_temp_schema());

-- name: table-oid
-- The table's oid, and whether reading it can show rows of other tables (a view,
-- a partitioned parent's children are its own): see Transaction.visible_to.
SELECT c.oid, c.relkind NOT IN ('r', 'p')
FROM (SELECT to_regclass(%s) AS oid) t LEFT JOIN pg_catalog.pg_class c ON c.oid = t.oid;

-- name: fk-parents
SELECT confrelid::oid FROM pg_constraint WHERE contype = 'f' AND conrelid = %s;

-- name: table-columns
-- A user's table's columns, and whether each is of a text type: a '' written
-- into any other column is NULL (typed columns, SPEC §7). Looked up once per
-- table per batch.
SELECT a.attname, t.typcategory = 'S' AS is_text
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- Looking back (lookback.py) ------------------------------------------------

-- name: recent-batches
SELECT id, started_at, finished_at, status, exit_code, hostname, counts, meta, argv,
       extract(epoch FROM coalesce(finished_at, now()) - started_at) AS seconds
FROM ingestkit.batches
ORDER BY started_at DESC
LIMIT %(limit)s;

-- name: find-batch
SELECT id, started_at, finished_at, status, exit_code, hostname, counts, meta, argv,
       extract(epoch FROM coalesce(finished_at, now()) - started_at) AS seconds
FROM ingestkit.batches
WHERE %(prefix)s = '' OR id::text LIKE %(prefix)s || '%%'
ORDER BY started_at DESC
LIMIT 2;

-- name: batch-items
SELECT processor, key, status, attempt, duration_ms, error_type, error_message, traceback,
       log, payload, finished_at, location, changes
FROM ingestkit.items
WHERE batch_id = %(batch_id)s AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))
ORDER BY finished_at, processor, key
LIMIT %(limit)s;

-- name: trace-key
SELECT i.batch_id, b.started_at AS batch_started_at, i.status, i.attempt, i.error_type,
       i.error_message, i.finished_at, i.location, i.changes
FROM ingestkit.items i JOIN ingestkit.batches b ON b.id = i.batch_id
WHERE hashtextextended(i.key, 0) = hashtextextended(%(key)s, 0)  -- items_key_idx
  AND i.key = %(key)s AND i.processor = %(processor)s
ORDER BY i.finished_at;

-- name: processor-summary
SELECT processor, status, count(*) AS n, sum(duration_ms) AS total_ms,
       avg(duration_ms) AS avg_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms
FROM ingestkit.items
WHERE batch_id = %(batch_id)s
GROUP BY processor, status
ORDER BY processor, status;

-- name: failure-samples
SELECT DISTINCT ON (processor, error_type, shape)
       processor, error_type, shape, error_message, traceback, key, location,
       count(*) OVER (PARTITION BY processor, error_type, shape) AS n,
       (array_agg(key) OVER (PARTITION BY processor, error_type, shape ORDER BY finished_at
                             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING))[1:5]
           AS sample_keys
FROM (
    SELECT *, regexp_replace(split_part(coalesce(error_message, ''), E'\n', 1),
                             $re$'[^']*'|"[^"]*"|\m\d+(\.\d+)?\M$re$, '…', 'g') AS shape
    FROM ingestkit.items
    WHERE batch_id = %(batch_id)s AND status IN ('failed', 'error')
) f
ORDER BY processor, error_type, shape, finished_at;

-- Shared batches (workers.py) ------------------------------------------------

-- name: open-dispatch
INSERT INTO ingestkit.dispatch (batch_id, options) VALUES (%(batch_id)s, %(options)s);

-- name: drop-dispatch
-- The queues of batches that are over (or of this one, when it ends). A task a
-- worker still holds is left for a later run to drop, rather than waited for.
DELETE FROM ingestkit.tasks
WHERE ctid = ANY (ARRAY (
    SELECT t.ctid FROM ingestkit.tasks t
    WHERE t.batch_id = %(batch_id)s OR NOT EXISTS (
        SELECT 1 FROM ingestkit.batches b WHERE b.id = t.batch_id AND b.status = 'running')
    FOR UPDATE SKIP LOCKED));
DELETE FROM ingestkit.results r
WHERE r.batch_id = %(batch_id)s OR NOT EXISTS (
    SELECT 1 FROM ingestkit.batches b WHERE b.id = r.batch_id AND b.status = 'running');
DELETE FROM ingestkit.batch_keys k
WHERE k.batch_id = %(batch_id)s OR NOT EXISTS (
    SELECT 1 FROM ingestkit.batches b WHERE b.id = k.batch_id AND b.status = 'running');
DELETE FROM ingestkit.dispatch d
WHERE d.batch_id = %(batch_id)s OR NOT EXISTS (
    SELECT 1 FROM ingestkit.batches b WHERE b.id = d.batch_id AND b.status = 'running');

-- name: dispatch-state
-- What a worker checks when it finds no task: is the batch done, or stopping?
SELECT d.options, d.fed, d.stop,
       EXISTS (SELECT 1 FROM ingestkit.tasks t WHERE t.batch_id = d.batch_id) AS pending,
       b.status, b.lock_key, d.problems
FROM ingestkit.dispatch d JOIN ingestkit.batches b ON b.id = d.batch_id
WHERE d.batch_id = %(batch_id)s;

-- name: find-running-batch
SELECT b.id FROM ingestkit.batches b JOIN ingestkit.dispatch d ON d.batch_id = b.id
WHERE b.status = 'running' AND b.id::text LIKE %(prefix)s || '%%'
ORDER BY b.started_at DESC
LIMIT 2;

-- name: batch-row
SELECT id, started_at, meta, lock_key, hostname, pid FROM ingestkit.batches WHERE id = %(id)s;

-- name: set-statement-timeout
SET statement_timeout = %s;

-- name: show-statement-timeout
SHOW statement_timeout;

-- name: set-local-statement-timeout
-- Sent before a chunk's bookkeeping: --item-timeout bounds the items' statements,
-- not the outcome writes, which keep the role's or database's own setting.
SET LOCAL statement_timeout = %s;

-- name: stay-connected
-- A batch's connections hold its locks: a DBA's idle timeouts must not end them
-- (a slow processor leaves the write connection idle in its transaction).
SET idle_in_transaction_session_timeout = 0;

-- name: stay-connected-14
SET idle_session_timeout = 0;

-- name: set-fed
UPDATE ingestkit.dispatch SET fed = true WHERE batch_id = %(batch_id)s;

-- name: set-stop
UPDATE ingestkit.dispatch SET stop = coalesce(stop, %(reason)s) WHERE batch_id = %(batch_id)s;

-- name: add-problem
UPDATE ingestkit.dispatch SET problems = problems || %(problem)s WHERE batch_id = %(batch_id)s;

-- name: put-task
INSERT INTO ingestkit.tasks (batch_id, seq, processor, fresh, size, items)
VALUES (%(batch_id)s, %(seq)s, %(processor)s, %(fresh)s, %(size)s, %(items)s);

-- name: pending-tasks
SELECT count(*), coalesce(sum(size), 0),
       (SELECT stop FROM ingestkit.dispatch WHERE batch_id = %(batch_id)s)
FROM ingestkit.tasks WHERE batch_id = %(batch_id)s;

-- name: claim-task
-- The row lock is the claim: it lasts as long as the worker's chunk transaction,
-- so a worker that dies (its connection closed) gives the task back at once.
-- Nothing is claimed once the batch stops, or once its leader is gone (the
-- leader's lock is free; taking it here holds it only until this transaction ends).
SELECT t.seq, t.processor, t.fresh, t.items
FROM ingestkit.tasks t
WHERE t.batch_id = %(batch_id)s
  AND (SELECT d.stop IS NULL FROM ingestkit.dispatch d WHERE d.batch_id = %(batch_id)s)
  AND (SELECT NOT pg_try_advisory_xact_lock(%(ns)s, %(lock_key)s))
  -- a file task another worker holds (hold-file-task) is not claimed, nor one whose
  -- file a joined worker cannot see (the leader's own workers read it)
  AND t.seq <> ALL (%(left)s::int[])
  AND (left(t.items, 1) <> '{' OR NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_locks l
      WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
        AND l.classid = %(lock_key)s::oid AND l.objid = t.seq::oid))
ORDER BY t.seq
LIMIT 1
FOR UPDATE OF t SKIP LOCKED;

-- name: hold-file-task
-- A worker holds a file task it claimed while it commits the file's chunks: a
-- session lock on one bigint (pg_locks shows it as classid lock_key, objid seq).
-- It ends with the worker's connection, and then the next worker takes the file on.
SELECT pg_try_advisory_lock((%(lock_key)s::int8 << 32) | %(seq)s::int8);

-- name: release-file-task
SELECT pg_advisory_unlock((%(lock_key)s::int8 << 32) | %(seq)s::int8);

-- name: move-file-task
-- A chunk of a file task commits: the task's progress moves past it. The old
-- progress must still be there: else another worker took the file on.
UPDATE ingestkit.tasks SET items = %(items)s
WHERE batch_id = %(batch_id)s AND seq = %(seq)s AND items = %(before)s;

-- name: end-file-task
DELETE FROM ingestkit.tasks
WHERE batch_id = %(batch_id)s AND seq = %(seq)s AND items = %(before)s;

-- name: reserve-keys
-- The keys of a file task's chunk, for that file: of two files of a batch with
-- the same key, the first to reserve it runs it. Autocommit, before the chunk runs.
INSERT INTO ingestkit.batch_keys (batch_id, processor, key, location, content_hash)
SELECT %(batch_id)s, %(processor)s, k.key, k.location, k.content_hash
FROM unnest(%(keys)s::text[], %(locations)s::text[], %(hashes)s::text[])
     AS k(key, location, content_hash)
ON CONFLICT DO NOTHING
RETURNING key;

-- name: reserved-keys
SELECT key, content_hash, location FROM ingestkit.batch_keys
WHERE batch_id = %(batch_id)s AND processor = %(processor)s AND key = ANY (%(keys)s::text[]);

-- name: reclaim-task
-- The claim again, after a processor's own ROLLBACK ended the transaction that held it.
SELECT t.seq, t.processor, t.fresh, t.items
FROM ingestkit.tasks t
WHERE t.batch_id = %(batch_id)s AND t.seq = %(seq)s
FOR UPDATE OF t SKIP LOCKED;

-- name: batch-still-running
-- Checked by a worker as its chunk commits. A run that marks the batch
-- interrupted (its leader died) waits for this lock, so it reads the history
-- after this chunk; a chunk that comes after the mark rolls back.
SELECT 1 FROM ingestkit.batches WHERE id = %(batch_id)s AND status = 'running' FOR SHARE;

-- name: finish-task
DELETE FROM ingestkit.tasks WHERE batch_id = %(batch_id)s AND seq = %(seq)s;

-- name: shrink-task
-- The worker stopped inside the task: what it did not run stays queued.
UPDATE ingestkit.tasks SET items = %(items)s, size = %(size)s
WHERE batch_id = %(batch_id)s AND seq = %(seq)s;

-- name: put-result
INSERT INTO ingestkit.results (batch_id, processor, unchanged, reports)
VALUES (%(batch_id)s, %(processor)s, %(unchanged)s, %(reports)s);

-- name: take-results
DELETE FROM ingestkit.results WHERE batch_id = %(batch_id)s
RETURNING processor, unchanged, reports;

-- name: count-workers
-- How many workers serve the batch now: the sessions holding its shared worker
-- lock (an advisory lock on two int4 keys shows them as classid, objid; objsubid 2).
SELECT count(*) FROM pg_catalog.pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND classid = (%(ns)s::int8 & 4294967295)::oid
  AND objid = (%(lock_key)s::int8 & 4294967295)::oid;

-- name: lock-worker
-- Held (shared) by every worker of a batch while it serves it.
SELECT pg_advisory_lock_shared(%(ns)s, %(lock_key)s);

-- name: unlock-worker
SELECT pg_advisory_unlock_shared(%(ns)s, %(lock_key)s);

-- name: lock-setup
-- Workers set up their wider fixtures one at a time: two CREATE TABLE IF NOT
-- EXISTS at once can fail in PostgreSQL.
SELECT pg_advisory_lock(%(ns)s, %(lock_key)s);

-- name: unlock-setup
SELECT pg_advisory_unlock(%(ns)s, %(lock_key)s);

-- name: lock-held
-- True while another session holds the lock (shared or not): a shared batch's
-- leader holds the batch's lock, and each worker a shared one, while they live.
SELECT NOT pg_try_advisory_xact_lock(%(ns)s, %(lock_key)s);

-- name: create-seen-keys
-- A processor's key fingerprints, once there are too many to keep in memory
-- (keyset.py): on the control connection, for duplicate detection only.
CREATE TEMP TABLE IF NOT EXISTS ingestkit_seen (fp bigint PRIMARY KEY);
TRUNCATE ingestkit_seen;

-- name: add-seen-keys
-- The fingerprints that were not there yet.
INSERT INTO ingestkit_seen SELECT unnest(%s::bigint[]) ON CONFLICT DO NOTHING RETURNING fp;

-- name: column-types
-- The types of a table's columns, to cast a staged text row into them (Loader).
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped;

-- History: partitions and pruning (recorder.py, prune.py) ----------------------

-- name: add-items-partitions
-- At each batch start: the current and the next month's partitions of
-- ingestkit.outcomes, when missing (a catalog read when they exist).
SELECT ingestkit.add_items_partitions(now(), 2);

-- name: prune-lock
-- One --prune at a time (session level, on the prune's connection).
SELECT pg_advisory_lock(%(ns)s);

-- name: prune-unlock
SELECT pg_advisory_unlock(%(ns)s);

-- name: prune-cutoff
SELECT now() - make_interval(secs => %(seconds)s);

-- name: prune-old-batches
-- The batches --prune takes the outcome rows of: started before the cutoff,
-- and over (a batch whose process died is marked interrupted first).
SELECT id FROM ingestkit.batches
WHERE started_at < %(cutoff)s AND status <> 'running'
ORDER BY started_at;

-- name: items-partitions
-- The partitions of ingestkit.outcomes (the rows of ingestkit.items) with their upper
-- bounds (NULL: the default one).
SELECT c.relname AS name,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), $re$TO \('([^']+)'\)$re$))[1]::timestamptz
           AS upper
FROM pg_catalog.pg_inherits h JOIN pg_catalog.pg_class c ON c.oid = h.inhrelid
WHERE h.inhparent = 'ingestkit.outcomes'::regclass
ORDER BY upper NULLS LAST, name;

-- name: prune-partition
-- A partition all of whose rows finished before the cutoff: dropped, rebuilt
-- with the rows it keeps, or pruned row by row (schema.sql).
SELECT removed, how FROM ingestkit.prune_items_partition(%(partition)s, %(cutoff)s);

-- name: prune-batch-items
-- One old batch's outcome rows, but for the latest outcome of each key.
DELETE FROM ingestkit.outcomes i
WHERE i.batch_no = (SELECT b.no FROM ingestkit.batches b WHERE b.id = %(batch_id)s)
  AND NOT EXISTS (SELECT 1 FROM ingestkit.latest l
                  JOIN ingestkit.processors p ON p.processor = l.processor
                  WHERE p.no = i.processor_no AND l.key = i.key
                    AND l.batch_id = %(batch_id)s);

-- name: prune-kept
-- Outcome rows of the old batches that stay: latest outcomes.
SELECT count(*) FROM ingestkit.items WHERE batch_id = ANY(%(batch_ids)s::uuid[]);

-- name: prune-batches
-- Old batch rows with no outcome rows left, that no latest outcome refers to.
DELETE FROM ingestkit.batches b
WHERE b.id = ANY(%(batch_ids)s::uuid[])
  AND NOT EXISTS (SELECT 1 FROM ingestkit.outcomes i WHERE i.batch_no = b.no)
  AND NOT EXISTS (SELECT 1 FROM ingestkit.latest l WHERE l.batch_id = b.id);

-- name: state-load
-- A processor's incremental state (the ``state`` fixture), read when it starts.
SELECT value FROM ingestkit.state WHERE processor = %(processor)s;

-- name: state-save
-- Written in the transaction of the chunk whose items changed the state.
INSERT INTO ingestkit.state (processor, value, batch_id, updated_at)
VALUES (%(processor)s, %(value)s::jsonb, %(batch_id)s, now())
ON CONFLICT (processor) DO UPDATE
SET value = EXCLUDED.value, batch_id = EXCLUDED.batch_id, updated_at = EXCLUDED.updated_at;

-- name: batch-argv
-- The batch's argv masked again: a credential became known after it was stored
-- (a read_http made by a source callable).
UPDATE ingestkit.batches SET argv = %(argv)s WHERE id = %(id)s;

-- The failure lifecycle (lastfailed.py, forget.py, lookback.py; SPEC §9) ----------

-- name: insert-items-changes
-- insert-items for a processor with history: each row that ran because its content
-- differs from the key's last succeeded record gets the fields that changed,
-- {"field": [before, after]} (a field that is new or gone has null on that side).
INSERT INTO ingestkit.outcomes (finished_at, duration_ms, batch_no, processor_no, attempt,
                                content_hash, key, status, error_type, error_message,
                                traceback, log, payload, location, changes,
                                content_hash_text)
SELECT to_timestamp(o.finished_epoch), o.duration_ms,
       (SELECT b.no FROM ingestkit.batches b WHERE b.id = %(batch_id)s), p.no, o.attempt,
       o.hash, o.key, o.status, o.error_type, o.error_message, o.traceback, o.log,
       CASE WHEN o.status IN ('failed', 'error') OR %(store_all)s THEN o.payload::jsonb END,
       o.location,
       CASE WHEN json_typeof(l.record) = 'object' AND json_typeof(o.payload) = 'object' THEN
           (SELECT jsonb_object_agg(f, jsonb_build_array(l.record::jsonb -> f,
                                                         o.payload::jsonb -> f))
            FROM jsonb_object_keys(l.record::jsonb || o.payload::jsonb) f
            WHERE l.record::jsonb -> f IS DISTINCT FROM o.payload::jsonb -> f)
       END,
       CASE WHEN o.hash IS NULL THEN o.content_hash END
FROM pg_temp.ingestkit_outcomes o
LEFT JOIN ingestkit.processors p ON p.processor = o.processor
LEFT JOIN ingestkit.latest l
       ON o.track AND l.processor = o.processor AND l.key = o.key
      AND l.record IS NOT NULL AND o.content_hash IS DISTINCT FROM l.succeeded_hash
ORDER BY o.seq;

-- name: retire-gone
-- A full read of the processor's source in this batch: its failed keys that got
-- no outcome in it (the source no longer yields them) are retired.
UPDATE ingestkit.latest
SET retired_batch = %(batch_id)s
WHERE processor = %(processor)s AND status IN ('failed', 'error') AND retired_batch IS NULL
  AND batch_id <> %(batch_id)s AND key <> ''
RETURNING key;

-- name: batch-changes
-- How many items of a batch changed a key's record, and a few of them.
SELECT processor, key, changes, count(*) OVER (PARTITION BY processor) AS n
FROM ingestkit.items
WHERE batch_id = %(batch_id)s AND changes IS NOT NULL AND changes <> '{}'::jsonb
ORDER BY processor, finished_at
LIMIT %(limit)s;

-- name: batch-changed-counts
SELECT processor, count(*) AS n
FROM ingestkit.items
WHERE batch_id = %(batch_id)s AND changes IS NOT NULL AND changes <> '{}'::jsonb
GROUP BY processor ORDER BY processor;

-- name: forget-candidates
-- The failures --forget may select: latest outcome failed or error (retired or not).
SELECT processor, key, status, attempt, payload, retired_batch
FROM ingestkit.latest
WHERE status IN ('failed', 'error')
ORDER BY processor, key;

-- name: forget-batch
-- A batch of its own for --forget: recorded finished at once, no lock to hold.
INSERT INTO ingestkit.batches (id, argv, hostname, pid, meta, status, finished_at,
                               exit_code, counts)
VALUES (%(id)s, %(argv)s, %(hostname)s, %(pid)s, %(meta)s, 'finished', now(), 0, %(counts)s);

-- name: forget-items
-- One outcome row per forgotten failure, and its latest outcome: skipped, Forgotten.
WITH f AS (
    SELECT * FROM unnest(%(processors)s::text[], %(keys)s::text[]) AS t(processor, key)
), items AS (
    INSERT INTO ingestkit.outcomes (batch_no, processor_no, key, status, attempt,
                                    content_hash, error_type, error_message, payload,
                                    content_hash_text)
    SELECT (SELECT b.no FROM ingestkit.batches b WHERE b.id = %(batch_id)s), p.no, l.key,
           'skipped', l.attempt, ingestkit.hash_uuid(l.content_hash), 'Forgotten',
           %(reason)s, l.payload,
           CASE WHEN ingestkit.hash_uuid(l.content_hash) IS NULL THEN l.content_hash END
    FROM ingestkit.latest l JOIN f USING (processor, key)
    LEFT JOIN ingestkit.processors p ON p.processor = l.processor
    WHERE l.status IN ('failed', 'error')
)
UPDATE ingestkit.latest l
SET status = 'skipped', batch_id = %(batch_id)s, error_message = %(reason)s,
    finished_at = now(), retired_batch = NULL
FROM f
WHERE l.processor = f.processor AND l.key = f.key AND l.status IN ('failed', 'error')
RETURNING l.processor, l.key;

-- name: batch-retired
-- The failed keys a batch found gone from their source.
SELECT processor, key, status, error_message
FROM ingestkit.latest
WHERE retired_batch = %(batch_id)s
ORDER BY processor, key
LIMIT %(limit)s;

-- name: retired-counts
SELECT processor, count(*) AS n
FROM ingestkit.latest
WHERE retired_batch IS NOT NULL
GROUP BY processor ORDER BY processor;

-- name: latest-of-key
SELECT status, attempt, retired_batch, record, payload
FROM ingestkit.latest
WHERE processor = %(processor)s AND key = %(key)s;

-- == the file ledger (ingestkit/files.py) ==

-- name: files-complete
-- The files a processor read completely: their content is not parsed again.
SELECT sha256, items FROM ingestkit.files
WHERE processor = %(processor)s AND status = 'complete';

-- name: files-record
-- The files a batch read, one row per (processor, path), the latest reading.
INSERT INTO ingestkit.files (processor, path, size, sha256, items, status, batch_id, finished_at)
SELECT %(processor)s, f.path, f.size, f.sha256, f.items, f.status, %(batch_id)s, now()
FROM unnest(%(paths)s::text[], %(sizes)s::bigint[], %(shas)s::text[], %(items)s::int[],
            %(statuses)s::text[]) AS f(path, size, sha256, items, status)
ON CONFLICT (processor, path) DO UPDATE
SET size = EXCLUDED.size, sha256 = EXCLUDED.sha256, items = EXCLUDED.items,
    status = EXCLUDED.status, batch_id = EXCLUDED.batch_id, finished_at = EXCLUDED.finished_at;

-- -- the turn of a worker's chunk (worker.py) ------------------------------------

-- name: earlier-tasks
-- A worker commits a task's chunk after the processor's earlier tasks, as one
-- process does, so that of two records whose writes conflict the first in the
-- source wins. Run on the worker's control connection before the chunk's
-- buffered rows are written. ``wait``: an earlier task is not committed yet and
-- the batch is not stopping. ``give_way``: the chunk should roll back and run
-- again later, because a session waits for a row it wrote (an earlier task's
-- worker, blocked by it) or an earlier task lies unclaimed (given back).
SELECT EXISTS (
           SELECT 1 FROM ingestkit.tasks t
           WHERE t.batch_id = %(batch_id)s AND t.processor = %(processor)s
             AND t.seq < %(seq)s)
       AND (SELECT d.stop IS NULL FROM ingestkit.dispatch d WHERE d.batch_id = %(batch_id)s)
       AS wait,
       EXISTS (
           SELECT 1 FROM pg_catalog.pg_stat_activity a
           WHERE a.datname = pg_catalog.current_database()
             AND %(pid)s = ANY (pg_catalog.pg_blocking_pids(a.pid)))
       OR EXISTS (
           SELECT 1 FROM ingestkit.tasks t
           WHERE t.batch_id = %(batch_id)s AND t.processor = %(processor)s
             AND t.seq < %(seq)s
           FOR KEY SHARE SKIP LOCKED)
       AS give_way;

-- Reports (html.py, notify.py) -----------------------------------------------

-- name: report-failed-items
SELECT processor, key, status, error_type, error_message, location, payload::text AS payload
FROM ingestkit.items
WHERE batch_id = %(batch_id)s AND status IN ('failed', 'error')
ORDER BY processor, finished_at
LIMIT %(limit)s;

-- name: report-logs
SELECT processor, key, status, log
FROM ingestkit.items
WHERE batch_id = %(batch_id)s AND log IS NOT NULL
ORDER BY processor, finished_at
LIMIT %(limit)s;

-- Speed (issue 16): lookups (lookup.py) -----------------------------------------

-- name: lookup-preloadable
-- Can lookups of one column be answered from a copy of the whole table, loaded
-- once (Lookup._auto_preload)? The column is text or varchar with a deterministic
-- collation (equal means the same string, as a Python dict compares keys), unique
-- by itself (one row per value; an inheritance parent's index does not cover its
-- children, a partitioned table's does); and about how many rows the table has.
SELECT a.atttypid IN ('text'::regtype, 'varchar'::regtype)
       AND (c.relkind = 'p' OR NOT c.relhassubclass)
       AND coalesce((SELECT co.collisdeterministic FROM pg_catalog.pg_collation co
                     WHERE co.oid = a.attcollation), true)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                   WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indisvalid
                     AND i.indnatts = 1 AND i.indkey[0] = a.attnum
                     AND i.indpred IS NULL AND i.indexprs IS NULL),
       c.reltuples
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
WHERE a.attrelid = %(oid)s AND a.attname = %(column)s AND a.attnum > 0
  AND NOT a.attisdropped;

-- name: failed-among-keys
-- --lf with node ids: does one of these keys have a failure to rerun?
SELECT EXISTS (
    SELECT 1 FROM ingestkit.latest
    WHERE processor = %(processor)s AND key = ANY(%(keys)s) AND status IN ('failed', 'error')
      AND retired_batch IS NULL
);


-- == leases (docs/workers.md, "Leases") =====================================

-- name: tcp-lease
-- How long a connection's locks outlive its machine: the server drops a connection
-- whose peer stopped answering after 10 s + 3 probes 5 s apart (TCP only).
SET tcp_keepalives_idle = 10;
SET tcp_keepalives_interval = 5;
SET tcp_keepalives_count = 3;

-- name: tcp-lease-12
-- ... and one whose sent data goes unacknowledged that long (a reply in flight).
SELECT set_config('tcp_user_timeout', %s::text, false);

-- name: lease-sweep
-- A beat of this process's lease, and the end of every lease of the batch that
-- went unrenewed: a worker's beat connection (application_name
-- 'ik-lease:BATCH:PID:PID', the pids of the connections it holds claims and locks
-- on) idle for longer than the lease. Its held connections are terminated, which
-- frees their claims and rejects their late commit, and so is the beat connection,
-- so a pid the server later reuses is never mistaken for one it held. Sessions of
-- roles this one may not signal are left alone (their own peers end them).
WITH stale AS (
    SELECT pid, usesysid, backend_start,
           substr(application_name, length(%(prefix)s) + 1) AS held
    FROM pg_stat_activity
    WHERE application_name LIKE %(prefix)s || '%%'
      AND pid <> pg_backend_pid()
      AND state = 'idle'
      AND state_change < now() - make_interval(secs => %(seconds)s)
), doomed AS (
    SELECT holder.pid, holder.usesysid
    FROM stale
    CROSS JOIN LATERAL unnest(string_to_array(stale.held, ':')) AS held(pid)
    JOIN pg_stat_activity AS holder ON holder.pid = held.pid::int
    WHERE holder.backend_start <= stale.backend_start
    UNION
    SELECT pid, usesysid FROM stale
)
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM doomed
WHERE pg_has_role(usesysid, 'MEMBER') OR pg_has_role('pg_signal_backend', 'MEMBER');

-- == the HTML report's failure lifecycle (ingestkit/html.py) ==

-- name: report-retired-counts
-- How many failed keys a batch found gone from their source, per processor.
SELECT processor, count(*) AS n
FROM ingestkit.latest
WHERE retired_batch = %(batch_id)s
GROUP BY processor ORDER BY processor;
