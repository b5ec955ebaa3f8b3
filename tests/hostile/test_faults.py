"""Faults and usage problems from the outside audit (issue 11): no secret in any
output, ``%`` in identifiers, faults reported in one line instead of as internal
errors, and a processor's ``SystemExit``.

SPEC §4: a usage problem (bad option, bad config, missing privilege) is one line
naming the problem, exit 4, never a traceback. §6: DSN passwords never reach
output or logs; nothing is string-formatted into SQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.parse
import uuid

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest

FAILING = """
import ingestkit

@ingestkit.source([{"id": i} for i in range(5)], key="id")
def process_t(record):
    if record["id"] == 3:
        raise ValueError("three is bad")
"""


def _with_password(dsn: str, raw: str) -> str:
    """``dsn`` (a URI) with the password part ``raw``, as written (percent-encoded)."""
    params = psycopg2.extensions.parse_dsn(dsn)
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    user = params.get("user", "postgres")
    if host.startswith("/"):  # a socket folder (the embedded server) goes in the query
        folder = urllib.parse.quote(host, safe="")
        return f"postgresql://{user}:{raw}@:{port}/{params['dbname']}?host={folder}"
    return f"postgresql://{user}:{raw}@{host}:{port}/{params['dbname']}"


# -- #6: a DSN password never reaches output ----------------------------------

RAW_PASSWORD = "Zq%40ss%2Fw0rd%25"  # percent-encoded as written in the URI
PASSWORD = "Zq@ss/w0rd%"  # what it decodes to


def _assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked in:\n{text}"


@pytest.mark.parametrize("form", ["separate", "equals", "workers", "query"])
def test_a_percent_encoded_password_is_masked_everywhere(project, tmp_path, form):
    """The server trusts the connection, so any password works; none may show."""
    dsn = _with_password(project.dsn, RAW_PASSWORD)
    if form == "query":  # postgresql://user@host/db?password=...
        user_part, _, rest = dsn.partition("@")
        joiner = "&" if "?" in rest else "?"
        dsn = f"{user_part.rsplit(':', 1)[0]}@{rest}{joiner}sslmode=disable&password={RAW_PASSWORD}"
    dsn_args = [f"--dsn={dsn}"] if form == "equals" else ["--dsn", dsn]
    workers = ["-n", "2"] if form == "workers" else []
    project.write("ingest_t.py", FAILING)
    run_html = tmp_path / "run.html"
    run = project.cli(*dsn_args, *workers, "--tb=long", "--html", str(run_html), dsn=False)
    assert run.returncode == 1, run.stdout
    _assert_no_secret(run_html.read_text(), "Zq")
    assert "ingestkit --lf --dsn" in run.stdout  # the rerun line names the (masked) DSN
    assert "***" in run.stdout
    _assert_no_secret(run.stdout, RAW_PASSWORD, PASSWORD, "Zq")
    (argv,) = [r["argv"] for r in project.query("SELECT argv FROM ingestkit.batches")]
    _assert_no_secret(json.dumps(argv), "Zq")
    assert any("***" in a for a in argv)
    html = tmp_path / "report.html"
    for args in (["--batches", "--json"], ["--show", "--json"], ["--show", "--html", str(html)]):
        look = project.cli(*dsn_args, *args, dsn=False)
        assert look.returncode == 0, look.stdout
        _assert_no_secret(look.stdout, "Zq")
    _assert_no_secret(html.read_text(), "Zq")


@pytest.mark.parametrize(
    "password_part, secrets",
    [
        ("password=Zq@ss/w0rd", ("Zq@ss/w0rd",)),
        ("password='Zq s\\'w0rd'", ("Zq s'w0rd", "Zq s\\'w0rd")),
        ("password = 'Zq%40w0rd'", ("Zq%40w0rd", "Zq@w0rd")),
    ],
)
def test_a_key_value_password_is_masked_everywhere(project, password_part, secrets):
    params = psycopg2.extensions.parse_dsn(project.dsn)
    params.pop("password", None)
    dsn = f"{psycopg2.extensions.make_dsn(**params)} {password_part}"
    project.write("ingest_t.py", FAILING)
    run = project.cli(f"--dsn={dsn}", dsn=False)
    assert run.returncode == 1, run.stdout
    assert "ingestkit --lf --dsn" in run.stdout
    _assert_no_secret(run.stdout, "Zq", *secrets)
    (argv,) = [r["argv"] for r in project.query("SELECT argv FROM ingestkit.batches")]
    _assert_no_secret(json.dumps(argv), "Zq")
    look = project.cli("--dsn", dsn, "--show", "--json", dsn=False)
    assert look.returncode == 0, look.stdout
    _assert_no_secret(look.stdout, "Zq")


def test_looking_back_masks_a_secret_in_rows_written_before(project, tmp_path):
    """A batch recorded by an older version with the raw password in its argv."""
    dsn = _with_password(project.dsn, RAW_PASSWORD)
    project.write("ingest_t.py", FAILING)
    assert project.cli("--dsn", dsn, dsn=False).returncode == 1
    project.query(
        "UPDATE ingestkit.batches SET argv = %s::jsonb",
        (json.dumps(["ingestkit", "--dsn", dsn, f"--dsn={dsn}", PASSWORD]),),
    )
    html = tmp_path / "old.html"
    for args in (["--batches", "--json"], ["--show", "--json"], ["--show", "--html", str(html)]):
        look = project.cli("--dsn", dsn, *args, dsn=False)
        assert look.returncode == 0, look.stdout
        _assert_no_secret(look.stdout, "Zq")
    _assert_no_secret(html.read_text(), "Zq")


def test_an_unreachable_database_masks_both_forms(project):
    dsn = _with_password(project.dsn, RAW_PASSWORD).replace(":5432/", ":1/")
    run = project.cli("--dsn", dsn, dsn=False)
    assert run.returncode == 4, run.stdout
    assert "cannot connect" in run.stdout
    _assert_no_secret(run.stdout, "Zq")


# -- #7: % in identifiers --------------------------------------------------------

PERCENT_NAMES = ["a%b", "a%%b", "x%sy", "%(k)s"]

PERCENT_PIPELINE = """
import ingestkit

