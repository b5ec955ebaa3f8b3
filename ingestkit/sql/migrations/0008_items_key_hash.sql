-- ingestkit.items' key index holds an 8-byte hash of each key instead of the key:
-- 16 bytes an entry whatever the key's length, for the lookups it serves (--trace:
-- equality on (processor, key), which re-checks the key itself). hashtextextended
-- is the hash PostgreSQL's hash partitioning relies on, so it stays the same across
-- releases. Building it reads all of ingestkit.items once, blocking writes meanwhile.
DO $mig$
BEGIN
    IF (SELECT c.relkind FROM pg_catalog.pg_class c
        WHERE c.oid = 'ingestkit.items'::regclass) NOT IN ('r', 'p') THEN
        RETURN;  -- items is a view over ingestkit.outcomes (0011): nothing to do
    END IF;
    DROP INDEX IF EXISTS ingestkit.items_key_idx;
    CREATE INDEX items_key_idx ON ingestkit.items (hashtextextended(key, 0));
END
$mig$;
