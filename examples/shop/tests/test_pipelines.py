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
    assert result.counts == {"succeeded": 163, "failed": 4, "error": 1}
    assert result.by_key()["1017"]["error_type"] == "LookupMissing"
    assert result.query("SELECT count(*) AS n FROM customers")[0]["n"] == 38


def test_a_rerun_skips_what_is_already_in(ingestkit_run, shop):
    ingestkit_run(shop)
    again = ingestkit_run(shop, "-k", "countries or customers")
    assert again.counts == {"unchanged": 46, "failed": 2}


def test_a_typed_record_that_does_not_convert_is_an_error_naming_the_field(ingestkit_run, shop):
    result = ingestkit_run(shop)
    order = result.by_key()["5023"]
    assert order["error_type"] == "RecordInvalid"
    assert order["error_message"].endswith(
        "data/orders.csv, line 24: amount: '1,299.00' is not a decimal number"
    )
    # fix the data, then rerun as usual: the edited row runs, the rest is unchanged
    orders = shop / "data" / "orders.csv"
    orders.write_text(orders.read_text().replace('"1,299.00"', "1299.00"))
    again = ingestkit_run(shop, "-k", "orders")
    assert again.statuses()["5023"] == "succeeded"
    assert again.query("SELECT amount::text AS a FROM orders WHERE id = 5023")[0]["a"] == "1299.00"
