"""``--prune --keep DAYS`` (plugin ``prune``): history that lasts, at a bounded size.

Removes the outcome rows of batches that started more than DAYS days ago,
except each key's latest outcome (with its stored record): ``--lf``, "already
ingested" and ``item.attempt`` read ``ingestkit.latest``, which is never pruned,
and ``--trace`` still finds every key's latest outcome. Then removes those
batches' rows from ``ingestkit.batches`` when nothing refers to them any more.

``ingestkit.items`` is partitioned by month of ``finished_at``: a month whose
rows are all older than the cutoff is dropped whole, or rebuilt with the few
rows it keeps; the rest is deleted batch by batch. Running batches are never
pruned, and a run may go on while a prune runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import pluggy
from psycopg2.extensions import connection, cursor

from .database import connect, dsn_password, mask_dsn, resolve_dsn
from .outcomes import UsageError
from .queries import q
from .recorder import mark_interrupted
from .schema import ensure_schema

if TYPE_CHECKING:
    from .config import Config

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Key of the advisory lock that lets one prune at a time run.
PRUNE_LOCK = 0x696B_0004
#: More days than this are no cutoff (and overflow a timedelta).
MAX_DAYS = 1_000_000


@hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prune")
    group.add_argument(
        "--prune",
        action="store_true",
        help="delete outcome rows of batches older than --keep DAYS (each key's latest stays)",
    )
    group.add_argument(
        "--keep", type=float, metavar="DAYS", default=None, help="with --prune: days to keep"
    )


@hookimpl(tryfirst=True)
def ingestkit_cmdline_main(config: Config) -> int | None:
    option = config.option
    if not _wants_prune(option):
        return None
    dsn, _origin = resolve_dsn(config)
    password = dsn_password(dsn)
    if password:
        config.secrets.append(password)
    conn = connect(dsn, "ingestkit-prune")
    conn.autocommit = True
    try:
        ensure_schema(conn)
        mark_interrupted(conn)
        result = prune(conn, datetime.timedelta(days=option.keep))
    finally:
        conn.close()
    if getattr(option, "json", False):
        print(json.dumps(result, default=str))
    else:
        _report(result, option.keep, dsn)
    sys.stdout.flush()
    return 0


def _wants_prune(option: argparse.Namespace) -> bool:
    """Whether ``--prune`` was given; a usage error for ``--keep`` without it or a bad value."""
    if option.keep is not None and not option.prune:
        raise UsageError("--keep DAYS goes with --prune")
    if not option.prune:
        return False
    if option.keep is None:
        raise UsageError("--prune needs --keep DAYS: how many days of history to keep")
    if not 0 <= option.keep <= MAX_DAYS:  # also NaN
        raise UsageError(f"--keep takes a number of days, 0 or more, not {option.keep:g}")
    return True


def _report(result: dict[str, Any], keep: float, dsn: str) -> None:
    days = f"{keep:g} day{'s' if keep != 1 else ''}"
    print(
        f"pruned {result['items']:,} outcome row(s) and {result['batches']:,} batch row(s)"
        f" of {result['old_batches']:,} batch(es) older than {days}"
        f" (started before {result['cutoff']:%Y-%m-%d %H:%M:%S %Z}) in {mask_dsn(dsn)}"
    )
    if result["kept"]:
        print(f"kept {result['kept']:,} of their outcome rows: the latest outcome of each key")
    if result["dropped"] or result["rebuilt"]:
        print(
            f"partitions of ingestkit.items: {result['dropped']} dropped,"
            f" {result['rebuilt']} rebuilt"
        )


def prune(conn: connection, keep: datetime.timedelta) -> dict[str, Any]:
    """Prune history older than ``keep``; return what was removed and kept."""
    removed = kept = batches = 0
    how: Counter[str] = Counter()
    with conn.cursor() as cur:
        cur.execute(q("prune-lock"), {"ns": PRUNE_LOCK})
        try:
            cur.execute(q("prune-cutoff"), {"seconds": keep.total_seconds()})
            cutoff = _one(cur)[0]
            cur.execute(q("prune-old-batches"), {"cutoff": cutoff})
            old = [str(row[0]) for row in cur.fetchall()]
            if old:
                cur.execute(q("items-partitions"))
                for name, upper in cur.fetchall():
                    if upper is not None and upper <= cutoff:  # every row in it is old
                        cur.execute(q("prune-partition"), {"partition": name, "cutoff": cutoff})
                        count, done = _one(cur)
                        removed += count
                        how[done] += 1
                for batch_id in old:  # the rest, a transaction per batch: short locks
                    cur.execute(q("prune-batch-items"), {"batch_id": batch_id})
                    removed += cur.rowcount
                cur.execute(q("prune-kept"), {"batch_ids": old})
                kept = _one(cur)[0]
                cur.execute(q("prune-batches"), {"batch_ids": old})
                batches = cur.rowcount
        finally:
            cur.execute(q("prune-unlock"), {"ns": PRUNE_LOCK})
    return {
        "cutoff": cutoff,
        "old_batches": len(old),
        "items": removed,
        "kept": kept,
        "batches": batches,
        "dropped": how["dropped"],
        "rebuilt": how["rebuilt"],
    }


def _one(cur: cursor) -> tuple[Any, ...]:
    """The row of a query that always returns one."""
    row = cur.fetchone()
    assert row is not None
    return row
