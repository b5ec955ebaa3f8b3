"""``--html PATH`` (plugin ``html``): a batch as one self-contained HTML page.

Counts per processor as a bar chart, durations, and failure groups with a
sample traceback each; inline CSS and SVG only, so the file opens anywhere
with no network. Written from the database, so a past batch renders the same
way (``ingestkit --show BATCH --html PATH``).
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import psycopg2.extras

from .outcomes import UsageError
from .queries import q
from .reports import COUNTED

if TYPE_CHECKING:
    from .config import Config
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "error": "#ef6c00",
    "skipped": "#757575",
    "unchanged": "#90a4ae",
}
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse}
td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:12px}
.legend span{display:inline-block;margin-right:1em}.sw{width:.9em;height:.9em;vertical-align:middle}
.group{border-left:4px solid #c62828;padding-left:1em;margin:1.2em 0}
"""


def _fetch(conn: Any, name: str, **params: Any) -> list[dict]:
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(q(name), params)
        return [dict(r) for r in cur.fetchall()]


def _bar_chart(per_processor: dict[str, dict[str, int]]) -> str:
    if not per_processor:
        return "<p>No items.</p>"
    label_w, bar_w, row_h = 360, 480, 26
    most = max(sum(c.values()) for c in per_processor.values()) or 1
    rows = []
    for i, (processor, counts) in enumerate(per_processor.items()):
        y = i * row_h
        rows.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="12">'
            f"{html.escape(processor)}</text>"
        )
        x = float(label_w)
        for status in COUNTED:
            n = counts.get(status, 0)
            if not n:
                continue
            w = bar_w * n / most
            rows.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{max(w, 1):.1f}" height="{row_h - 8}" '
                f'fill="{COLORS[status]}"><title>{status}: {n}</title></rect>'
            )
            x += w
        total = sum(counts.values())
        rows.append(f'<text x="{x + 6:.1f}" y="{y + 17}" font-size="12">{total:,}</text>')
    height = row_h * len(per_processor)
    width = label_w + bar_w + 80
    legend = "".join(
        f'<span><svg class="sw"><rect width="12" height="12" fill="{c}"/></svg> {s}</span>'
        for s, c in COLORS.items()
    )
    return (
        f'<svg role="img" aria-label="items per processor" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(rows)}</svg><p class="legend">{legend}</p>'
    )


def render_batch(conn: Any, batch_id: Any, mask: Callable[[str], str] = str) -> str:
    """The HTML page of one batch, from its rows in the database.

    ``mask`` hides secrets (``config.mask``) in every text shown.
    """
    (batch,) = _fetch(conn, "find-batch", prefix=str(batch_id))
    summary = _fetch(conn, "processor-summary", batch_id=batch_id)
    groups = _fetch(conn, "failure-samples", batch_id=batch_id)
    per_processor: dict[str, dict[str, int]] = {}
    durations: dict[str, dict[str, float]] = {}
    for row in summary:
        per_processor.setdefault(row["processor"], {})[row["status"]] = row["n"]
        d = durations.setdefault(row["processor"], {"n": 0, "total": 0.0, "p95": 0.0})
        d["n"] += row["n"]
        d["total"] += row["total_ms"] or 0.0
        d["p95"] = max(d["p95"], row["p95_ms"] or 0.0)
    counts = batch["counts"] or {}

    def e(text: str) -> str:
        return html.escape(mask(text))

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ingestkit batch {e(str(batch['id']))}</title><style>{STYLE}</style></head><body>",
        f"<h1>ingestkit batch <code>{e(str(batch['id']))}</code></h1>",
        "<table>",
        f"<tr><th>status</th><td>{e(batch['status'])} (exit code {batch['exit_code']})</td></tr>",
        f"<tr><th>started</th><td>{e(str(batch['started_at']))}</td></tr>",
        f"<tr><th>duration</th><td>{batch['seconds']:.2f} s</td></tr>",
        f"<tr><th>host</th><td>{e(batch['hostname'] or '')}</td></tr>",
        f"<tr><th>command</th><td><code>{e(' '.join(batch['argv'] or []))}</code></td></tr>",
        "</table>",
        "<h2>Counts</h2><table>",
        *(f'<tr><th>{s}</th><td class="n">{counts.get(s, 0):,}</td></tr>' for s in COUNTED),
        "</table>",
        "<h2>Items per processor</h2>",
        _bar_chart(per_processor),
        "<h2>Durations</h2>",
        "<table><tr><th>processor</th><th>items</th><th>total</th><th>mean</th>"
        "<th>p95 (max over statuses)</th></tr>",
    ]
    for processor, d in durations.items():
        mean = d["total"] / d["n"] if d["n"] else 0.0
        parts.append(
            f'<tr><td>{e(processor)}</td><td class="n">{d["n"]:,}</td>'
            f'<td class="n">{d["total"] / 1000:.2f} s</td><td class="n">{mean:.2f} ms</td>'
            f'<td class="n">{d["p95"]:.2f} ms</td></tr>'
        )
    parts.append("</table>")
    parts.append(f"<h2>Failures ({sum(g['n'] for g in groups):,} in {len(groups)} groups)</h2>")
    if not groups:
        parts.append("<p>None.</p>")
    for g in sorted(groups, key=lambda g: -g["n"]):
        keys = ", ".join(g["sample_keys"] or [])
        more = (
            f" (+{g['n'] - len(g['sample_keys'] or [])} more)"
            if g["n"] > len(g["sample_keys"] or [])
            else ""
        )
        parts += [
            '<div class="group">',
            f"<h3>{e(g['processor'])}: {e(g['error_type'] or '')} ({g['n']:,} items)</h3>",
            f"<p>keys: {e(keys)}{e(more)}</p>",
            f"<p>{e(g['location'] or '')}</p>",
            f"<pre>{e(g['traceback'] or g['error_message'] or '')}</pre>",
            "</div>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(
    conn: Any, batch_id: Any, path: str | Path, mask: Callable[[str], str] = str
) -> Path:
    path = Path(path)
    page = render_batch(conn, batch_id, mask)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"--html {path}: cannot write it ({exc.strerror or exc}); give a path you can write"
        ) from None
    return path


@hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--html", metavar="PATH", help="write an HTML report of the batch (with --show: a past one)"
    )


@hookimpl(trylast=True)
def ingestkit_batch_finish(session: Session, exitstatus: int) -> None:
    config: Config = session.config
    path = config.option.html
    if not path or session.control is None or session.control.closed:
        return
    write_html(session.control, session.batch.id, path, config.mask)
