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
CREATE TABLE ingestkit.items (
    batch_id       uuid NOT NULL,  -- ingestkit.batches (id); no foreign key: see 0003
    processor      text NOT NULL,
    key            text NOT NULL,
    status         text NOT NULL CHECK (status IN ('succeeded', 'failed', 'error', 'skipped')),
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
);
CREATE INDEX items_batch_status_idx ON ingestkit.items (batch_id, status);
CREATE INDEX items_processor_key_idx ON ingestkit.items (processor, key);

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
    PRIMARY KEY (processor, key)
);
CREATE INDEX latest_failed_idx ON ingestkit.latest (processor, key)
    WHERE status IN ('failed', 'error');

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

-- Incremental state (the ``state`` fixture, ingestkit/state.py): one JSON object
-- per processor, written in the transaction of the chunk whose items changed it.
CREATE TABLE ingestkit.state (
    processor   text PRIMARY KEY,            -- node id
    value       jsonb NOT NULL DEFAULT '{}'::jsonb,
    batch_id    uuid,                        -- the batch that wrote it last
    updated_at  timestamptz NOT NULL DEFAULT now()
);
