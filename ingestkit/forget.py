"""``--forget SELECTION --reason TEXT`` (plugin ``forget``): stop feeding failures to ``--lf``.

The selected failures (node ids, with or without a key, paths, ``-k``) get an
outcome row with status ``skipped``, ``error_type`` ``Forgotten`` and the reason
as its message, in a batch of its own, so the audit trail shows who forgot
what and why (SPEC §9). Nothing else changes: a forgotten key that comes back
in its source runs again as any changed record does.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
from psycopg2.extras import Json

from .collection import _parse_selector
from .database import connect, dsn_secrets, mask_dsn, resolve_dsn
from .keyword import compile_expression
from .outcomes import UsageError
from .queries import q
from .recorder import mark_interrupted
from .schema import ensure_schema

if TYPE_CHECKING:
    from .config import Config

hookimpl = pluggy.HookimplMarker("ingestkit")

#: The ``error_type`` of a forgotten failure's outcome row.
FORGOTTEN = "Forgotten"


@hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("forgetting failures (no run)")
    group.add_argument(
        "--forget",
        action="store_true",
        help="stop feeding the selected failures (node ids, paths, -k) to --lf; needs --reason",
    )
    group.add_argument(
        "--reason", metavar="TEXT", help="with --forget: why, kept in the audit trail"
    )


class Selection:
    """Which (processor, key) pairs the command line selects, by their node ids."""

    def __init__(self, config: Config) -> None:
        self.rootdir = Path(config.rootdir).resolve()
        self.invocation_dir = Path(config.invocation_dir)
        self.matcher = compile_expression(config.option.keyword) if config.option.keyword else None
        self.targets = [self._target(arg) for arg in config.args]

    def _target(self, arg: str) -> tuple[str, str | None, str | None]:
        """``(path, processor name or None, key or None)`` of one argument."""
        path_part, _, rest = arg.partition("::")
        path = (self.invocation_dir / path_part).resolve()
        try:
            relative = path.relative_to(self.rootdir).as_posix()
        except ValueError:
            raise UsageError(f"--forget: {arg} is outside the rootdir {self.rootdir}") from None
        if not rest:
            return (relative if relative != "." else ""), None, None
        name, key = _parse_selector(rest)
        return relative, name, key

    def __call__(self, processor: str, key: str) -> bool:
        path, _, name = processor.partition("::")
        if self.matcher is not None:
            keywords = {name, Path(path).name, *Path(path).parent.parts}
            if not self.matcher({k.lower() for k in keywords}):
                return False
        if not self.targets:
            return True
        return any(self._matches(t, path, name, key) for t in self.targets)

    @staticmethod
    def _matches(
        target: tuple[str, str | None, str | None], path: str, name: str, key: str
    ) -> bool:
        where, wanted, wanted_key = target
        if wanted is None:  # a file or a folder
            return not where or path == where or path.startswith(where.rstrip("/") + "/")
        return path == where and name == wanted and (wanted_key is None or wanted_key == key)


def forget(config: Config) -> int:
    option = config.option
    reason = (option.reason or "").strip()
    if not reason:
        raise UsageError("--forget needs --reason TEXT: why these failures are forgotten")
    if not (config.args or option.keyword):
        raise UsageError("--forget needs a selection: node ids (path::process_x[KEY]), paths or -k")
    selection = Selection(config)
    dsn, _origin = resolve_dsn(config)
    config.secrets.extend(dsn_secrets(dsn))
    conn = connect(dsn, "ingestkit-forget")
    try:
        ensure_schema(conn)
        mark_interrupted(conn)
        with conn.cursor() as cur:
            cur.execute(q("forget-candidates"))
            chosen = [(p, k) for p, k, *_ in cur.fetchall() if selection(p, k)]
        missing = _unmatched_keys(selection, chosen)
        if missing:
            raise UsageError(
                f"--forget: no failed or error item {', '.join(missing)} in {mask_dsn(dsn)}"
            )
        if not chosen:
            raise UsageError(
                f"--forget: no failed or error item matches the selection in {mask_dsn(dsn)}"
            )
        batch_id = uuid.uuid4()
        with conn.cursor() as cur:
            cur.execute(q("forget-batch"), _batch_row(config, batch_id, len(chosen), reason))
            cur.execute(
                q("forget-items"),
                {
                    "batch_id": batch_id,
                    "reason": reason,
                    "processors": [p for p, _ in chosen],
                    "keys": [k for _, k in chosen],
                },
            )
            done = sorted(cur.fetchall())
        conn.commit()
    finally:
        conn.close()
    for processor, key in done[:20]:
        print(config.mask(f"forgot {processor}[{key}]"))
    if len(done) > 20:
        print(f"... and {len(done) - 20} more")
    plural = "s" if len(done) != 1 else ""
    print(
        f"{len(done)} failure{plural} forgotten in batch {batch_id} "
        f"(reason: {config.mask(reason)}); --lf no longer feeds them"
    )
    return 0


def _unmatched_keys(selection: Selection, chosen: list[tuple[str, str]]) -> list[str]:
    """The node ids with a key that select no failure: a typo, or not failing."""
    found = set(chosen)
    return [
        f"{path}::{name}[{key}]"
        for path, name, key in selection.targets
        if name is not None and key is not None and (f"{path}::{name}", key) not in found
    ]


def _batch_row(config: Config, batch_id: uuid.UUID, count: int, reason: str) -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    counts = {"succeeded": 0, "failed": 0, "error": 0, "skipped": count, "unchanged": 0}
    return {
        "id": batch_id,
        "argv": Json(["ingestkit", *(config.mask(a) for a in config.argv)]),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "meta": Json({"forget": {"reason": config.mask(reason), "user": user}}),
        "counts": Json(counts),
    }


@hookimpl(tryfirst=True)
def ingestkit_cmdline_main(config: Config) -> int | None:
    if not getattr(config.option, "forget", False):
        return None
    return forget(config)
