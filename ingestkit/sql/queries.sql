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

-- name: analyze
-- After a large first load the planner's row estimates for ingestkit.latest are
-- stale until autovacuum gets to it, and the next run's history reads would scan.
ANALYZE ingestkit.latest;

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
SELECT key, status, attempt, error_message, succeeded_hash
FROM ingestkit.latest
WHERE processor = %(processor)s AND key = ANY(%(keys)s);

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
    payload        jsonb,
    finished_epoch double precision,
    location       text,
    track          boolean
);

-- name: outcomes-copy
COPY pg_temp.ingestkit_outcomes FROM STDIN;

-- A chunk's outcome rows go from the temp table into the audit trail and the
-- latest-state table, in the transaction of the chunk's own writes: the three
-- blocks below, sent as one statement (recorder.py).

-- name: insert-items
INSERT INTO ingestkit.items (batch_id, processor, key, status, attempt, content_hash,
                             duration_ms, error_type, error_message, traceback, log,
                             payload, finished_at, location)
SELECT %(batch_id)s, processor, key, status, attempt, content_hash, duration_ms,
       error_type, error_message, traceback, log, payload,
       to_timestamp(finished_epoch), location
FROM pg_temp.ingestkit_outcomes ORDER BY seq;

-- name: insert-latest
-- Followed by latest-on-conflict, unless no key of the chunk can have a row
-- yet (a first load): a plain insert costs a quarter less than an upsert.
INSERT INTO ingestkit.latest AS l (processor, key, batch_id, status, attempt, content_hash,
                                   error_message, payload, finished_at, succeeded_hash)
SELECT DISTINCT ON (processor, key)
       processor, key, %(batch_id)s, status, attempt, content_hash, error_message,
       CASE WHEN status IN ('failed', 'error') THEN payload END,
       to_timestamp(finished_epoch),
       CASE WHEN status = 'succeeded' THEN content_hash END
FROM pg_temp.ingestkit_outcomes
WHERE track
ORDER BY processor, key, seq DESC

-- name: latest-on-conflict
ON CONFLICT (processor, key) DO UPDATE
SET batch_id = excluded.batch_id, status = excluded.status, attempt = excluded.attempt,
    content_hash = excluded.content_hash, error_message = excluded.error_message,
    payload = excluded.payload, finished_at = excluded.finished_at,
    succeeded_hash = coalesce(excluded.succeeded_hash, l.succeeded_hash);

-- name: truncate-outcomes
TRUNCATE pg_temp.ingestkit_outcomes;

-- name: restore-succeeded
-- Keys whose content went back to what last succeeded: their writes are in
-- place, so their latest outcome is that success again.
UPDATE ingestkit.latest
SET status = 'succeeded', content_hash = succeeded_hash, error_message = NULL, payload = NULL,
    attempt = 1
WHERE processor = %(processor)s AND key = ANY(%(keys)s);

-- name: last-failed
SELECT key, attempt, error_message, payload, content_hash
FROM ingestkit.latest
WHERE processor = %(processor)s AND status IN ('failed', 'error')
ORDER BY finished_at, key;

-- name: resolve-source-error
-- The source read to its end this batch: the error that it could not be read
-- (key '', no record) is over, so --lf no longer reads the whole source for it.
DELETE FROM ingestkit.latest
WHERE processor = %(processor)s AND key = '' AND status = 'error'
  AND coalesce(payload, 'null') = 'null'::jsonb;

-- name: last-failed-processors
SELECT DISTINCT processor FROM ingestkit.latest WHERE status IN ('failed', 'error');

-- name: deferred-constraints
-- Constraints checked at COMMIT unless told otherwise (quoted, for SET CONSTRAINTS).
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.conname)
FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
WHERE c.condeferrable AND c.condeferred AND n.nspname NOT IN ('pg_catalog', 'information_schema');

-- name: table-oid
SELECT to_regclass(%s)::oid;

-- name: fk-parents
SELECT confrelid::oid FROM pg_constraint WHERE contype = 'f' AND conrelid = %s;

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
       log, payload, finished_at, location
FROM ingestkit.items
WHERE batch_id = %(batch_id)s AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))
ORDER BY finished_at, processor, key
LIMIT %(limit)s;

-- name: trace-key
SELECT i.batch_id, b.started_at AS batch_started_at, i.status, i.attempt, i.error_type,
       i.error_message, i.finished_at, i.location
FROM ingestkit.items i JOIN ingestkit.batches b ON b.id = i.batch_id
WHERE i.processor = %(processor)s AND i.key = %(key)s
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
SELECT id, started_at, meta, lock_key FROM ingestkit.batches WHERE id = %(id)s;

-- name: set-statement-timeout
SET statement_timeout = %s;

-- name: worker-lease
-- How long a worker's claims outlive its machine: the server drops a connection
-- whose peer stopped answering after 10 s + 3 probes 5 s apart (TCP only).
SET tcp_keepalives_idle = 10;
SET tcp_keepalives_interval = 5;
SET tcp_keepalives_count = 3;

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
ORDER BY t.seq
LIMIT 1
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