NAMES = {names!r}

@ingestkit.fixture(scope="batch", autouse=True)
def tables(db):
    for i, name in enumerate(NAMES):
        db.execute(
            'CREATE TABLE "%s" ("id%%" serial PRIMARY KEY, "c%s" text UNIQUE, "v%%(x)s" int)'
            % (name.replace('"', '""'), str(i))
        )

@ingestkit.source([{{"n": n}} for n in range(len(NAMES))], key="n")
def process_insert(record, db, lookup):
    i = record["n"]
    name = NAMES[i]
    col = "c%d" % i
    db.insert(name, {{col: "ins", "v%(x)s": 1}})
    db.upsert(name, {{col: "ups", "v%(x)s": 2}}, conflict=(col,))
    db.upsert(name, {{col: "ups", "v%(x)s": 3}}, conflict=(col,))
    assert lookup(name, returning="v%(x)s", **{{col: "ups"}}) == 3
    assert lookup.get(name, returning="v%(x)s", **{{col: "none"}}) is None
    created = lookup.get_or_create(
        name, returning="id%", defaults={{"v%(x)s": 4}}, **{{col: "goc"}}
    )
    assert lookup.get_or_create(name, returning="id%", **{{col: "goc"}}) == created
    assert lookup.preload(name, col, returning="v%(x)s") == 3
    assert lookup(name, returning="v%(x)s", **{{col: "goc"}}) == 4
"""


def test_percent_signs_in_table_and_column_names(project):
    project.write("ingest_p.py", PERCENT_PIPELINE.format(names=PERCENT_NAMES))
    result = project.run()
    assert result.exit_code == 0, result.output
    assert [i["status"] for i in result.items] == ["succeeded"] * len(PERCENT_NAMES)
    for i, name in enumerate(PERCENT_NAMES):
        rows = project.query(f'SELECT "c{i}" AS c, "v%(x)s" AS v FROM "{name}" ORDER BY 1')
        assert rows == [
            {"c": "goc", "v": 4},
            {"c": "ins", "v": 1},
            {"c": "ups", "v": 3},
        ], name
    # nothing went to the table a %% collapses to
    assert project.scalar('SELECT count(*) FROM "a%%b"') == 3
    assert project.scalar('SELECT count(*) FROM "a%b"') == 3


# -- #11: SystemExit in a processor; batches.exit_code is the process's ------------

EXITING = """
import sys
import ingestkit

