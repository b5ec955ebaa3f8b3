-- The file ledger (ingestkit/files.py): every file a reader read, per processor.
-- A file whose sha256 was read completely (status 'complete') is not parsed again.
-- IF NOT EXISTS: safe to apply again if this migration is renumbered at a merge.
CREATE TABLE IF NOT EXISTS ingestkit.files (
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
CREATE INDEX IF NOT EXISTS files_processor_sha256_idx ON ingestkit.files (processor, sha256);
