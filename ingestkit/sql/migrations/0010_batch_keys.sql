-- Under -n a folder of files is split by file: each worker reads whole files.
-- A key found in two files of a batch runs once: the keys of file tasks are
-- reserved here (dispatch.py). Unlogged: it lives only as long as its batch.
CREATE UNLOGGED TABLE IF NOT EXISTS ingestkit.batch_keys (
    batch_id      uuid NOT NULL,
    processor     text NOT NULL,
    key           text NOT NULL,
    location      text,
    content_hash  text,
    PRIMARY KEY (batch_id, processor, key)
);
