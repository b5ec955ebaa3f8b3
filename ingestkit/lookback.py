"""Looking back (plugin ``lookback``): the audit trail from the command line.

``--batches`` lists recent batches, ``--show [BATCH]`` one batch's items (by
``--status``), ``--trace NODEID[KEY]`` one record through every batch, and
``--export [BATCH]`` a batch's failures as CSV or JSON lines. Each takes
``--json`` for machine output. BATCH is an id, a unique prefix of one, or
``last`` (the default). Each first marks dead batches ``interrupted``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import decimal
import json
import shutil
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import pluggy
import psycopg2.errors
import psycopg2.extras

from .database import connect, dsn_secrets, mask_dsn, resolve_dsn
from .lastfailed import format_changes
from .outcomes import UsageError
from .queries import q
from .recorder import mark_interrupted
from .reports import COUNTED
from .schema import ensure_schema

if TYPE_CHECKING:
    from .config import Config

hookimpl = pluggy.HookimplMarker("ingestkit")

STATUSES = ("succeeded", "failed", "error", "skipped")


@hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lookback")
    add = group.add_argument
    add("--batches", action="store_true", help="list recent batches with their counts")
    add("--show", nargs="?", const="last", metavar="BATCH", help="show a batch's items")
    add("--trace", metavar="NODEID[KEY]", help="trace one record through every batch")
    add("--export", nargs="?", const="last", metavar="BATCH", help="export a batch's failures")
    add("--status", default=None, help="with --show: statuses to list (default: failed,error)")
    add("--format", choices=("csv", "jsonl"), default="csv", help="with --export")
    add("--limit", type=int, default=None, metavar="N", help="at most N rows")
    add("--json", action="store_true", help="machine-readable output")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    return value


def _dump(rows: Any, out: TextIO, mask: Callable[[str], str] = str) -> None:
    out.write(
        json.dumps(_masked(rows, mask), default=_jsonable, indent=2, ensure_ascii=False) + "\n"
    )


def _masked(value: Any, mask: Callable[[str], str]) -> Any:
    """``value`` with ``mask`` applied to every string in it (rows written before
    a secret was known to be one, e.g. an old batch's argv)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _masked(v, mask) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, mask) for v in value]
    return value


class LookBack:
    """Read-only queries over a database's ingestkit schema."""

    def __init__(self, config: Config, out: TextIO | None = None) -> None:
        self.config = config
        self.out = out or sys.stdout
        dsn, _origin = resolve_dsn(config)
        config.secrets.extend(dsn_secrets(dsn))
        self.dsn = mask_dsn(dsn)
        self.conn = connect(dsn, "ingestkit-lookback")
        self.conn.autocommit = True
        ensure_schema(self.conn)
        try:
            self.interrupted = mark_interrupted(self.conn)
        except psycopg2.errors.InsufficientPrivilege:  # a read-only role: look, don't mark
            self.interrupted = []

    def close(self) -> None:
        self.conn.close()

    def fetch(self, name: str, **params: Any) -> list[dict[str, Any]]:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(q(name), params)
            return [dict(r) for r in cur.fetchall()]

    def find_batch(self, ref: str) -> dict[str, Any]:
        prefix = "" if ref in ("", "last") else ref.lower()
        rows = self.fetch("find-batch", prefix=prefix)
        if not rows:
            raise UsageError(
                f"no batch {ref!r} in {self.dsn}" if prefix else f"no batches yet in {self.dsn}"
            )
        if prefix and len(rows) > 1:
            raise UsageError(f"batch prefix {ref!r} is ambiguous: give more of the id")
        return rows[0]

    def write(self, line: str = "") -> None:
        self.out.write(self.config.mask(line) + "\n")

    # -- the commands ------------------------------------------------------

    def batches(self, limit: int, as_json: bool) -> int:
        rows = self.fetch("recent-batches", limit=limit)
        if as_json:
            _dump(rows, self.out, self.config.mask)
            return 0
        if not rows:
            self.write("no batches yet")
            return 0
        retired = {r["processor"]: r["n"] for r in self.fetch("retired-counts")}
        self.write(f"{'batch':<8}  {'started':<19}  {'status':<11}  {'secs':>7}  counts")
        for r in rows:
            counts = r["counts"] or {}
            shown = ", ".join(f"{counts[s]} {s}" for s in COUNTED if counts.get(s)) or "-"
            dry = " (dry run)" if (r["meta"] or {}).get("dry_run") else ""
            self.write(
                f"{str(r['id'])[:8]}  {r['started_at']:%Y-%m-%d %H:%M:%S}  {r['status']:<11}  "
                f"{r['seconds']:>7.1f}  {shown}{dry}"
            )
        if retired:
            total = sum(retired.values())
            self.write(
                f"{total} retired failure(s) (gone from their source; --lf does not feed them):"
                f" {', '.join(f'{p} {n}' for p, n in retired.items())}"
            )
        return 0

    def show(self, ref: str, statuses: list[str] | None, limit: int | None, as_json: bool) -> int:
        batch = self.find_batch(ref)
        items = self.fetch("batch-items", batch_id=batch["id"], statuses=statuses, limit=limit)
        if as_json:
            _dump({"batch": batch, "items": items}, self.out, self.config.mask)
            return 0
        counts = batch["counts"] or {}
        shown = ", ".join(f"{counts[s]} {s}" for s in COUNTED if counts.get(s)) or "no items"
        started = f"{batch['started_at']:%Y-%m-%d %H:%M:%S}"
        self.write(f"batch {batch['id']} ({batch['status']}, started {started}): {shown}")
        which = ", ".join(statuses) if statuses else "all"
        self.write(f"{len(items)} item(s) with status {which}:")
        piped = not self.out.isatty()
        width = shutil.get_terminal_size((120, 20)).columns
        for item in items:
            line = f"{item['processor']}[{item['key']}] {item['status'].upper()}"
            message = (item["error_message"] or "").rstrip()
            if item["error_type"]:
                first = message.splitlines()[:1]
                line += f" {item['error_type']}: {first[0] if first else ''}"
            if not piped:  # a terminal: one line per item, as wide as it is
                self.write(line if len(line) <= width else line[: width - 1] + "…")
                continue
            # piped (to a file, grep, less): the whole message, where, and the record
            self.write(line)
            if item["location"]:
                self.write(f"    at: {item['location']}")
            rest = message.splitlines()[1:]
            for more in rest:
                self.write(f"    {more}")
            if item["payload"] is not None:
                self.write(f"    record: {json.dumps(item['payload'], ensure_ascii=False)}")
            if item["changes"]:
                self.write(f"    changed: {format_changes(item['changes'])}")
        retired = self.fetch("batch-retired", batch_id=batch["id"], limit=limit)
        if retired:
            keys = ", ".join(f"{r['processor']}[{r['key']}]" for r in retired)
            self.write(f"retired (gone from the source, --lf no longer feeds them): {keys}")
        return 0

    def trace(self, target: str, as_json: bool) -> int:
        if not (target.endswith("]") and "[" in target and "::" in target):
            raise UsageError(
                f"--trace takes a node id with a key: path::process_x[KEY], not {target!r}"
            )
        processor, _, key = target[:-1].partition("[")
        rows = self.fetch("trace-key", processor=processor, key=key)
        if as_json:
            _dump(rows, self.out, self.config.mask)
            return 0
        if not rows:
            self.write(f"{target}: no batch has touched this record")
            return 0
        self.write(f"{target}: {len(rows)} outcome(s)")
        for r in rows:
            error = ""
            if r["error_type"]:
                first = (r["error_message"] or "").splitlines()[:1]
                error = f"  {r['error_type']}: {first[0] if first else ''}"
            self.write(
                f"{r['finished_at']:%Y-%m-%d %H:%M:%S}  batch {str(r['batch_id'])[:8]}  "
                f"{r['status']:<9}  attempt {r['attempt']}{error}"
            )
            if r["changes"]:
                self.write(f"    changed: {format_changes(r['changes'])}")
        now = self.fetch("latest-of-key", processor=processor, key=key)
        if now and now[0]["retired_batch"] is not None:
            self.write(
                f"retired by batch {str(now[0]['retired_batch'])[:8]}: gone from the source,"
                " --lf no longer feeds it"
            )
        return 0

    def export(self, ref: str, fmt: str, statuses: list[str] | None, limit: int | None) -> int:
        batch = self.find_batch(ref)
        items = self.fetch(
            "batch-items",
            batch_id=batch["id"],
            statuses=statuses or ["failed", "error"],
            limit=limit,
        )
        columns = [
            "processor",
            "key",
            "status",
            "attempt",
            "error_type",
            "error_message",
            "location",
            "finished_at",
            "payload",
            "changes",
        ]
        if fmt == "jsonl":
            for item in items:
                row = {c: _jsonable(item[c]) for c in columns}
                self.out.write(json.dumps(row, ensure_ascii=False) + "\n")
            return 0
        writer = csv.writer(self.out)
        writer.writerow(["batch_id", *columns])
        for item in items:
            values = [_jsonable(item[c]) for c in columns]
            for i in (-2, -1):  # payload and changes: JSON text in one cell, empty for none
                values[i] = "" if values[i] is None else json.dumps(values[i], ensure_ascii=False)
            writer.writerow([str(batch["id"]), *map(_csv_cell, values)])
        return 0


def _csv_cell(value: object) -> object:
    """A cell a spreadsheet will not run as a formula (OWASP "CSV injection"):
    text starting with ``=``, ``+``, ``-``, ``@``, tab or CR gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


def _statuses(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if "all" in names:
        return None
    unknown = [s for s in names if s not in STATUSES]
    if unknown:
        raise UsageError(
            f"--status: unknown status {', '.join(unknown)} (use {', '.join(STATUSES)}, all)"
        )
    return names


@hookimpl(tryfirst=True)
def ingestkit_cmdline_main(config: Config) -> int | None:
    option = config.option
    if not (option.batches or option.show or option.trace or option.export):
        return None
    try:
        return _look_back(config)
    except psycopg2.errors.InsufficientPrivilege as exc:
        first = (str(exc).strip().splitlines() or ["permission denied"])[0]
        raise UsageError(
            f"{first}: looking back needs to read schema ingestkit; as its owner, run "
            "GRANT USAGE ON SCHEMA ingestkit TO <role>; "
            "GRANT SELECT ON ALL TABLES IN SCHEMA ingestkit TO <role>"
        ) from None


def _look_back(config: Config) -> int:
    option = config.option
    if getattr(option, "html", None) and option.show:
        from .html import write_html

        look = LookBack(config)
        try:
            batch = look.find_batch(option.show)
            write_html(look.conn, batch["id"], option.html, config.mask, option.html_template)
            look.write(f"wrote {option.html} for batch {batch['id']}")
            return 0
        finally:
            look.close()
    look = LookBack(config)
    try:
        if option.batches:
            return look.batches(option.limit or 20, option.json)
        if option.show:
            statuses = _statuses(option.status) if option.status else ["failed", "error"]
            return look.show(option.show, statuses, option.limit, option.json)
        if option.trace:
            return look.trace(option.trace, option.json)
        return look.export(option.export, option.format, _statuses(option.status), option.limit)
    finally:
        look.close()
