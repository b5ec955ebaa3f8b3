"""``--html PATH`` (plugin ``html``): a batch as one self-contained HTML page.

A status headline, the counts, items per processor as a bar chart, failure
groups with a sample traceback each, every failed item with its key, location,
message and record values (filterable and paged in the page, downloadable as
CSV), the rerun command and the items' log lines. Rendered from a jinja2
template (``ingestkit/templates/report.html.j2``, or ``--html-template``) with
inline CSS, SVG and script only, so the file opens anywhere with no network.
Written from the database, so a past batch renders the same way
(``ingestkit --show BATCH --html PATH``).

jinja2 is the ``html`` extra: only ``--html`` needs it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import psycopg2.extras

from .lastfailed import format_changes
from .outcomes import UsageError
from .queries import q
from .reports import COUNTED

if TYPE_CHECKING:
    from .chunks import Chunk
    from .config import ArgumentParser as Parser
    from .config import Config
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"
COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "error": "#ef6c00",
    "skipped": "#757575",
    "unchanged": "#90a4ae",
}
#: Failed items embedded in the page (the rest: ``ingestkit --export BATCH``).
MAX_ITEMS = 20000
MAX_LOGS = 200
PAGE_SIZE = 50
#: Retired keys and changed records listed in the page (the counts are all of them).
MAX_LIFECYCLE = 1000
#: The narrowest bar segment drawn for a non-zero count, so 1 in 10⁶ still shows.
MIN_SEGMENT = 4.0


def _fetch(conn: Any, name: str, **params: Any) -> list[dict[str, Any]]:
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(q(name), params)
        return [dict(r) for r in cur.fetchall()]


def plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def _chart(per_processor: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    label_w, bar_w, row_h = 360, 480, 26
    most = max((sum(c.values()) for c in per_processor.values()), default=0) or 1
    rows = []
    for i, (processor, counts) in enumerate(per_processor.items()):
        x, segments = float(label_w), []
        for status in COUNTED:
            n = counts.get(status, 0)
            if n:
                w = max(bar_w * n / most, MIN_SEGMENT)
                segments.append({"status": status, "n": n, "x": x, "w": w})
                x += w
        total = sum(counts.values())
        bad = [f"{counts[s]:,} {s}" for s in ("failed", "error") if counts.get(s)]
        label = f"{total:,}" + (f" ({', '.join(bad)})" if bad else "")
        rows.append(
            {"processor": processor, "y": i * row_h, "segments": segments, "end": x, "label": label}
        )
    return {
        "rows": rows,
        "label_w": label_w,
        "width": label_w + bar_w + 260,
        "height": row_h * len(rows),
    }


def _headline(batch: Mapping[str, Any], counts: Mapping[str, int]) -> dict[str, str]:
    bad = counts.get("failed", 0) + counts.get("error", 0)
    total = sum(counts.get(s, 0) for s in COUNTED)
    shown = ", ".join(f"{counts[s]:,} {s}" for s in COUNTED if counts.get(s)) or "no items"
    if batch["status"] != "finished" or batch["exit_code"] == 2:
        word, css = "INTERRUPTED", "interrupted"
    elif bad:
        word, css = "FAILED", "failed"
    else:
        word, css = "PASSED", "passed"
    text = f"{bad:,} of {total:,} {plural(total, 'item')} failed · {shown}" if bad else shown
    return {"word": word, "css": css, "text": text}


def _per_processor(
    conn: Any,
    batch_id: Any,
    unchanged: Mapping[str, int] | None,
    processors: Iterable[str],
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]]]:
    """Counts by status and durations of each processor, for the chart and the table."""
    per_processor: dict[str, dict[str, int]] = {p: {} for p in processors}
    durations: dict[str, dict[str, Any]] = {}
    for row in _fetch(conn, "processor-summary", batch_id=batch_id):
        per_processor.setdefault(row["processor"], {})[row["status"]] = row["n"]
        d = durations.setdefault(
            row["processor"], {"processor": row["processor"], "n": 0, "total": 0.0, "p95": 0.0}
        )
        d["n"] += row["n"]
        d["total"] += row["total_ms"] or 0.0
        d["p95"] = max(d["p95"], row["p95_ms"] or 0.0)
    for processor, n in (unchanged or {}).items():
        if n:
            per_processor.setdefault(processor, {})["unchanged"] = n
    for d in durations.values():
        d["mean"] = d["total"] / d["n"] if d["n"] else 0.0
    return per_processor, durations


def _failure_groups(conn: Any, batch_id: Any, mask: Callable[[str], str]) -> list[dict[str, Any]]:
    """The batch's failures grouped by error, largest group first, masked."""
    groups = sorted(_fetch(conn, "failure-samples", batch_id=batch_id), key=lambda g: -g["n"])
    for g in groups:
        for name in ("error_message", "traceback", "location"):
            g[name] = mask(g[name] or "")
    return groups


