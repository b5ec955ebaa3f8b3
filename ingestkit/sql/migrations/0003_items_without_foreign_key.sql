-- ingestkit.items.batch_id is no longer a foreign key. Checked row by row, it
-- cost about a quarter of the recorder's time in PostgreSQL; only the recorder
-- writes items, always for its own batch's row. Delete a batch's items with it:
-- DELETE FROM ingestkit.items WHERE batch_id = ...; DELETE FROM ingestkit.batches ...
ALTER TABLE ingestkit.items DROP CONSTRAINT IF EXISTS items_batch_id_fkey;
