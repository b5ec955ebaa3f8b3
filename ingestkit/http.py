"""``ingestkit.read_http``: the records of every page of a JSON API (plugin ``http``).

Built on urllib3 (the extra ``ingestkit[http]``): its ``Retry`` retries 429 and
5xx answers and broken connections with exponential backoff, honouring
``Retry-After``, and its ``Timeout`` bounds each request. A page that still
fails raises :class:`HttpPageError`, a :class:`SourceUnreadable`: the runner
processes the records read before it, then records one ``error`` item naming
the URL and the status.

Credentials given in headers, in the URL's userinfo or in query parameters
named like a secret (``token``, ``api_key``, ``password``...) are registered
with the run's secret masking (the plugin part below) and never written into a
location or a message: URLs are shown with ``***`` in their place.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from . import __version__
from .queries import q
from .readers import SourceUnreadable
from .sources import Entry, Reader

if TYPE_CHECKING:
    import urllib3

    from .collection import Processor
    from .session import Session
    from .sources import SourceSpec

hookimpl = pluggy.HookimplMarker("ingestkit")

#: Statuses retried with backoff (Retry-After honoured on each of them).
RETRY_STATUSES = frozenset({429, *range(500, 600)})
#: Backoff between attempts: 0 s, then 1, 2, 4, 8... seconds, at most BACKOFF_MAX.
BACKOFF_FACTOR, BACKOFF_MAX = 0.5, 30.0
#: Headers whose values are credentials, whatever they hold.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
#: Header and query-parameter names that hold credentials.
_SECRET_NAME = re.compile(
    r"(?i)(^|[-_.])(token|key|apikey|secret|password|passwd|pwd|pass|signature|sig|auth|"
    r"credentials?|session|sessionid|access[-_]?token|api[-_]?key|private[-_]?token)$"
)
_URLLIB3_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
)
_MISSING_EXTRA = "read_http needs urllib3, which is not installed: pip install 'ingestkit[http]'"
_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]+)*)")

#: Every credential a read_http of this process was given (for the log filter).
_KNOWN: set[str] = set()


class HttpPageError(SourceUnreadable):
    """A page that could not be fetched, or not read as JSON records."""


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _forms(value: str) -> list[str]:
    """A credential as it may appear: itself, and percent-encoded in a URL."""
    forms = [value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)]
    return list(dict.fromkeys(f for f in forms if f))


def _header_secrets(name: str, value: str) -> list[str]:
    if name.lower() not in _SECRET_HEADERS and not _is_secret_name(name):
        return []
    found = [value]
    scheme, _, credential = value.strip().partition(" ")
    if credential.strip():
        found.append(credential.strip())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            password = decoded.partition(":")[2]
            if password:
                found.append(password)
    return [s for s in found if len(s) >= 3 or name.lower() in _SECRET_HEADERS]


def _url_secrets(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    found = []
    if parts.password:
        found += [parts.password, urllib.parse.unquote(parts.password)]
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if _is_secret_name(name) and len(value) >= 3:
            found += _forms(value)
    return found


def _encode_query(pairs: list[tuple[str, str]], redact: bool) -> str:
    out = []
    for name, value in pairs:
        shown = "***" if redact and _is_secret_name(name) and value else urllib.parse.quote(value)
        out.append(f"{urllib.parse.quote(name)}={shown}")
    return "&".join(out)


def shown_url(url: str) -> str:
    """``url`` with its password and secret-named query values replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = parts.query
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if any(_is_secret_name(name) for name, _ in pairs):
        query = _encode_query(pairs, redact=True)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def with_params(url: str, params: dict[str, Any]) -> str:
    """``url`` with ``params`` in its query (replacing parameters of the same name)."""
    if not params:
        return url
    parts = urllib.parse.urlsplit(url)
    pairs = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if k not in params
    ]
    for name, value in params.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs += [(str(name), _param_text(v)) for v in values]
    return urllib.parse.urlunsplit(parts._replace(query=_encode_query(pairs, redact=False)))


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _at(body: Any, path: str) -> Any:
    """The value at dotted ``path`` in ``body``; KeyError naming the missing part."""
    value = body
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif (
            isinstance(value, list)
            and part.lstrip("-").isdigit()
            and -len(value) <= int(part) < len(value)
        ):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def _optional_at(body: Any, path: str) -> Any:
    try:
        return _at(body, path)
    except KeyError:
        return None