@ingestkit.source([{{"id": i}} for i in range(5)], key="id")
def process_a(record, db):
    db.execute("CREATE TABLE IF NOT EXISTS a (id int PRIMARY KEY)")
    db.execute("INSERT INTO a VALUES (%s)", (record["id"],))
    if record["id"] == 2:
        sys.exit({code})

@ingestkit.source([{{"id": i}} for i in range(3)], key="id")
def process_b(record, db):
    db.insert("a", {{"id": 100 + record["id"]}})
"""


@pytest.mark.parametrize("code", ["0", "3", "'bye'"])
def test_sys_exit_in_a_processor_fails_its_item_and_the_batch_goes_on(project, code):
    project.write("ingest_a.py", EXITING.format(code=code))
    run = project.cli()
    assert run.returncode == 1, run.stdout
    items = project.query("SELECT processor, key, status, error_type FROM ingestkit.items")
    statuses = {(i["processor"].split("::")[1], i["key"]): i["status"] for i in items}
    assert statuses == {
        **{("process_a", str(i)): "succeeded" for i in (0, 1, 3, 4)},
        ("process_a", "2"): "failed",
        **{("process_b", str(i)): "succeeded" for i in range(3)},
    }
    (failed,) = [i for i in items if i["status"] == "failed"]
    assert failed["error_type"] == "SystemExit"
    # rows in the target = succeeded items: the exiting item's row is rolled back
    assert project.scalar("SELECT array_agg(id ORDER BY id) FROM a") == [0, 1, 3, 4, 100, 101, 102]
    assert project.scalar("SELECT exit_code FROM ingestkit.batches") == 1
    assert "SystemExit" in run.stdout


EXITING_FIXTURE = """
import sys
import ingestkit

@ingestkit.fixture
def checked(record):
    if record["id"] == 1:
        sys.exit("no")
    yield record
    if record["id"] == 2:
        sys.exit(0)

@ingestkit.source([{"id": i} for i in range(4)], key="id")
def process_a(checked):
    pass
"""


def test_sys_exit_in_a_fixture_is_an_error_item(project):
    project.write("ingest_a.py", EXITING_FIXTURE)
    run = project.run()
    assert run.exit_code == 1, run.output
    got = {i["key"]: (i["status"], i["error_type"]) for i in run.items}
    assert got == {
        "0": ("succeeded", None),
        "1": ("error", "SystemExit"),
        "2": ("error", "SystemExit"),
        "3": ("succeeded", None),
    }
    assert run.batch["exit_code"] == 1


FAILING_FINISH = """
import ingestkit

@ingestkit.hookimpl(trylast=True)
def ingestkit_batch_finish(session, exitstatus):
    raise RuntimeError("a plugin broke after the batch row was finished")
