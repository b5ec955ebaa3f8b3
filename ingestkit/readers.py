"""The built-in streaming readers: ``read_csv``, ``read_jsonl``, ``read_json``.

Their path may be a glob (``drops/*.csv``, ``**`` recurses): files are read in
sorted path order. Each yields :class:`~ingestkit.sources.Entry` objects one at a time, so memory
does not grow with the file. A record that cannot be read becomes an entry with
``error`` set (naming the file and line) and reading goes on where it can. A
file that cannot be opened raises :class:`SourceUnreadable`: one ``error``
item for the processor.
"""

from __future__ import annotations

import codecs
import csv
import glob
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from operator import length_hint
from pathlib import Path
from typing import IO, Any, Protocol

from .sources import Entry, Reader

_READ_SIZE = 1 << 16
_TOO_DEEP = "the JSON is nested too deeply to read (about a thousand levels): flatten it"


class SourceUnreadable(OSError):
    """A reader's file could not be opened."""


class MissingExtra(SourceUnreadable):
    """A reader needs an optional dependency that is not installed."""


class Ledger(Protocol):
    """What a :class:`FileReader` tells about the files it reads (see files.py)."""

    rootdir: Path

    def skip(self, path: Path, size: int, sha256: str) -> bool:
        """Whether the file is not parsed here: read completely already, or handed
        to another process (a worker of ``-n`` reads it)."""

    def header_problem(self, path: Path, columns: list[str]) -> str | None:
        """Why the processor cannot read a file with these columns (a typed record's
        required columns are missing), or None."""

    def read(self, path: Path, size: int, sha256: str, items: int, complete: bool) -> None:
        """The file was read: ``items`` entries, to its end when ``complete``."""