def next_link(header: str | None) -> str | None:
    """The target of ``rel="next"`` in an RFC 8288 ``Link`` header, or None."""
    if not header:
        return None
    for target, params in _LINK.findall(header):
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "rel" and "next" in value.strip().strip('"').lower().split():
                return str(target)
    return None


def _check_paging(
    next: str | None,  # noqa: A002 - read_http's documented name
    page_param: str | None,
    cursor_param: str | None,
    cursor: str | None,
) -> None:
    """At most one way to the next page, and a cursor's two arguments together."""
    styles = [n for n, v in (("next", next), ("page_param", page_param)) if v]
    if cursor_param or cursor:
        styles.append("cursor_param/cursor")
        if not (cursor_param and cursor):
            raise ValueError(
                "read_http: cursor_param= (the query parameter) and cursor= (the dotted "
                "path of the next cursor in the page) go together"
            )
    if len(styles) > 1:
        both = " and ".join(styles)
        raise ValueError(f"read_http: give one way to the next page, not {both}")


class _MaskLogs(logging.Filter):
    """urllib3 logs URLs (retries, requests at DEBUG): credentials become ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _KNOWN:
            return True
        message = record.getMessage()
        masked = message
        for secret in sorted(_KNOWN, key=len, reverse=True):
            masked = masked.replace(secret, "***")
        if masked != message:
            record.msg, record.args = masked, ()
        return True


_MASK_LOGS = _MaskLogs()


def _mask_urllib3_logs() -> None:
    for name in _URLLIB3_LOGGERS:
        logger = logging.getLogger(name)
        if _MASK_LOGS not in logger.filters:
            logger.addFilter(_MASK_LOGS)


class read_http(Reader):  # noqa: N801 - public API reads like a function
    """Stream the records of every page of a JSON API.

    ``records``: dotted path of the array in each page (the page itself if
    None). The next page comes from ``next`` (dotted path of a next URL in the
    body), ``page_param`` (page numbers from 1, or from ``params[page_param]``,
    until a page without records), ``cursor_param`` + ``cursor`` (dotted path
    of the next cursor in the body) or, with none of these, a
    ``Link: <...>; rel="next"`` header. 429, 5xx and broken connections are
    retried ``retries`` times with backoff, honouring ``Retry-After``;
    ``timeout`` bounds each request (seconds). Location: ``GET URL #n``.
    """

    def __init__(
        self,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        records: str | None = None,
        next: str | None = None,  # noqa: A002 - the documented name
        page_param: str | None = None,
        cursor_param: str | None = None,
        cursor: str | None = None,
        retries: int = 5,
        timeout: float = 30,
    ) -> None:
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"read_http needs an http:// or https:// URL, got {url!r}")
        _check_paging(next, page_param, cursor_param, cursor)
        if retries < 0 or timeout <= 0:
            raise ValueError("read_http: retries= must be 0 or more and timeout= more than 0")
        self.path = Path()  # not a file (Reader's attribute, kept for its users)
        self.url = url
        self.params = dict(params or {})
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        self.records = records
        self.next = next
        self.page_param = page_param
        self.cursor_param = cursor_param
        self.cursor = cursor
        self.retries = retries
        self.timeout = timeout
        self.secrets = self._secrets()
        _KNOWN.update(self.secrets)

    def _secrets(self) -> list[str]:
        found = _url_secrets(self.url)
        for name, value in self.params.items():
            if _is_secret_name(str(name)) and value is not None and len(_param_text(value)) >= 3:
                found += _forms(_param_text(value))
        for name, value in self.headers.items():
            found += _header_secrets(name, value)
        return list(dict.fromkeys(s for s in found if s))

    @property
    def first_url(self) -> str:
        return with_params(self.url, self.params)

    def resolve(self, base: Path | None = None) -> str:  # type: ignore[override]
        """The first page's URL, as shown (credentials masked)."""
        return shown_url(self.first_url)

    def __repr__(self) -> str:
        return f"read_http({self.resolve()!r})"

    # -- reading -------------------------------------------------------------

    def entries(self, base: Path | None = None) -> Iterator[Entry]:
        try:
            import urllib3
        except ImportError:
            raise HttpPageError(_MISSING_EXTRA) from None
        _mask_urllib3_logs()
        pool = urllib3.PoolManager(
            retries=self._retry(), timeout=urllib3.Timeout(total=self.timeout)
        )
        try:
            yield from self._pages(pool)
        finally:
            pool.clear()

    def _retry(self) -> urllib3.Retry:
        import urllib3  # (entries() checked that it is installed)

        class Retry(urllib3.Retry):
            RETRY_AFTER_STATUS_CODES = RETRY_STATUSES

        n = self.retries
        return Retry(
            total=None,
            connect=n,
            read=n,
            status=n,
            other=n,
            redirect=10,
            backoff_factor=BACKOFF_FACTOR,
            backoff_max=BACKOFF_MAX,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}),
            respect_retry_after_header=True,
            raise_on_status=False,
        )

    def _request_headers(self, url: str) -> tuple[str, dict[str, str]]:
        """The URL without userinfo, and the headers (userinfo as Basic auth)."""
        import urllib3

        headers = {
            "Accept": "application/json",
            "User-Agent": f"ingestkit/{__version__}",
            **self.headers,
        }
        parts = urllib.parse.urlsplit(url)
        first = urllib.parse.urlsplit(self.url)
        # userinfo in the URL is Basic auth, for every page of the same host
        userinfo = parts if parts.username is not None else first
        same_host = (parts.hostname, parts.port) == (first.hostname, first.port)
        if userinfo.username is not None and (userinfo is parts or same_host):
            user = urllib.parse.unquote(userinfo.username)
            password = urllib.parse.unquote(userinfo.password or "")
            if not any(k.lower() == "authorization" for k in self.headers):
                headers.update(urllib3.make_headers(basic_auth=f"{user}:{password}"))
        if parts.username is not None:
            url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return url, headers

    def _get(self, pool: urllib3.PoolManager, url: str) -> tuple[Any, str | None]:
        """One page's JSON body and Link header, or HttpPageError naming the URL and
        what went wrong."""
        shown = shown_url(url)
        response = self._request(pool, url)
        retried = len(response.retries.history) if response.retries is not None else 0
        if response.status >= 400:
            reason = f" {response.reason}" if response.reason else ""
            detail = _snippet(response.data)
            raise HttpPageError(
                f"GET {shown}: HTTP {response.status}{reason}"
                + (f" (after {retried + 1} attempts)" if retried else "")
                + (f": {detail}" if detail else "")
            )
        link = response.headers.get("Link")
        if response.status == 204 or not response.data.strip():
            return None, link
        try:
            return json.loads(response.data), link
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            kind = response.headers.get("Content-Type") or "no Content-Type"
            raise HttpPageError(
                f"GET {shown}: the page is not JSON ({kind}): {exc}; it starts with "
                f"{_snippet(response.data, 60)!r}"
            ) from None

    def _request(self, pool: urllib3.PoolManager, url: str) -> urllib3.BaseHTTPResponse:
        """GET ``url``, retried as configured; HttpPageError when no answer came."""
        import urllib3

        shown = shown_url(url)
        target, headers = self._request_headers(url)
        try:
            return pool.request("GET", target, headers=headers)
        except urllib3.exceptions.MaxRetryError as exc:
            attempts = self.retries + 1
            raise HttpPageError(
                f"GET {shown}: {self._reason(exc.reason)}"
                + (f" (after {attempts} attempts)" if attempts > 1 else "")
            ) from None
        except urllib3.exceptions.HTTPError as exc:
            raise HttpPageError(f"GET {shown}: {self._reason(exc)}") from None

    def _reason(self, exc: BaseException | None) -> str:
        from urllib3 import exceptions as errors

        if isinstance(exc, errors.NewConnectionError):  # (a ConnectTimeoutError in urllib3)
            found = re.search(r"\[Errno [^\]]*\] (.*)$", str(exc))
            return f"cannot connect: {found.group(1) if found else 'connection failed'}"
        if isinstance(exc, (errors.TimeoutError, TimeoutError)):
            return f"no answer within {self.timeout:g} s (timeout={self.timeout:g})"
        if isinstance(exc, errors.ProtocolError):
            inner = exc.args[1] if len(exc.args) > 1 else None
            return f"the connection broke: {inner!r}" if inner is not None else str(exc)
        if isinstance(exc, errors.ResponseError):
            return str(exc)
        return f"{type(exc).__name__}: {exc}"

    def _page_records(self, body: Any, shown: str) -> list[Any]:
        if body is None:
            return []
        if self.records is None:
            found = body
        else:
            try:
                found = _at(body, self.records)
            except KeyError as exc:
                keys = ", ".join(map(str, body)) if isinstance(body, dict) else type(body).__name__
                raise HttpPageError(
                    f"GET {shown}: no {self.records!r} in the page ({exc.args[0]!r} is missing; "
                    f"the page has: {keys})"
                ) from None
        if found is None:
            return []
        if not isinstance(found, list):
            what = f"{self.records!r} in the page" if self.records else "the page"
            hint = ""
            if self.records is None and isinstance(found, dict):
                hint = f"; give records= the path of its array (its keys: {', '.join(found)})"
            raise HttpPageError(
                f"GET {shown}: {what} is a JSON {_json_kind(found)}, not an array{hint}"
            )
        return found

    def _start(self) -> tuple[str, int | None]:
        """The first page's URL, and its page number when pages are numbered."""
        if not self.page_param:
            return self.first_url, None
        page_number = int(self.params.get(self.page_param) or 1)
        return with_params(self.url, {**self.params, self.page_param: page_number}), page_number

    def _pages(self, pool: urllib3.PoolManager) -> Iterator[Entry]:
        first, page_number = self._start()
        url: str | None = first
        seen: set[str] = set()
        previous: list[Any] | None = None
        while url is not None:
            seen.add(url)
            shown = shown_url(url)
            response_body, link = self._get(pool, url)
            found = self._page_records(response_body, shown)
            if self.page_param and found and previous == found:
                raise HttpPageError(
                    f"GET {shown}: the same records as the page before: does the API take "
                    f"the page number as {self.page_param!r}?"
                )
            for n, record in enumerate(found, 1):
                yield Entry(record, f"GET {shown} #{n}")
            following = self._following(url, response_body, link, found, page_number)
            if self.page_param:
                page_number = (page_number or 1) + 1
                previous = found
            if following is not None and following in seen:
                raise HttpPageError(
                    f"GET {shown}: the next page is {shown_url(following)}, read already: "
                    "stopped there, as it would never end"
                )
            url = following

    def _following(
        self, url: str, body: Any, link: str | None, found: list[Any], page_number: int | None
    ) -> str | None:
        """The next page's URL, or None after the last page."""
        if self.next:
            target = _optional_at(body, self.next)
            if not target:
                return None
            return urllib.parse.urljoin(url, str(target))
        if self.page_param:
            if not found:
                return None
            return with_params(self.url, {**self.params, self.page_param: (page_number or 1) + 1})
        if self.cursor_param:
            return self._cursor_url(self.cursor_param, body, found)
        target = next_link(link)
        return urllib.parse.urljoin(url, target) if target else None


    def _cursor_url(self, cursor_param: str, body: Any, found: list[Any]) -> str | None:
        """The next page by the cursor in ``body``, or None at the end."""
        value = _optional_at(body, self.cursor) if self.cursor else None
        if value in (None, "", False) or not found:
            return None
        return with_params(self.url, {**self.params, cursor_param: value})


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _snippet(data: bytes, limit: int = 200) -> str:
    """The start of a body, on one line, for a message."""
    text = data[: limit * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


# -- the plugin: credentials go into the run's secret masking -------------------


def register_secrets(session: Session, reader: read_http) -> None:
    """Mask ``reader``'s credentials wherever the run shows or stores text."""
    config = session.config
    new = [s for s in reader.secrets if s not in config.secrets]
    if not new:
        return
    config.secrets.extend(new)
    # a source callable made this reader after the batch's argv was stored
    if _argv_stored(session) and any(s in arg for arg in config.argv for s in new):
        from psycopg2.extras import Json

        argv = ["ingestkit", *(config.mask(a) for a in config.argv)]
        with session.control.cursor() as cur:
            cur.execute(q("batch-argv"), {"id": session.batch.id, "argv": Json(argv)})


def _argv_stored(session: Session) -> bool:
    """Whether this process keeps the stored batch row (a worker does not)."""
    return (
        session.config.pluginmanager.has_plugin("batches")
        and session.batch.lock_key is not None
        and session.control is not None
    )


@hookimpl
def ingestkit_collection_finish(session: Session) -> None:
    for processor in session.processors:
        src = processor.source.src if processor.source is not None else None
        if isinstance(src, read_http):
            register_secrets(session, src)


@hookimpl(tryfirst=True)
def ingestkit_make_source(spec: SourceSpec, processor: Processor, session: Session) -> None:
    if isinstance(spec.src, read_http):  # also one a source callable made
        register_secrets(session, spec.src)
