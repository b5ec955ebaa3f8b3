"""The built-in streaming readers: ``read_csv``, ``read_jsonl``, ``read_json``.

Each yields :class:`~ingestkit.sources.Entry` objects one at a time, so memory
does not grow with the file. A record that cannot be read becomes an entry with
``error`` set (naming the file and line) and reading goes on where it can.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .sources import Entry, Reader

_READ_SIZE = 1 << 16


def _open_error(path: Path, exc: OSError) -> Entry:
    return Entry(None, str(path), f"cannot open {path}: {exc.strerror or exc}")


class _CheckedLines:
    """Text lines of a binary file, noting the numbers of lines that were not valid."""

    def __init__(self, text: io.TextIOBase, encoding: str) -> None:
        self.text = text
        self.encoding = encoding
        self.lineno = 0
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        check_utf8 = self.encoding.replace("_", "-").lower().startswith("utf-8")
        for line in self.text:
            self.lineno += 1
            if check_utf8 and not line.isascii():
                try:
                    line.encode("utf-8")
                except UnicodeEncodeError as exc:
                    bad = line[exc.start].encode("utf-8", "surrogateescape")
                    self.bad[self.lineno] = (
                        f"invalid {self.encoding} byte 0x{bad.hex()} at column {exc.start + 1}"
                    )
            if "\0" in line:
                self.bad[self.lineno] = "NUL byte in line"
            yield line


class read_csv(Reader):  # noqa: N801 - public API reads like a function
    """Stream a CSV file with a header row as dicts of strings.

    ``csv_options`` go to :func:`csv.reader` (``delimiter``, ``quotechar``, …);
    ``encoding`` (default ``utf-8``, a BOM is dropped) opens the file. A row with
    the wrong number of fields, undecodable bytes or broken quoting becomes an
    ``error`` item naming the file and line.
    """

    def __init__(self, path: str | Path, encoding: str = "utf-8", **csv_options: Any) -> None:
        super().__init__(path)
        self.encoding = "utf-8-sig" if encoding.lower() in ("utf-8", "utf8") else encoding
        self.csv_options = csv_options

    def entries(self, base: Path | None = None) -> Iterator[Entry]:
        path = self.resolve(base)
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            yield _open_error(path, exc)
            return
        with raw:
            text = io.TextIOWrapper(raw, self.encoding, errors="surrogateescape", newline="")
            lines = _CheckedLines(text, self.encoding)
            reader = csv.reader(iter(lines), **self.csv_options)
            header: list[str] | None = None
            last_line = 0
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    yield Entry(
                        None, f"{path}:{reader.line_num}", f"{path}, line {reader.line_num}: {exc}"
                    )
                    last_line = reader.line_num
                    continue
                first, last_line = last_line + 1, reader.line_num
                where = f"{path}:{first}"
                bad = [
                    f"line {n}: {lines.bad.pop(n)}"
                    for n in range(first, last_line + 1)
                    if n in lines.bad
                ]
                if bad:
                    yield Entry(None, where, f"{path}, {'; '.join(bad)}")
                    continue
                if header is None:
                    if not row:
                        continue
                    header = row
                    width = len(header)
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
                yield Entry(dict(zip(header, row, strict=True)), where)


class read_jsonl(Reader):  # noqa: N801
    """Stream a JSON Lines file: one JSON object per line (blank lines ignored)."""

    def entries(self, base: Path | None = None) -> Iterator[Entry]:
        path = self.resolve(base)
        try:
            raw = open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            yield _open_error(path, exc)
            return
        with raw:
            for lineno, line in enumerate(raw, 1):
                where = f"{path}:{lineno}"
                if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    yield Entry(
                        None,
                        where,
                        f"{path}, line {lineno}: invalid UTF-8 ({exc.reason} at byte {exc.start})",
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


class read_json(Reader):  # noqa: N801
    """Stream the elements of a JSON file whose top level is an array."""

    def entries(self, base: Path | None = None) -> Iterator[Entry]:
        path = self.resolve(base)
        try:
            raw = open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            yield _open_error(path, exc)
            return
        with raw:
            text = io.TextIOWrapper(raw, "utf-8-sig", errors="strict")
            try:
                yield from self._elements(text, path)
            except UnicodeDecodeError as exc:
                yield Entry(None, str(path), f"{path}: invalid UTF-8 ({exc.reason})")

    @staticmethod
    def _elements(text: io.TextIOBase, path: Path) -> Iterator[Entry]:
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
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if not eof and fill():
                        continue
                    offset = consumed + exc.pos
                    yield Entry(
                        None,
                        f"{path}#{number}",
                        f"{path}, record {number}: invalid JSON at character {offset}: {exc.msg}",
                    )
                    return
                # a number at the end of the buffer may continue in the next read
                if end == len(buf) and not eof and fill():
                    continue
                break
            pos = end
            yield Entry(record, f"{path}#{number}")
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