def _failed_items(conn: Any, batch_id: Any, mask: Callable[[str], str]) -> list[dict[str, Any]]:
    """The first :data:`MAX_ITEMS` failed items, masked, for the paged table."""
    return [
        {
            "processor": r["processor"],
            "key": mask(r["key"]),
            "status": r["status"],
            "location": mask(r["location"] or ""),
            "message": mask(f"{r['error_type'] or ''}: {r['error_message'] or ''}"),
            "record": mask(r["payload"] or ""),
        }
        for r in _fetch(conn, "report-failed-items", batch_id=batch_id, limit=MAX_ITEMS)
    ]


def context(
    conn: Any,
    batch_id: Any,
    mask: Callable[[str], str] = str,
    rerun: str | None = None,
    unchanged: Mapping[str, int] | None = None,
    processors: Iterable[str] = (),
) -> dict[str, Any]:
    """What the template sees, from the batch's rows (masked with ``mask``).

    ``unchanged`` (per processor) and ``processors`` come from a live batch:
    unchanged items have no rows, yet their processors belong in the chart.
    """
    (batch,) = _fetch(conn, "find-batch", prefix=str(batch_id))
    per_processor, durations = _per_processor(conn, batch_id, unchanged, processors)
    counts = batch["counts"] or {}
    groups = _failure_groups(conn, batch_id, mask)
    failed = _failed_items(conn, batch_id, mask)
    logs = _fetch(conn, "report-logs", batch_id=batch_id, limit=MAX_LOGS)
    for item in logs:
        item["log"] = mask(item["log"])
    failures_total = sum(g["n"] for g in groups)
    # inside <script>: no "</script>" or "<!--" can end it early
    failed_json = json.dumps(failed, ensure_ascii=False).replace("<", "\\u003c")
    return {
        "batch": batch,
        "counts": counts,
        "counted": COUNTED,
        "colors": COLORS,
        "headline": _headline(batch, counts),
        "command": mask(" ".join(batch["argv"] or [])),
        "rerun": mask(rerun or "ingestkit --lf") if failures_total else None,
        "chart": _chart(per_processor),
        "durations": list(durations.values()),
        "groups": groups,
        "failures_total": failures_total,
        "failed": failed,
        "failed_total": failures_total,
        "failed_json": _Markup(failed_json),
        "page_size": PAGE_SIZE,
        "logs": logs,
        "plural": plural,
        **_lifecycle(conn, batch_id, mask),
    }


