"""ingestkit-webhook: an example ingestkit plugin, installed through an entry point.

Two things, each through documented hooks only (``ingestkit/hookspec.py``):

- ``--webhook-url URL`` (or ``webhook_url`` in ``[tool.ingestkit]``): when a
  batch finishes, POST a JSON summary of it to ``URL``. A failed POST is one
  warning line on stderr; it never changes the exit code.
- ``PagedAPI(url)``, a source type: ``@ingestkit.source(PagedAPI(url), key="id")``
  reads ``url?page=1``, ``url?page=2``... (a JSON array per page) until an
  empty page. A page that cannot be fetched or parsed is one ``error`` item
  naming its URL, and reading stops there.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import ingestkit
from ingestkit.reports import COUNTED

if TYPE_CHECKING:
    import argparse

    from ingestkit import Chunk, Config, Processor, Session, SourceSpec

__version__ = "0.1.0"

#: Seconds to wait for the webhook's server before giving up (with a warning).
POST_TIMEOUT = 5.0


def _http_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _shown(url: str) -> str:
    """``url`` without a password (``https://user:***@host/...``), for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _request(url: str, data: bytes | None = None, headers: dict | None = None) -> Any:
    """An urllib request; ``user:password@`` in ``url`` becomes a Basic Authorization header.

    (urllib itself would take ``user:password@host`` for a host name.)
    """
    parts = urllib.parse.urlsplit(url)
    headers = dict(headers or {})
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return urllib.request.Request(url, data=data, headers=headers)


def _reason(exc: BaseException) -> str:
    """An urllib failure as a short, single-line reason."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = f"cannot connect: {exc.reason}"
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


# -- the webhook ---------------------------------------------------------------


@ingestkit.hookimpl
def ingestkit_addoption(parser: argparse.ArgumentParser, config_keys: dict[str, str]) -> None:
    parser.add_argument(
        "--webhook-url",
        metavar="URL",
        help="POST a JSON summary of the batch to URL when it finishes (ingestkit-webhook)",
    )
    config_keys["webhook_url"] = "URL to POST a JSON summary of every batch to (ingestkit-webhook)"


@ingestkit.hookimpl
def ingestkit_configure(config: Config) -> None:
    url = config.getoption("webhook_url") or config.getini("webhook_url")
    if not url:
        return
    if not _http_url(url):
        raise ingestkit.UsageError(f"webhook_url: not an http(s) URL: {url!r}")
    # the state of one run lives on an object registered for that run only
    config.pluginmanager.register(Webhook(url), "webhook-poster")


class Webhook:
    """Counts outcomes per processor as chunks commit; posts the summary at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.processors: dict[str, Counter[str]] = {}

    @ingestkit.hookimpl
    def ingestkit_collection_finish(self, session: Session) -> None:
        for processor in session.processors:  # also those that end up with no items
            self.processors.setdefault(processor.nodeid, Counter())

    @ingestkit.hookimpl
    def ingestkit_chunk_finish(self, session: Session, chunk: Chunk) -> None:
        counts = self.processors.setdefault(chunk.processor.nodeid, Counter())
        for report in chunk.reports:
            counts[report.status] += 1
        counts["unchanged"] += chunk.unchanged

    @ingestkit.hookimpl
    def ingestkit_batch_finish(self, session: Session, exitstatus: int) -> None:
        if session.role == "worker":  # under -n, the leader posts the whole batch
            return
        post_json(self.url, self.summary(session, exitstatus))

    def summary(self, session: Session, exitstatus: int) -> dict[str, Any]:
        return {
            "batch_id": str(session.batch.id),
            # as ingestkit.batches records them
            "status": "interrupted" if exitstatus == 2 else "finished",
            "exit_code": int(exitstatus),
            "counts": {name: session.counts.get(name, 0) for name in COUNTED},
            "processors": {
                nodeid: {status: n for status, n in counts.items() if n}
                for nodeid, counts in self.processors.items()
            },
        }


def post_json(url: str, payload: Any) -> bool:
    """POST ``payload`` as JSON; on failure print one warning line to stderr."""
    request = _request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"ingestkit-webhook/{__version__}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT) as response:
            response.read()
    except Exception as exc:  # whatever happens, the batch's exit code stands
        print(
            f"WARNING: ingestkit-webhook: could not POST the batch summary to "
            f"{_shown(url)}: {_reason(exc)}",
            file=sys.stderr,
            flush=True,
        )
        return False
    return True


# -- the PagedAPI source -------------------------------------------------------


class PagedAPI:
    """A JSON API serving one array of records per page, until an empty page.

    ``PagedAPI("https://example.com/items")`` reads ``/items?page=1``,
    ``?page=2``... (other query parameters of ``url`` are kept).
    """

    def __init__(
        self, url: str, page_param: str = "page", *, start: int = 1, timeout: float = 30.0
    ) -> None:
        if not _http_url(url):
            raise ValueError(f"PagedAPI needs an http(s) URL, not {url!r}")
        self.url = url
        self.page_param = page_param
        self.start = start
        self.timeout = timeout

    def page_url(self, page: int) -> str:
        parts = urllib.parse.urlsplit(self.url)
        query = [
            (name, value)
            for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if name != self.page_param
        ]
        query.append((self.page_param, str(page)))
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def entries(self) -> Iterator[ingestkit.Entry]:
        """One entry per record, fetched a page at a time as the runner asks for more."""
        page = self.start
        while True:
            url = self.page_url(page)
            shown = _shown(url)
            try:
                with urllib.request.urlopen(_request(url), timeout=self.timeout) as response:
                    body = response.read()
            except Exception as exc:
                yield ingestkit.Entry(None, shown, error=f"{shown}: {_reason(exc)}")
                return
            try:
                records = json.loads(body)
            except ValueError as exc:  # JSONDecodeError, or bytes that are no text
                yield ingestkit.Entry(None, shown, error=f"{shown}: invalid JSON: {exc}")
                return
            if not isinstance(records, list):
                kind = "an object" if isinstance(records, dict) else type(records).__name__
                message = f"{shown}: expected a JSON array of records, got {kind}"
                yield ingestkit.Entry(None, shown, error=message)
                return
            if not records:
                return
            for number, record in enumerate(records, 1):
                yield ingestkit.Entry(record, f"{shown} record {number}")
            page += 1

    def __iter__(self) -> Iterator[Any]:
        """Plain records, for when the plugin's hook does not see this source.

        That is the case when a source callable (taking fixtures) returns a
        PagedAPI: ingestkit then iterates it, and a bad page fails the whole
        source (one error item) instead of being an error item of its own.
        """
        for entry in self.entries():
            if entry.error is not None:
                raise ValueError(entry.error)
            yield entry.record

    def __repr__(self) -> str:
        return f"PagedAPI({self.url!r}, page_param={self.page_param!r})"


@ingestkit.hookimpl
def ingestkit_make_source(
    spec: SourceSpec, processor: Processor, session: Session
) -> Iterable[ingestkit.Entry] | None:
    if isinstance(spec.src, PagedAPI):
        return spec.src.entries()
    return None
