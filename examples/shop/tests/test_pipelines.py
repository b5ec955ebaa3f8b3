"""The shop's own tests of its pipelines, with the pytest plugin ingestkit ships.

``ingestkit_run(folder, *args)`` runs ingestkit in-process on a throwaway
database (``INGESTKIT_TEST_DSN``'s server, or an embedded PostgreSQL) and
returns the exit code, the counts and every item's outcome row.
"""

import shutil
from pathlib import Path

import pytest

SHOP = Path(__file__).parent.parent


@pytest.fixture
def shop(tmp_path):
    """A copy of the shop, so that tests can edit its data files."""
    copy = tmp_path / "shop"
    shutil.copytree(SHOP, copy, ignore=shutil.ignore_patterns(".ingestkit", "tests"))
    return copy


def test_good_rows_go_in_and_bad_rows_fail_alone(ingestkit_run, shop):
    result = ingestkit_run(shop)
    assert result.exit_code == 1
    assert result.counts == {"succeeded": 163, "failed": 5}
    assert result.by_key()["1017"]["error_type"] == "LookupMissing"
    assert result.query("SELECT count(*) AS n FROM customers")[0]["n"] == 38


def test_a_rerun_skips_what_is_already_in(ingestkit_run, shop):
    ingestkit_run(shop)
    again = ingestkit_run(shop, "-k", "countries or customers")
    assert again.counts == {"unchanged": 46, "failed": 2}


def test_fixing_the_amount_parser_fixes_the_order(ingestkit_run, shop):
    ingestkit_run(shop)
    conftest = shop / "pipelines" / "conftest.py"
    # accept thousands separators ("1,299.00"), then rerun only what failed
    fixed = conftest.read_text().replace(
        "    def parse(text):\n", '    def parse(text):\n        text = text.replace(",", "")\n'
    )
    conftest.write_text(fixed)
    rerun = ingestkit_run(shop, "--lf")
    assert rerun.statuses()["5023"] == "succeeded"
