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
    """Text lines of a file, numbered, noting bad ones and counting quotes."""

    def __init__(self, text: Any, encoding: str, quotechar: str | None) -> None:
        self.text = text
        self.encoding = encoding
        self.quotechar = quotechar
        self.lineno = 0
        self.bad: dict[int, str] = {}
        self.quotes = 0  # quote characters since the last reset (record start)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self.text)
        self.lineno += 1
        problem = _bad_char(line, self.encoding)
        if problem is not None:
            column = 1 + next(
                (i for i, c in enumerate(line) if c == "\0" or "\udc80" <= c <= "\udcff"), 0
            )
            self.bad[self.lineno] = f"{problem} at column {column}"
        if self.quotechar:
            self.quotes += line.count(self.quotechar)
        return line


class read_csv(Reader):  # noqa: N801 - public API reads like a function
    """Stream a CSV file with a header row as dicts of strings.

    ``csv_options`` go to :func:`csv.reader` (``delimiter``, ``quotechar``, …);
    ``encoding`` (default ``utf-8``, a BOM is dropped) opens the file. A row with
    the wrong number of fields, undecodable bytes or broken quoting becomes an
    ``error`` item naming the file and line; an unterminated quote runs, as
    CSV says, to the end of the file, and is one error naming where it opened.
    """

    def __init__(self, path: str | Path, encoding: str = "utf-8", **csv_options: Any) -> None:
        super().__init__(path)
        self.encoding = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
        self.csv_options = {"strict": True, **csv_options}

    def entries(self, base: Path | None = None) -> Iterator[Entry]:
        path = self.resolve(base)
        with _open(path) as raw:
            text = io.TextIOWrapper(raw, self.encoding, errors="surrogateescape", newline="")
            dialect = csv.reader(io.StringIO(""), **self.csv_options).dialect
            quotechar = dialect.quotechar if dialect.quoting != csv.QUOTE_NONE else None
            lines = _Lines(text, self.encoding, quotechar)
            yield from self._records(csv.reader(lines, **self.csv_options), lines, path, quotechar)

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
        end = 0  # last line of the previous record
        while True:
            lines.quotes = 0
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                first = end + 1
                message = str(exc)
                if "unexpected end of data" in message:
                    message = (
                        f"unterminated quoted field: the quote opened on line {first} "
                        f"runs to the end of the file (line {lines.lineno})"
                    )
                elif quotechar and lines.quotes % 2:
                    # still inside a quoted field: skip to where it closes
                    for line in lines:
                        if line.count(quotechar) % 2:
                            break
                end = lines.lineno
                yield Entry(None, f"{path}:{first}", f"{path}, line {first}: {message}")
                if header is None:
                    return
                continue
            first, end = end + 1, lines.lineno
            where = f"{path}:{first}"
            bad = [f"line {n}: {lines.bad.pop(n)}" for n in range(first, end + 1) if n in lines.bad]
            if header is None:
                if bad:
                    yield Entry(
                        None, where, f"{path}, header {'; '.join(bad)}: no record can be read"
                    )
                    return
                if not row:
                    continue
                header, width = row, len(row)
                continue
            if bad:
                yield Entry(None, where, f"{path}, {'; '.join(bad)}")
                continue
            if not row:  # blank line
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
