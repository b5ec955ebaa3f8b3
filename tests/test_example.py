"""The README example, through the pytest plugin users get (``ingestkit_run``)."""

import shutil
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "shop"


def test_shop_example_through_the_pytest_plugin(ingestkit_run, tmp_path):
    shop = tmp_path / "shop"
    shutil.copytree(EXAMPLE, shop, ignore=shutil.ignore_patterns(".ingestkit"))
    result = ingestkit_run(shop)
    assert result.exit_code == 1, result.output
    assert result.counts == {"succeeded": 163, "failed": 4, "error": 1}
    failed = {
        (i["processor"].split("::")[1], i["key"]): i["error_type"]
        for i in result.items
        if i["status"] in ("failed", "error")
    }
    assert failed == {
        ("process_customer", "1017"): "LookupMissing",
        ("process_customer", "1031"): "UniqueViolation",
        ("process_order", "5023"): "RecordInvalid",
        ("process_order", "5058"): "CheckViolation",
        ("process_order", "5094"): "ForeignKeyViolation",
    }
    assert result.query("SELECT count(*) AS n FROM orders")[0]["n"] == 117

    # fix one cause (the missing country): a plain rerun loads the new country,
    # retries the failed records and skips everything already ingested
    countries = shop / "data" / "countries.csv"
    countries.write_text(countries.read_text() + "NZ,New Zealand\n")
    again = ingestkit_run(shop)
    assert again.statuses()["1017"] == "succeeded"
    assert again.statuses()["NZ"] == "succeeded"
    assert again.counts == {"succeeded": 2, "failed": 3, "error": 1, "unchanged": 163}
    # the rest needs fixes in the data: --lf reruns exactly those four
    assert ingestkit_run(shop, "--lf").counts == {"failed": 3, "error": 1}
