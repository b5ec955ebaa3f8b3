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