def file_sha256(path: Path) -> tuple[int, str]:
    """The file's size and sha256 hex digest (raises OSError)."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return f.tell(), digest.hexdigest()


class FileReader(Reader):
    """A reader of files: its path is a file or a glob of them.

    Subclasses implement :meth:`read_file`. With a glob, a file that cannot be
    opened or read at all is one ``error`` entry keyed by its path (relative to
    the rootdir) and the other files go on; a single file that cannot be opened
    raises :class:`SourceUnreadable` (one ``error`` item for the processor).
    ``bytes_total`` and :attr:`bytes_read` give the progress of a reading.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.bytes_total: int | None = None
        self._bytes_done = 0
        self._current: IO[bytes] | None = None
        #: for a glob: checks each file's columns (see Ledger.header_problem)
        self._header_check: Callable[[Path, list[str]], str | None] | None = None

    @property
    def is_glob(self) -> bool:
        return glob.has_magic(str(self.path))

    @property
    def bytes_read(self) -> int:
        """Bytes of the files read so far, in the current reading."""
        current = self._current
        if current is not None and not current.closed:
            try:
                return self._bytes_done + current.tell()
            except (OSError, ValueError):
                pass
        return self._bytes_done

    def files(self, base: Path | None = None) -> list[Path]:
        """The files to read, in sorted path order (raises SourceUnreadable on none)."""
        pattern = self.resolve(base)
        if not self.is_glob:
            return [pattern]
        found = sorted(
            Path(p) for p in glob.glob(str(pattern), recursive=True) if os.path.isfile(p)
        )
        if not found:
            raise SourceUnreadable(f"no file matches {pattern}")
        return found

    def check(self) -> None:
        """Raise MissingExtra when the reader's optional dependency is missing."""

    def read_file(self, raw: IO[bytes], path: Path, file_key: str | None) -> Iterator[Entry]:
        """The entries of one open file. ``file_key``, when set, is the key of an
        error entry that stands for the whole file."""
        raise NotImplementedError  # pragma: no cover

    def read_batches(
        self, raw: IO[bytes], path: Path, file_key: str | None
    ) -> Iterator[tuple[list[Any], list[str]]]:
        """The records of one open file and their locations, a batch at a time (two
        lists of one length), for a reader whose every record is readable (a part
        it cannot read raises SourceUnreadable). Such a reader's read_file is
        :meth:`read_batched_file`: while it is, each record is handed on as
        ``Entry(record, location)`` without a look at each entry (see _one_file)."""
        raise NotImplementedError  # pragma: no cover

    def read_batched_file(
        self, raw: IO[bytes], path: Path, file_key: str | None
    ) -> Iterator[Entry]:
        """read_file of a reader that implements :meth:`read_batches`."""
        for records, places in self.read_batches(raw, path, file_key):
            yield from map(Entry, records, places)

    def entries(self, base: Path | None = None, ledger: Ledger | None = None) -> Iterator[Entry]:
        return self._read(None, base, ledger)  # a generator: nothing is read before next()

    def file_entries(self, path: Path, base: Path | None, ledger: Ledger) -> Iterator[Entry]:
        """The entries of ``path``, one file of the glob, read as :meth:`entries`
        reads each (a worker of ``-n`` reads a file its leader handed it so)."""
        return self._read([path], base, ledger)

    def _read(
        self, paths: list[Path] | None, base: Path | None, ledger: Ledger | None
    ) -> Iterator[Entry]:
        """The entries of ``paths`` (None: of :meth:`files`, and one error entry for a
        file of a glob that cannot be read; a list: as files of a glob)."""
        self.check()
        if paths is None:
            paths, many = self.files(base), self.is_glob
        else:
            many = True
        sizes = {}
        for path in paths:
            try:
                sizes[path] = path.stat().st_size
            except OSError:
                sizes[path] = 0
        self.bytes_total, self._bytes_done = sum(sizes.values()), 0
        for path in paths:
            try:
                yield from self._one_file(path, base, ledger, many)
            finally:
                self._current = None
                self._bytes_done += sizes[path]

    def _one_file(
        self, path: Path, base: Path | None, ledger: Ledger | None, many: bool
    ) -> Iterator[Entry]:
        key = _file_key(path, ledger) if many else None
        self._header_check = ledger.header_problem if ledger is not None and many else None
        size, sha = 0, ""
        if ledger is not None and not os.path.isfile(path):
            ledger = None  # a pipe or a device: read once, as it comes, and not recorded
        if ledger is not None:
            try:
                size, sha = file_sha256(path)
            except OSError as exc:
                if not many:
                    raise SourceUnreadable(_cannot_open(path, exc)) from None
                yield Entry(None, str(path), _cannot_open(path, exc), key=key)
                return
            if ledger.skip(path, size, sha):
                return
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            if not many:
                raise SourceUnreadable(_cannot_open(path, exc)) from None
            yield Entry(None, str(path), _cannot_open(path, exc), key=key)
            return
        seen, complete = [0], False  # entries handed out (a list: _parsed counts them)
        try:
            with raw:
                self._current = raw
                try:
                    yield from self._parsed(raw, path, key, seen)
                except SourceUnreadable as exc:
                    if not many:
                        raise
                    seen[0] += 1
                    yield Entry(None, str(path), str(exc), key=key)
                complete = True
        finally:
            if ledger is not None:
                ledger.read(path, size, sha, seen[0], complete)

    def _parsed(
        self, raw: IO[bytes], path: Path, key: str | None, seen: list[int]
    ) -> Iterator[Entry]:
        """The entries of the open file; ``seen[0]`` counts those handed out."""
        # read_file replaced (a subclass, a patch) is read as it is
        if type(self).read_file is FileReader.read_batched_file:
            for records, places in self.read_batches(raw, path, key):
                rest = iter(places)
                try:
                    yield from map(Entry, records, rest)
                finally:  # the entries handed out, also when the reading stops
                    seen[0] += len(places) - length_hint(rest)
            return
        shown = str(path)
        for entry in self.read_file(raw, path, key):
            seen[0] += 1
            if (
                key is not None
                and entry.record is None
                and entry.key is None
                and entry.location.startswith(shown)
            ):  # an unreadable record of a glob: keyed by its file and place
                entry.key = key + entry.location[len(shown) :]
            yield entry

    def read_header(self, base: Path | None = None) -> list[str] | None:
        """The column names of the (first) file, or None when not known."""
        return None


def _cannot_open(path: Path, exc: OSError) -> str:
    return f"cannot open {path}: {exc.strerror or exc}"


def _file_key(path: Path, ledger: Ledger | None) -> str:
    """The key of a whole file's error item: its path relative to the rootdir."""
    absolute = Path(os.path.normpath(path.absolute()))
    root = ledger.rootdir if ledger is not None else Path.cwd()
    try:
        return absolute.relative_to(root.absolute()).as_posix()
    except ValueError:
        return absolute.as_posix()


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
                more: str | None = next(self.text, None)
                if more is None:
                    return last
                line = more
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


