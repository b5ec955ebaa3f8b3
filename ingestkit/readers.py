"""The built-in streaming readers: ``read_csv``, ``read_jsonl``, ``read_json``.

Each yields :class:`~ingestkit.sources.Entry` objects one at a time, so memory
does not grow with the file. A record that cannot be read becomes an entry with
``error`` set (naming the file and line) and reading goes on where it can. A
file that cannot be opened raises :class:`SourceUnreadable`: one ``error``
item for the processor.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .sources import Entry, Reader

_READ_SIZE = 1 << 16
_TOO_DEEP = "the JSON is nested too deeply to read (about a thousand levels): flatten it"


class SourceUnreadable(OSError):
    """A reader's file could not be opened."""


def _open(path: Path) -> Any:
    try:
        return open(path, "rb")  # noqa: SIM115 - the readers close it
    except OSError as exc:
        raise SourceUnreadable(f"cannot open {path}: {exc.strerror or exc}") from None


def _encoding_name(encoding: str) -> str:
    name = codecs.lookup(encoding).name
    return "UTF-8" if name in ("utf-8", "utf-8-sig") else name


def _bad_char(text: str, encoding: str) -> str | None:
    """Why ``text`` (decoded with surrogateescape) is not valid, or None."""
    if text.isascii():
        return "NUL byte" if "\0" in text else None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = text[exc.start].encode("utf-8", "surrogateescape")
        return f"invalid {_encoding_name(encoding)} byte 0x{byte.hex()}"
    return "NUL byte" if "\0" in text else None


class _Lines:
    """Text lines of a file, numbered, noting bad ones; lines can be read again.

    ``record`` holds the lines handed out since :meth:`start`: the lines of the
    record the csv reader is reading, as ``(number, problem or None)``.
    """

    def __init__(self, text: Any, encoding: str) -> None:
        self.text = text
        self.encoding = encoding
        self.read = 0  # the highest line number read from the file
        self.record: list[tuple[int, str, str | None]] = []
        self.again: list[tuple[int, str]] = []  # lines to hand out again, last first

    def __iter__(self) -> Iterator[str]:
        return self

    def start(self) -> None:
        self.record = []

    def read_again(self, lines: list[tuple[int, str, str | None]]) -> None:
        self.again.extend((n, line) for n, line, _ in reversed(lines))

    def skip_quoted(self, quotechar: str) -> int:
        """Read on, unrecorded, to the line that closes an open quoted field (or
        to the end of the file); the number of the last line read."""
        last = self.record[-1][0] if self.record else self.read
        while True:
            if self.again:
                last, line = self.again.pop()
            else:
                line = next(self.text, None)
                if line is None:
                    return last
                self.read += 1
                last = self.read
            if line.count(quotechar) % 2:
                return last

    def drain(self) -> None:
        """Read to the end of the file, unrecorded (to count its lines)."""
        self.again.clear()
        for _ in self.text:
            self.read += 1

    def __next__(self) -> str:
        if self.again:
            lineno, line = self.again.pop()
        else:
            line = next(self.text)
            self.read += 1
            lineno = self.read
        problem = _bad_char(line, self.encoding)
        if problem is not None:
            column = 1 + next(
                (i for i, c in enumerate(line) if c == "\0" or "\udc80" <= c <= "\udcff"), 0
            )
            problem = f"{problem} at column {column}"
        self.record.append((lineno, line, problem))
        return line


