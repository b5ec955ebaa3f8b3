-- Incremental state (the ``state`` fixture, ingestkit/state.py): one JSON object
-- per processor, written in the transaction of the chunk whose items changed it.
-- IF NOT EXISTS: safe to apply again if this migration is renumbered at a merge.
CREATE TABLE IF NOT EXISTS ingestkit.state (
    processor   text PRIMARY KEY,            -- node id
    value       jsonb NOT NULL DEFAULT '{}'::jsonb,
    batch_id    uuid,                        -- the batch that wrote it last
    updated_at  timestamptz NOT NULL DEFAULT now()
);