"""


def test_an_internal_error_after_the_batch_finished_is_recorded_as_3(project):
    project.write("ingest_t.py", FAILING)
    project.write("conftest.py", FAILING_FINISH)
    run = project.cli()
    assert run.returncode == 3, run.stdout
    assert "INTERNAL ERROR" in run.stdout
    (batch,) = project.query("SELECT status, exit_code FROM ingestkit.batches")
    assert batch == {"status": "finished", "exit_code": 3}


# -- #10: faults and usage problems are one line, exit 4, nothing lost ---------------


@pytest.mark.parametrize(
    "toml, named",
    [
        ("paths = 3", ["paths = 3", 'paths = ["pipelines"]']),
        ("files = 5", ["files = 5", 'files = ["ingest_*.py"]']),
        ("functions = [1, 2]", ["functions = [1, 2]", "list of strings"]),
        ("dsn = 7", ["dsn = 7", "a string"]),
        ("addopts = 1", ["addopts = 1", "a string"]),
        ('store_payloads = "sometimes"', ['store_payloads = "sometimes"', '"failed"', '"all"']),
        ("store_payloads = true", ["store_payloads = true", '"failed"']),
    ],
)
def test_a_bad_config_value_is_one_line_naming_it_and_the_fix(project, toml, named):
    project.write("ingest_t.py", FAILING)
    project.write("ingestkit.toml", toml + "\n")
    run = project.cli()
    assert run.returncode == 4, run.stdout
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), run.stdout
    assert "ingestkit.toml" in lines[0]
    for text in named:
        assert text in lines[0], lines[0]


def test_a_tool_ingestkit_that_is_not_a_table_is_one_line(project):
    (project.root / "ingestkit.toml").unlink()
    project.write("pyproject.toml", "[tool]\ningestkit = 5\n")
    project.write("ingest_t.py", FAILING)
    run = project.cli()
    assert run.returncode == 4, run.stdout
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and "is not a table" in lines[0], run.stdout


def test_an_html_report_that_cannot_be_written_is_one_line(project, tmp_path):
    project.write("ingest_t.py", FAILING)
    (tmp_path / "file").write_text("")
    run = project.cli("--html", str(tmp_path / "file" / "report.html"))
    assert run.returncode == 4, run.stdout
    assert "Traceback" not in run.stdout
    (error,) = [line for line in run.stdout.splitlines() if line.startswith("ERROR")]
    assert "cannot write it" in error, error
    # the batch itself is recorded, with the code the process exited with
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 5
    assert project.scalar("SELECT exit_code FROM ingestkit.batches") == 4


def test_a_single_string_for_a_list_value_is_one_pattern(project):
    project.write("pipelines/ingest_t.py", FAILING)
    project.write("ingestkit.toml", 'paths = "pipelines"\nfiles = "ingest_*.py"\n')
    run = project.cli()
    assert run.returncode == 1, run.stdout
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 5


class Admin:
    """A superuser connection to the test's database that makes login roles."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.roles: list[str] = []
        self.database = self.scalar("SELECT current_database()")

    def scalar(self, statement: str):
        with self.conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchone()[0] if cur.description else None

    def role(self, *grants: str) -> str:
        """A login role with ``grants`` (``{role}`` and ``{db}`` filled in); its DSN."""
        name = f"ik_{uuid.uuid4().hex[:8]}"
        self.roles.append(name)
        self.scalar(f'CREATE ROLE "{name}" LOGIN')
        for grant in grants:
            self.scalar(grant.format(role=f'"{name}"', db=f'"{self.database}"'))
        params = psycopg2.extensions.parse_dsn(self.dsn)
        params["user"] = name
        return psycopg2.extensions.make_dsn(**params)

    def close(self) -> None:
        self.scalar("DROP SCHEMA IF EXISTS ingestkit CASCADE")
        for name in self.roles:
            self.scalar(f'DROP OWNED BY "{name}"')
            self.scalar(f'DROP ROLE "{name}"')
        self.conn.close()


@pytest.fixture
def admin(project):
    admin = Admin(project.dsn)
    yield admin
    admin.close()


def test_a_role_without_temp_gets_one_line_naming_the_grant(project, admin):
    admin.scalar(f'REVOKE TEMP ON DATABASE "{admin.database}" FROM PUBLIC')
    dsn = admin.role("CREATE SCHEMA ingestkit AUTHORIZATION {role}")
    project.write("ingest_t.py", FAILING)
    run = project.cli("--dsn", dsn, dsn=False)
    assert run.returncode == 4, run.stdout
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), run.stdout
    assert "GRANT TEMP ON DATABASE" in lines[0]
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--batches"],
        ["--batches", "--json"],
        ["--show"],
        ["--show", "--json"],
        ["--show", "--html", "REPORT"],
        ["--trace", "ingest_t.py::process_t[3]"],
        ["--export"],
        ["--export", "--format", "jsonl"],
    ],
)
def test_a_read_only_role_can_look_back(project, admin, tmp_path, args):
    project.write("ingest_t.py", FAILING)
    assert project.cli().returncode == 1
    # a batch left 'running' by a dead process: a read-only role cannot mark it
    project.query(
        "INSERT INTO ingestkit.batches (id, started_at, status, argv, hostname, counts, meta,"
        " lock_key) VALUES (gen_random_uuid(), now() - interval '1 day', 'running', '[]', 'h',"
        " '{}', '{}', 424242)"
    )
    dsn = admin.role(
        "GRANT USAGE ON SCHEMA ingestkit TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA ingestkit TO {role}",
    )
    args = [str(tmp_path / "r.html") if a == "REPORT" else a for a in args]
    look = project.cli("--dsn", dsn, *args, dsn=False)
    assert look.returncode == 0, look.stdout
    assert "INTERNAL ERROR" not in look.stdout and "ERROR:" not in look.stdout