def _lifecycle(conn: Any, batch_id: Any, mask: Callable[[str], str] = str) -> dict[str, Any]:
    """The failures this batch retired and the records whose content changed (SPEC §9)."""
    retired = [
        {
            "processor": r["processor"],
            "key": mask(r["key"]),
            "status": r["status"],
            "message": mask(r["error_message"] or ""),
        }
        for r in _fetch(conn, "batch-retired", batch_id=batch_id, limit=MAX_LIFECYCLE)
    ]
    changed = [
        {
            "processor": r["processor"],
            "key": mask(r["key"]),
            "changes": mask(format_changes(r["changes"])),
        }
        for r in _fetch(conn, "batch-changes", batch_id=batch_id, limit=MAX_LIFECYCLE)
    ]
    retired_counts = _fetch(conn, "report-retired-counts", batch_id=batch_id)
    changed_counts = _fetch(conn, "batch-changed-counts", batch_id=batch_id)
    return {
        "retired": retired,
        "retired_counts": retired_counts,
        "retired_total": sum(r["n"] for r in retired_counts),
        "changed": changed,
        "changed_counts": changed_counts,
        "changed_total": sum(r["n"] for r in changed_counts),
    }


class _Markup(str):
    """Text the template must not escape (jinja2 honours ``__html__``)."""

    def __html__(self) -> str:
        return str(self)


def _environment(template: Path) -> Any:
    try:
        import jinja2
    except ImportError:
        raise UsageError(
            "--html needs jinja2, which is not installed: pip install 'ingestkit[html]'"
        ) from None
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template.parent)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def render_batch(
    conn: Any,
    batch_id: Any,
    mask: Callable[[str], str] = str,
    template: str | Path | None = None,
    **live: Any,
) -> str:
    """The HTML page of one batch, from its rows in the database.

    ``mask`` hides secrets (``config.mask``) in every text shown; ``template``
    is a user's own jinja2 template, given the same context as the built-in one.
    """
    path = Path(template) if template else TEMPLATE
    if not path.is_file():
        raise UsageError(f"--html-template {path}: no such file")
    env = _environment(path)
    try:
        page = env.get_template(path.name).render(context(conn, batch_id, mask, **live))
    except Exception as exc:
        if path == TEMPLATE or type(exc).__module__.split(".")[0] != "jinja2":
            raise
        raise UsageError(f"--html-template {path}: {type(exc).__name__}: {exc}") from None
    return str(page)


def write_html(
    conn: Any,
    batch_id: Any,
    path: str | Path,
    mask: Callable[[str], str] = str,
    template: str | Path | None = None,
    **live: Any,
) -> Path:
    path = Path(path)
    page = render_batch(conn, batch_id, mask, template, **live)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"--html {path}: cannot write it ({exc.strerror or exc}); give a path you can write"
        ) from None
    return path


@hookimpl
def ingestkit_addoption(parser: Parser) -> None:
    group = parser.getgroup("reporting")
    group.addoption(
        "--html", metavar="PATH", help="write an HTML report of the batch (with --show: a past one)"
    )
    group.addoption(
        "--html-template",
        metavar="PATH",
        help="your own jinja2 template for --html (same context as ingestkit/templates/)",
    )


@hookimpl
def ingestkit_configure(config: Config) -> None:
    if config.getoption("html"):
        _environment(TEMPLATE)  # a missing jinja2 is a usage error before the batch, not after
        config.pluginmanager.register(UnchangedCounter(), "html-unchanged")


class UnchangedCounter:
    """Unchanged items per processor: they have no rows, the chart still shows them."""

    def __init__(self) -> None:
        self.unchanged: dict[str, int] = {}

    @hookimpl
    def ingestkit_chunk_finish(self, chunk: Chunk) -> None:
        nodeid = chunk.processor.nodeid
        self.unchanged[nodeid] = self.unchanged.get(nodeid, 0) + chunk.unchanged


@hookimpl(trylast=True)
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
    config: Config = session.config
    path = config.option.html
    if not path or session.control is None or session.control.closed:
        return
    from .terminal import rerun_command

    counter = config.pluginmanager.get_plugin("html-unchanged")
    write_html(
        session.control,
        session.batch.id,
        path,
        config.mask,
        config.getoption("html_template"),
        rerun=rerun_command(config),
        unchanged=counter.unchanged if counter else None,
        processors=[p.nodeid for p in session.processors],
    )
