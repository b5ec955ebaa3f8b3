"""ingestkit under a least-privilege role: it may create only in its own schema
and write the target tables."""

import uuid

import psycopg2
import psycopg2.extensions
import pytest

PIPELINE = """
import ingestkit

@ingestkit.source([{"id": i, "v": "x%d" % i} for i in range(10)], key="id")
def process_t(record, db, lookup):
    lookup("kinds", code="a")
    db.insert("t", record)
"""


@pytest.fixture
def etl_role(project):
    """A login role that owns schema ingestkit and may only write table t."""
    role = f"etl_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(project.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE ROLE "{role}" LOGIN')
        cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        cur.execute("SELECT current_database()")
        (database,) = cur.fetchone()
        cur.execute(f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC')
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        cur.execute("CREATE TABLE kinds (id serial PRIMARY KEY, code text)")
        cur.execute("INSERT INTO kinds (code) VALUES ('a')")
        cur.execute(f'GRANT SELECT, INSERT ON t TO "{role}"')
        cur.execute(f'GRANT SELECT ON kinds TO "{role}"')
    params = psycopg2.extensions.parse_dsn(project.dsn)
    params["user"] = role
    yield role, psycopg2.extensions.make_dsn(**params)
    with admin.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS ingestkit CASCADE")
        cur.execute(f'DROP OWNED BY "{role}"')
        cur.execute(f'DROP ROLE "{role}"')
    admin.close()


def test_a_role_without_create_on_the_database_gets_one_clear_line(project, etl_role):
    _role, dsn = etl_role
    project.write("ingest_t.py", PIPELINE)
    proc = project.cli("--dsn", dsn, dsn=False)
    assert proc.returncode == 4, proc.stdout
    assert "CREATE SCHEMA ingestkit AUTHORIZATION" in proc.stdout
    assert "Traceback" not in proc.stdout


def test_works_with_its_own_schema_and_write_access_to_the_targets(project, etl_role):
    role, dsn = etl_role
    admin = psycopg2.connect(project.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE SCHEMA ingestkit AUTHORIZATION "{role}"')
    admin.close()
    project.write("ingest_t.py", PIPELINE)
    proc = project.cli("--dsn", dsn, dsn=False)
    assert proc.returncode == 0, proc.stdout
    assert project.scalar("SELECT count(*) FROM t") == 10
    assert project.scalar("SELECT count(*) FROM ingestkit.items WHERE status = 'succeeded'") == 10
    again = project.cli("--dsn", dsn, "--batches", dsn=False)
    assert again.returncode == 0 and "10 succeeded" in again.stdout