def test_a_role_that_cannot_read_the_audit_trail_gets_one_line(project, admin):
    project.write("ingest_t.py", FAILING)
    assert project.cli().returncode == 1
    dsn = admin.role("GRANT USAGE ON SCHEMA ingestkit TO {role}")
    look = project.cli("--dsn", dsn, "--batches", dsn=False)
    assert look.returncode == 4, look.stdout
    lines = look.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), look.stdout
    assert "GRANT SELECT ON ALL TABLES IN SCHEMA ingestkit" in lines[0]


def test_a_role_missing_a_privilege_on_ingestkits_tables_gets_one_line(project, admin):
    project.write("ingest_t.py", FAILING)
    assert project.cli().returncode == 1  # the schema exists, owned by someone else
    dsn = admin.role(
        "GRANT USAGE ON SCHEMA ingestkit TO {role}",
        "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA ingestkit TO {role}",
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA ingestkit TO {role}",
    )
    run = project.cli("--dsn", dsn, dsn=False)
    assert run.returncode == 4, run.stdout
    assert "Traceback" not in run.stdout
    (error,) = [line for line in run.stdout.splitlines() if "ERROR" in line]
    assert error.startswith("ERROR: permission denied for table"), error
    assert "GRANT" in error
    assert project.scalar("SELECT count(*) FROM ingestkit.items") == 5  # the first run's


# -- #10: a disk full on the server -------------------------------------------------

BIG_RECORDS = """
import random
import ingestkit

def text(i):  # incompressible, and the same in every run
    return random.Random(i).randbytes(1000 if i < {n} // 2 else 5000).hex()

@ingestkit.source(
    [{{"id": i, "v": text(i)}} for i in range({n})],
    key="id",
)
def process_t(record, db):
    db.insert("t", record)
"""