class read_csv(FileReader):  # noqa: N801 - public API reads like a function
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

    def read_file(self, raw: IO[bytes], path: Path, file_key: str | None) -> Iterator[Entry]:
        text = io.TextIOWrapper(raw, self.encoding, errors="surrogateescape", newline="")
        dialect = csv.reader(io.StringIO(""), **self.csv_options).dialect
        quotechar = dialect.quotechar if dialect.quoting != csv.QUOTE_NONE else None
        lines = _Lines(text, self.encoding)
        reader = csv.reader(lines, **self.csv_options)
        yield from self._records(reader, lines, path, quotechar, file_key)

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
        """The file's header row (its column names), or None when it has none
        (or when the path is a glob: each file's own header is checked as it is read)."""
        if self.is_glob:
            return None
        with _open(self.resolve(base)) as raw:
            text = io.TextIOWrapper(raw, self.encoding, errors="surrogateescape", newline="")
            for row in csv.reader(text, **self.csv_options):
                if row:
                    return row
        return None

    def _records(
        self,
        reader: Any,
        lines: _Lines,
        path: Path,
        quotechar: str | None,
        file_key: str | None = None,
    ) -> Iterator[Entry]:
        header: list[str] | None = None
        width = 0
        while True:
            lines.start()
            error: str | None = None
            row: list[str] | None
            try:
                row = self._next_row(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row, error = None, self._problem(exc)
                if header is not None:
                    skipped = _past_long_field(lines, path, quotechar, exc, error)
                    if skipped is not None:
                        yield skipped
                        continue
            span = lines.record
            if not span:
                return
            where = f"{path}:{span[0][0]}"
            if header is None:
                bad = "; ".join(f"line {n}: {p}" for n, _, p in span if p)
                if error is None and not bad:
                    if row:
                        header, width = row, len(row)
                        problem = self._header_problem(path, row)
                        if problem is not None:  # a typed record's columns are missing
                            yield Entry(None, where, problem, key=file_key)
                            return
                    continue
                yield _unreadable_header(lines, path, where, error or bad, file_key)
                return
            entry = _record_entry(lines, path, where, row, error, header, width)
            if entry is not None:
                yield entry

    def _header_problem(self, path: Path, row: list[str]) -> str | None:
        check = self._header_check
        return check(path, row) if check is not None else None


def _past_long_field(
    lines: _Lines, path: Path, quotechar: str | None, exc: csv.Error, error: str
) -> Entry | None:
    """A field too long to read: the record is one error to where its quoted field
    closes (nothing after it is read again). None for any other csv error."""
    span = lines.record
    if span and quotechar and "field limit" in str(exc):
        quotes = sum(line.count(quotechar) for _, line, _ in span)
        if quotes % 2:
            end = lines.skip_quoted(quotechar)
            return Entry(
                None,
                f"{path}:{span[0][0]}",
                f"{path}, {_lines_named(span[0][0], end)}: {error}",
            )
    return None


def _unreadable_header(
    lines: _Lines, path: Path, where: str, problem: str, file_key: str | None
) -> Entry:
    """No record can be read: the error covers the whole file."""
    span = lines.record
    first, end = span[0][0], span[-1][0]
    lines.drain()
    rest = f" of {_lines_named(end + 1, lines.read)}" if lines.read > end else ""
    return Entry(
        None,
        where,
        f"{path}, {_lines_named(first, end)}: the header cannot be read "
        f"({problem}), so no record{rest} can be read",
        key=file_key,
    )


def _record_entry(
    lines: _Lines,
    path: Path,
    where: str,
    row: list[str] | None,
    error: str | None,
    header: list[str],
    width: int,
) -> Entry | None:
    """The entry of one record after the header (None for a blank line)."""
    if error is None and not row:
        return None
    cells = row if row is not None else []
    span = lines.record
    first = span[0][0]
    if len(span) > 1 and (error is not None or len(cells) != width):
        # a quoted field ran over line ends and the record does not parse:
        # its first line is the error, the others are read again
        lines.read_again(span[1:])
        reason = error or f"expected {width} fields, got {len(cells)}"
        return Entry(
            None,
            where,
            f"{path}, line {first}: {reason} (a quote on this line runs over "
            "the line end; the lines after it are read as records of their own)",
        )
    bad_lines = [f"line {n}: {p}" for n, _, p in span if p]
    if bad_lines:
        named = "" if len(span) == 1 else f"{_lines_named(first, span[-1][0])}: "
        # the fields as read: the record keeps its real key when the key's
        # field is clean (an undecodable key is its position, see runner)
        readable = error is None and len(cells) == width
        fields = dict(zip(header, cells, strict=True)) if readable else None
        return Entry(fields, where, f"{path}, {named}{'; '.join(bad_lines)}")
    if error is not None:
        return Entry(None, where, f"{path}, line {first}: {error}")
    if len(cells) != width:
        return Entry(
            dict(zip(header, cells, strict=False)),
            where,
            f"{path}, line {first}: expected {width} fields, got {len(cells)}",
        )
    return Entry(dict(zip(header, cells, strict=True)), where, flat=True)

class read_jsonl(FileReader):  # noqa: N801
    """Stream a JSON Lines file: one JSON object per line (blank lines ignored)."""

    def read_file(self, raw: IO[bytes], path: Path, file_key: str | None) -> Iterator[Entry]:
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


class read_json(FileReader):  # noqa: N801
    """Stream the elements of a JSON array: the file's top level, or the array
    found at the dotted path ``at`` (``at="data.items"``: ``{"data": {"items": [...]}}``).

    A malformed element (or one with undecodable bytes) is an ``error`` item
    naming its record number; reading resumes at the next element. A file
    without the array is one ``error`` item naming what was found instead.
    """

    def __init__(self, path: str | Path, at: str | None = None) -> None:
        super().__init__(path)
        if at is not None and (not isinstance(at, str) or not all(at.split("."))):
            raise ValueError(f"read_json(at=...) is a dotted path such as 'data.items': {at!r}")
        self.at = at

    def read_file(self, raw: IO[bytes], path: Path, file_key: str | None) -> Iterator[Entry]:
        text = io.TextIOWrapper(raw, "utf-8-sig", errors="surrogateescape")
        yield from self._elements(text, path, self.at, file_key)

    def __repr__(self) -> str:
        at = f", at={self.at!r}" if self.at else ""
        return f"read_json({str(self.path)!r}{at})"

    @staticmethod
    def _elements(
        text: Any, path: Path, at: str | None = None, file_key: str | None = None
    ) -> Iterator[Entry]:
        decoder = json.JSONDecoder()
        buf, pos, eof, number, consumed = "", 0, False, 0, 0
        done = False  # read_record: the array cannot be read on

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

        def skip_value() -> bool:
            """Move ``pos`` past the value there, reading on and dropping what was
            read (a large member before the array is never held whole); False at
            the end of the file."""
            nonlocal pos
            depth, in_string, escaped = 0, False, False
            while True:
                while pos < len(buf):
                    c = buf[pos]
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
                        if depth == 0:
                            return True
                        depth -= 1
                        if depth == 0:
                            pos += 1
                            return True
                    elif c == "," and depth == 0:
                        return True
                    pos += 1
                if not fill():
                    return False

        def find(name: str) -> str | None:
            """Move into the object at ``pos`` to the value of member ``name``;
            None when found, else what was found instead."""
            nonlocal pos
            first = skip_ws()
            if first != "{":
                return "an empty file" if first == "" else f"{first!r}"
            pos += 1
            while True:
                if skip_ws() == "}":
                    return "no member " + repr(name)
                while True:
                    try:
                        member, end = decoder.raw_decode(buf, pos)
                        break
                    except json.JSONDecodeError:
                        if eof or not fill():
                            return "invalid JSON"
                if not isinstance(member, str):
                    return "invalid JSON"
                pos = end
                if skip_ws() != ":":
                    return "invalid JSON"
                pos += 1
                skip_ws()
                if member == name:
                    return None
                if not skip_value():
                    return "invalid JSON"
                sep = skip_ws()
                if sep == ",":
                    pos += 1
                elif sep != "}":
                    return "invalid JSON"

        def open_array() -> str | None:
            """Move into the array to read (the member ``at``); the problem when
            there is none."""
            nonlocal pos
            where_array = "at the top level"
            if at is not None:
                where_array = f"at {at!r}"
                for depth, name in enumerate(at.split(".")):
                    found = find(name)
                    if found is not None:
                        inside = ".".join(at.split(".")[:depth]) or "the top level"
                        return f"{path}: expected a JSON array at {at!r}, found {found} in {inside}"
            first = skip_ws()
            if first != "[":
                shown = "an empty file" if first == "" else f"{first!r}"
                return f"{path}: expected a JSON array {where_array}, found {shown}"
            pos += 1
            return None

        def read_record(where: str) -> Entry:
            """Decode record ``number`` at ``pos`` and move past it; ``done`` when the
            array cannot be read on."""
            nonlocal pos, done
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                except RecursionError:
                    message = f"{path}, record {number}: {_TOO_DEEP}"
                except json.JSONDecodeError as exc:
                    if not eof and fill():
                        continue
                    offset = consumed + exc.pos
                    message = (
                        f"{path}, record {number}: invalid JSON at character {offset}: {exc.msg}"
                    )
                else:
                    # a number at the end of the buffer may continue in the next read
                    if end == len(buf) and not eof and fill():
                        continue
                    problem = _bad_char(buf[pos:end], "utf-8")
                    pos = end
                    if problem is not None:
                        return Entry(None, where, f"{path}, record {number}: {problem}")
                    return Entry(record, where)
                while (skip := _value_end(buf, pos)) is None and fill():
                    pass
                if skip is None:  # the array never closes
                    done = True
                else:
                    pos = skip
                return Entry(None, where, message)

        problem = open_array()
        if problem is not None:
            yield Entry(None, str(path), problem, key=file_key)
            return
        if skip_ws() == "]":
            return
        while True:
            skip_ws()
            number += 1
            yield read_record(f"{path}#{number}")
            if done:
                return
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
