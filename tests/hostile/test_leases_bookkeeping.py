"""The bytes of history (issue #20): ingestkit.items' key index holds a hash of the
key (migration 0008), and --trace still finds every key through it, whatever the
key holds. Sizes themselves are measured in benchmarks/run.py (--only history)."""

from __future__ import annotations

import json

import psycopg2

from ingestkit.queries import q

KEYS = ["1", 'it\'s "quoted"', "ключ|ü|😀", " padded ", "x" * 3000]

ROWS = f"""
import ingestkit

@ingestkit.source([{{"k": k}} for k in {KEYS!r}], key="k")
def process_row(record):
    if record["k"] == "1":
        raise ValueError("one")
"""


def key_index(project) -> str:
    return project.scalar("SELECT pg_get_indexdef('ingestkit.items_key_idx'::regclass)")


def traced(project, key: str) -> list[str]:
    out = project.run("--trace", f"ingest_rows.py::process_row[{key}]", "--json").output
    return [t["status"] for t in json.loads(out)]


def test_the_key_index_is_a_hash_and_trace_uses_it(project):
    project.write("ingest_rows.py", ROWS)
    assert project.run().exit_code == 1
    assert "hashtextextended(key, (0)::bigint)" in key_index(project)
    conn = psycopg2.connect(project.dsn)
    with conn.cursor() as cur:
        cur.execute("SET enable_seqscan = off")
        cur.execute("EXPLAIN " + q("trace-key"), {"processor": "p", "key": "k"})
        plan = "\n".join(r[0] for r in cur.fetchall())
    conn.close()
    assert "items_key_idx" in plan or "items_default_hashtextextended_idx" in plan, plan
    assert traced(project, "1") == ["failed"]
    assert traced(project, KEYS[1]) == ["succeeded"]
    assert traced(project, KEYS[2]) == ["succeeded"]