@pytest.fixture
def full_tablespace(admin):
    """A tablespace on a 4 MiB tmpfs that this test mounts (root and a local server only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for a full disk needs root")
    data_dir = admin.scalar("SHOW data_directory")
    if not os.path.isdir(data_dir):
        pytest.skip(f"the server's data directory {data_dir} is not on this machine")
    mnt = tempfile.mkdtemp(prefix="ingestkit-full-", dir="/tmp")
    os.chmod(mnt, 0o755)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", mnt],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        os.rmdir(mnt)
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    name = f"ik_full_{uuid.uuid4().hex[:8]}"
    try:
        location = os.path.join(mnt, "ts")
        os.mkdir(location)
        os.chown(location, os.stat(data_dir).st_uid, os.stat(data_dir).st_gid)
        admin.scalar(f"CREATE TABLESPACE {name} LOCATION '{location}'")
        try:
            yield name
        finally:
            admin.scalar("DROP TABLE IF EXISTS t")
            admin.scalar(f'ALTER DATABASE "{admin.database}" RESET temp_tablespaces')
            admin.scalar(f'ALTER DATABASE "{admin.database}" RESET default_tablespace')
            admin.scalar("DROP TABLE IF EXISTS filler")
            for _ in range(50):  # the runs' temp tables go with their sessions
                try:
                    admin.scalar(f"DROP TABLESPACE {name}")
                    break
                except psycopg2.Error:
                    time.sleep(0.1)
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)


def _outcomes(project) -> dict[str, int]:
    rows = project.query("SELECT status, count(*) AS n FROM ingestkit.items GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


@pytest.mark.slow
def test_a_full_disk_under_the_target_table_fails_the_items_it_stops(project, full_tablespace):
    n = 1200  # 7 MB of text for a 4 MiB disk
    project.query(f"CREATE TABLE t (id int PRIMARY KEY, v text) TABLESPACE {full_tablespace}")
    project.write("ingest_t.py", BIG_RECORDS.format(n=n))
    run = project.cli()
    assert run.returncode == 1, run.stdout
    assert "Traceback (most recent call last)" not in run.stdout.split("FAILURES")[0]
    assert "INTERNAL ERROR" not in run.stdout
    assert "No space left on device" in run.stdout
    outcomes = _outcomes(project)
    assert outcomes["succeeded"] + outcomes["failed"] == n
    assert project.scalar("SELECT count(*) FROM t") == outcomes["succeeded"]
    # space freed: --lf ingests the rest, nothing doubled
    project.query("ALTER TABLE t SET TABLESPACE pg_default")
    again = project.cli("--lf")
    assert again.returncode == 0, again.stdout
    assert project.scalar("SELECT count(*) FROM t") == n
    assert (
        project.scalar("SELECT count(DISTINCT key) FROM ingestkit.items WHERE status = 'succeeded'")
        == project.scalar("SELECT count(*) FROM ingestkit.items WHERE status = 'succeeded'")
        == n
    )


@pytest.mark.slow
def test_a_full_disk_under_the_outcomes_stops_the_batch_in_one_line(
    project, admin, full_tablespace
):
    # the stored payloads of a chunk of 10 KB records fill the temp tablespace
    # the outcome rows go through; the first chunks, of 2 KB records, fit
    n = 1200
    project.query("CREATE TABLE t (id int PRIMARY KEY, v text)")
    project.query(f'ALTER DATABASE "{admin.database}" SET temp_tablespaces = {full_tablespace}')
    project.write("ingest_t.py", BIG_RECORDS.format(n=n))
    run = project.cli("--store-payloads", "all", "--chunk-size", "400")
    assert run.returncode == 2, run.stdout
    assert "Traceback" not in run.stdout and "INTERNAL ERROR" not in run.stdout
    (error,) = [line for line in run.stdout.splitlines() if line.startswith("ERROR")]
    assert "No space left on device" in error and "free" in error, error
    (batch,) = project.query("SELECT status, exit_code FROM ingestkit.batches")
    assert batch == {"status": "interrupted", "exit_code": 2}
    outcomes = _outcomes(project)
    assert set(outcomes) <= {"succeeded"}
    assert project.scalar("SELECT count(*) FROM t") == outcomes.get("succeeded", 0) < n
    # space freed: a plain rerun resumes where the batch stopped, nothing doubled
    project.query(f'ALTER DATABASE "{admin.database}" RESET temp_tablespaces')
    again = project.cli()
    assert again.returncode == 0, again.stdout
    assert project.scalar("SELECT count(*) FROM t") == n
    assert project.scalar("SELECT count(*) FROM ingestkit.items WHERE status = 'succeeded'") == n


@pytest.mark.slow
def test_a_full_disk_before_the_batch_is_one_line(project, admin, full_tablespace):
    """ingestkit's own tables go to the full disk: creating them fails."""
    admin.scalar(f"CREATE TABLE filler (v text) TABLESPACE {full_tablespace}")
    with pytest.raises(psycopg2.errors.DiskFull):
        for _ in range(100):
            admin.scalar(
                "INSERT INTO filler SELECT (SELECT string_agg(md5(random()::text || g || x), '')"
                " FROM generate_series(1, 64) x) FROM generate_series(1, 500) g"
            )
    admin.scalar(f'ALTER DATABASE "{admin.database}" SET default_tablespace = {full_tablespace}')
    project.write("ingest_t.py", FAILING)
    run = project.cli()
    assert run.returncode == 4, run.stdout
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), run.stdout
    assert "disk is full" in lines[0] and "No space left on device" in lines[0]
    admin.scalar("DROP TABLE filler")
    admin.scalar(f'ALTER DATABASE "{admin.database}" RESET default_tablespace')