def _lines_named(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"line {first}-{last}"


#: Default longest CSV field, in characters (the csv module's own is 128 KiB).
FIELD_SIZE_LIMIT = 16 * 1024 * 1024


class read_csv(Reader):  # noqa: N801 - public API reads like a function
    """Stream a CSV file with a header row as dicts of strings.

    ``csv_options`` go to :func:`csv.reader` (``delimiter``, ``quotechar``, …);
    ``encoding`` (default ``utf-8``, a BOM is dropped) opens the file;
    ``field_size_limit`` is the longest field read (characters). A row with
    the wrong number of fields, undecodable bytes or broken quoting becomes an
    ``error`` item naming the file and the lines it covers. A record whose
    quoted field runs over several lines is kept only when it parses: when it
    does not (a stray or unterminated quote), its first line is the error and
    the lines after it are read again as records of their own.
    """

    def __init__(
        self,
        path: str | Path,
        encoding: str = "utf-8",
        field_size_limit: int = FIELD_SIZE_LIMIT,
        **csv_options: Any,
    ) -> None:
        super().__init__(path)
        self.encoding = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
        self.field_size_limit = field_size_limit
        self.csv_options = {"strict": True, **csv_options}

    def entries(self, base: Path | None = None) -> Iterator[Entry]:
        path = self.resolve(base)
        with _open(path) as raw:
            text = io.TextIOWrapper(raw, self.encoding, errors="surrogateescape", newline="")
            dialect = csv.reader(io.StringIO(""), **self.csv_options).dialect
            quotechar = dialect.quotechar if dialect.quoting != csv.QUOTE_NONE else None
            lines = _Lines(text, self.encoding)
            reader = csv.reader(lines, **self.csv_options)
            yield from self._records(reader, lines, path, quotechar)

    def _next_row(self, reader: Any) -> list[str]:
        """The reader's next row, under this reader's field size limit (the csv
        module's limit is global: the processor's own csv use keeps its own)."""
        previous = csv.field_size_limit(self.field_size_limit)
        try:
            return next(reader)
        finally:
            csv.field_size_limit(previous)

    def _problem(self, exc: csv.Error) -> str:
        message = str(exc)
        if "unexpected end of data" in message:
            return "unterminated quoted field: its quote never closes before the end of the file"
        if "field larger than field limit" in message:
            return (
                f"field larger than field limit ({self.field_size_limit:,} characters): "
                f"read_csv(..., field_size_limit=N) allows longer fields"
            )
        if "expected after" in message:
            return f"broken quoting: a closing quote is followed by more text ({message})"
        return f"broken quoting: {message}"

    def read_header(self, base: Path | None = None) -> list[str] | None:
        """The file's header row (its column names), or None when it has none."""
        with _open(self.resolve(base)) as raw:
            text = io.TextIOWrapper(raw, self.encoding, errors="surrogateescape", newline="")
            for row in csv.reader(text, **self.csv_options):
                if row:
                    return row
        return None

    def _records(
        self, reader: Any, lines: _Lines, path: Path, quotechar: str | None
    ) -> Iterator[Entry]:
        header: list[str] | None = None
        width = 0
        while True:
            lines.start()
            error: str | None = None
            try:
                row = self._next_row(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row, error = None, self._problem(exc)
                span = lines.record
                if header is not None and span and quotechar and "field limit" in str(exc):
                    # a field too long to read: the record is one error to where
                    # its quoted field closes (nothing after it is read again)
                    quotes = sum(line.count(quotechar) for _, line, _ in span)
                    if quotes % 2:
                        end = lines.skip_quoted(quotechar)
                        yield Entry(
                            None,
                            f"{path}:{span[0][0]}",
                            f"{path}, {_lines_named(span[0][0], end)}: {error}",
                        )
                        continue
            span = lines.record
            if not span:
                return
            first, end = span[0][0], span[-1][0]
            where = f"{path}:{first}"
            if header is None:
                bad = "; ".join(f"line {n}: {p}" for n, _, p in span if p)
                if error is None and not bad:
                    if row:
                        header, width = row, len(row)
                    continue
                lines.drain()  # no record can be read: the error covers the whole file
                rest = f" of {_lines_named(end + 1, lines.read)}" if lines.read > end else ""
                yield Entry(
                    None,
                    where,
                    f"{path}, {_lines_named(first, end)}: the header cannot be read "
                    f"({error or bad}), so no record{rest} can be read",
                )
                return
            if error is None and not row:  # blank line
                continue
            if len(span) > 1 and (error is not None or len(row) != width):
                # a quoted field ran over line ends and the record does not parse:
                # its first line is the error, the others are read again
                lines.read_again(span[1:])
                reason = error or f"expected {width} fields, got {len(row)}"
                yield Entry(
                    None,
                    where,
                    f"{path}, line {first}: {reason} (a quote on this line runs over "
                    "the line end; the lines after it are read as records of their own)",
                )
                continue
            bad = [f"line {n}: {p}" for n, _, p in span if p]
            if bad:
                named = "" if len(span) == 1 else f"{_lines_named(first, end)}: "
                # the fields as read: the record keeps its real key when the key's
                # field is clean (an undecodable key is its position, see runner)
                readable = error is None and len(row) == width
                fields = dict(zip(header, row, strict=True)) if readable else None
                yield Entry(fields, where, f"{path}, {named}{'; '.join(bad)}")
                continue
            if error is not None:
                yield Entry(None, where, f"{path}, line {first}: {error}")
                continue
            if len(row) != width:
                yield Entry(
                    dict(zip(header, row, strict=False)),
                    where,
                    f"{path}, line {first}: expected {width} fields, got {len(row)}",
                )
                continue
            yield Entry(dict(zip(header, row, strict=True)), where, flat=True)


class read_jsonl(Reader):  # noqa: N801
    """Stream a JSON Lines file: one JSON object per line (blank lines ignored)."""

    def entries(self, base: Path | None = None) -> Iterator[Entry]:
        path = self.resolve(base)
        with _open(path) as raw:
            for lineno, line in enumerate(raw, 1):
                where = f"{path}:{lineno}"
                if lineno == 1 and line.startswith(codecs.BOM_UTF8):
                    line = line[3:]
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    byte = line[exc.start : exc.start + 1].hex()
                    yield Entry(
                        None,
                        where,
                        f"{path}, line {lineno}: invalid UTF-8 byte 0x{byte} "
                        f"at column {exc.start + 1}",
                    )
                    continue
                except json.JSONDecodeError as exc:
                    yield Entry(None, where, f"{path}, line {lineno}: invalid JSON: {exc}")
                    continue
                except RecursionError:
                    yield Entry(None, where, f"{path}, line {lineno}: {_TOO_DEEP}")
                    continue
                if not isinstance(record, dict):
                    kind = type(record).__name__
                    yield Entry(
                        record, where, f"{path}, line {lineno}: expected a JSON object, got {kind}"
                    )
                    continue
                yield Entry(record, where)


def _value_end(buf: str, pos: int) -> int | None:
    """Where the JSON value starting at ``pos`` ends, found by bracket matching
    (for skipping a malformed element); None when ``buf`` ends first."""
    depth, in_string, escaped = 0, False, False
    for i in range(pos, len(buf)):
        c = buf[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
            if depth < 0:
                return i
        elif c == "," and depth == 0:
            return i
    return None


class read_json(Reader):  # noqa: N801
    """Stream the elements of a JSON file whose top level is an array.

    A malformed element (or one with undecodable bytes) is an ``error`` item
    naming its record number; reading resumes at the next element.
    """

    def entries(self, base: Path | None = None) -> Iterator[Entry]:
        path = self.resolve(base)
        with _open(path) as raw:
            text = io.TextIOWrapper(raw, "utf-8-sig", errors="surrogateescape")
            yield from self._elements(text, path)

    @staticmethod
    def _elements(text: Any, path: Path) -> Iterator[Entry]:
        decoder = json.JSONDecoder()
        buf, pos, eof, number, consumed = "", 0, False, 0, 0

        def fill() -> bool:
            nonlocal buf, pos, eof, consumed
            more = text.read(_READ_SIZE)
            if not more:
                eof = True
                return False
            consumed += pos
            buf = buf[pos:] + more
            pos = 0
            return True

        def skip_ws() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not fill():
                    return ""

        first = skip_ws()
        if first != "[":
            shown = "an empty file" if first == "" else f"{first!r}"
            yield Entry(
                None, str(path), f"{path}: expected a JSON array at the top level, found {shown}"
            )
            return
        pos += 1
        if skip_ws() == "]":
            return
        while True:
            skip_ws()
            number += 1
            where = f"{path}#{number}"
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                except RecursionError:
                    while (skip := _value_end(buf, pos)) is None and fill():
                        pass
                    yield Entry(None, where, f"{path}, record {number}: {_TOO_DEEP}")
                    if skip is None:
                        return
                    end = skip
                    break
                except json.JSONDecodeError as exc:
                    if not eof and fill():
                        continue
                    offset = consumed + exc.pos
                    message = (
                        f"{path}, record {number}: invalid JSON at character {offset}: {exc.msg}"
                    )
                    while (skip := _value_end(buf, pos)) is None and fill():
                        pass
                    if skip is None:  # the array never closes
                        yield Entry(None, where, message)
                        return
                    record, end = None, skip
                    yield Entry(None, where, message)
                    break
                # a number at the end of the buffer may continue in the next read
                if end == len(buf) and not eof and fill():
                    continue
                problem = _bad_char(buf[pos:end], "utf-8")
                if problem is not None:
                    yield Entry(None, where, f"{path}, record {number}: {problem}")
                else:
                    yield Entry(record, where)
                break
            pos = end
            sep = skip_ws()
            if sep == ",":
                pos += 1
                continue
            if sep == "]":
                return
            shown = "end of file" if sep == "" else repr(sep)
            yield Entry(
                None,
                f"{path}#{number + 1}",
                f"{path}, after record {number}: expected ',' or ']', found {shown}",
            )
            return
