"""The notifier (plugin ``notify``): one webhook message per batch with failures.

Enabled by config: ``notify_url`` in ``[tool.ingestkit]`` or the
``INGESTKIT_NOTIFY_URL`` environment variable, the incoming-webhook URL of a
Slack channel or a Microsoft Teams channel (a Workflows "post to a channel
when a webhook request is received" URL). ``notify_format`` is ``slack`` or
``teams``; by default it is guessed from the URL's host. The message carries
the counts, the largest failure groups and the command that reruns them.
A webhook that cannot be reached is a warning in the summary, never a failed
batch. The URL is a secret: only its host is ever shown.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import pluggy
import psycopg2.extras

from .outcomes import UsageError
from .queries import q
from .reports import COUNTED

if TYPE_CHECKING:
    from .config import Config
    from .session import Session
    from .terminal import TerminalReporter

hookimpl = pluggy.HookimplMarker("ingestkit")

ENV_URL = "INGESTKIT_NOTIFY_URL"
FORMATS = ("slack", "teams")
TOP_GROUPS = 5
TIMEOUT = 10.0


@hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser, config_keys: dict[str, str]) -> None:
    config_keys["notify_url"] = (
        f"webhook (Slack or Teams) told of a batch with failures (else {ENV_URL})"
    )
    config_keys["notify_format"] = "'slack' or 'teams' (default: guessed from notify_url)"


@hookimpl
def ingestkit_configure(config: Config) -> None:
    url = os.environ.get(ENV_URL) or config.inicfg.get("notify_url")
    if not url:
        return
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"notify_url = {url!r} is not an http(s) URL; write the webhook's URL")
    fmt = config.inicfg.get("notify_format") or guess_format(url)
    if fmt not in FORMATS:
        raise UsageError(f"notify_format = {fmt!r} is not one of 'slack', 'teams'")
    config.secrets.append(url)
    config.pluginmanager.register(Notifier(url, fmt), "notifier")


def guess_format(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname or ""
    teams = ("office.com", "logic.azure.com", "powerplatform.com", "powerautomate.com")
    return "teams" if host.endswith(teams) else "slack"


def batch_text(session: Session, groups: list[dict[str, Any]], rerun: str) -> tuple[str, list[str]]:
    """The message's headline and its lines (counts, top groups, rerun)."""
    counts = session.counts
    bad = counts["failed"] + counts["error"]
    total = sum(counts[s] for s in COUNTED)
    title = f"ingestkit: {bad:,} of {total:,} items failed (batch {session.batch.id})"
    lines = [
        "counts: " + ", ".join(f"{counts[s]:,} {s}" for s in COUNTED if counts[s]),
        f"host: {socket.gethostname()}, rootdir: {session.config.rootdir}",
    ]
    for g in groups[:TOP_GROUPS]:
        keys = ", ".join(g["sample_keys"] or [])
        first = (g["error_message"] or "").strip().splitlines()[:1]
        lines.append(
            f"{g['n']:,} × {g['processor']}: {g['error_type']}: {first[0] if first else ''}"
            f" (keys {keys})"
        )
    if len(groups) > TOP_GROUPS:
        lines.append(f"… and {len(groups) - TOP_GROUPS} more groups")
    lines.append(f"rerun: {rerun}")
    return title, lines


def slack_message(title: str, lines: list[str]) -> dict[str, Any]:
    """Slack incoming-webhook JSON: ``text`` (the notification) plus blocks."""
    body = "\n".join(lines)
    return {
        "text": title,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{body[:2900]}```"}},
        ],
    }


def teams_message(title: str, lines: list[str]) -> dict[str, Any]:
    """Microsoft Teams webhook JSON: a message with one Adaptive Card."""
    card = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": title,
                "weight": "Bolder",
                "size": "Medium",
                "color": "Attention",
                "wrap": True,
            },
            *(
                {"type": "TextBlock", "text": line, "wrap": True, "fontType": "Monospace"}
                for line in lines
            ),
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        ],
    }


class Notifier:
    def __init__(self, url: str, fmt: str) -> None:
        self.url = url
        self.format = fmt
        self.host = urllib.parse.urlsplit(url).hostname or "?"
        self.outcome: str | None = None

    @hookimpl
    def ingestkit_batch_finish(self, session: Session, exitstatus: int) -> None:
        if not (session.counts["failed"] or session.counts["error"]):
            return
        from .terminal import rerun_command

        mask = session.config.mask
        title, lines = batch_text(session, self._groups(session), rerun_command(session.config))
        lines = [mask(line) for line in lines]
        make = slack_message if self.format == "slack" else teams_message
        data = json.dumps(make(mask(title), lines)).encode()
        request = urllib.request.Request(
            self.url, data=data, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                response.read()
            self.outcome = f"notified {self.host} ({self.format})"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(exc, urllib.error.HTTPError):
                reason = f"HTTP {exc.code}"
            session.warnings.append(f"notify: could not post to {self.host}: {mask(str(reason))}")

    def _groups(self, session: Session) -> list[dict[str, Any]]:
        conn = session.control
        if conn is None or conn.closed:
            return []
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(q("failure-samples"), {"batch_id": session.batch.id})
            return sorted((dict(r) for r in cur.fetchall()), key=lambda g: -g["n"])

    @hookimpl
    def ingestkit_terminal_summary(
        self, terminalreporter: TerminalReporter, exitstatus: int, config: Config
    ) -> None:
        if self.outcome:
            terminalreporter.write_line(self.outcome)
