"""``read_xlsx``: Excel sheets, streamed by openpyxl (extra ``ingestkit[excel]``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .readers import FileReader, MissingExtra, SourceUnreadable
from .sources import Entry

PIP_EXCEL = "pip install 'ingestkit[excel]'"


class read_xlsx(FileReader):  # noqa: N801 - public API reads like a function
    """Stream the rows of an ``.xlsx`` sheet as dicts by its header row.

    ``sheet`` is a sheet name (default: the first sheet); ``header_row`` the
    1-based row holding the column names (rows above it are ignored). Values
    are as openpyxl gives them (``int``, ``float``, ``str``, ``datetime``,
    ``None``, …; formulas as their cached values). A row with every cell empty
    is skipped. Each record's location is ``file.xlsx:Sheet!ROW``.
    """

    def __init__(self, path: str | Path, sheet: str | None = None, header_row: int = 1) -> None:
        super().__init__(path)
        if not isinstance(header_row, int) or header_row < 1:
            raise ValueError(f"read_xlsx(header_row=...) is a row number from 1: {header_row!r}")
        self.sheet = sheet
        self.header_row = header_row

    def check(self) -> None:
        try:
            import openpyxl  # noqa: F401
        except ImportError:
            raise MissingExtra(
                f"read_xlsx needs openpyxl, which is not installed: {PIP_EXCEL}"
            ) from None

    def read_file(self, raw: IO[bytes], path: Path, file_key: str | None) -> Iterator[Entry]:
        import openpyxl
        from openpyxl.utils import get_column_letter

        try:
            book = openpyxl.load_workbook(raw, read_only=True, data_only=True)
        except Exception as exc:  # a damaged zip, XML, or not an xlsx at all
            raise SourceUnreadable(
                f"{path}: not a readable .xlsx workbook ({type(exc).__name__}: {exc})"
            ) from None
        try:
            if self.sheet is None:
                sheet = book.worksheets[0]
            elif self.sheet in book.sheetnames:
                sheet = book[self.sheet]
            else:
                names = ", ".join(repr(n) for n in book.sheetnames)
                raise SourceUnreadable(f"{path}: no sheet {self.sheet!r} (sheets: {names})")
            title = sheet.title
            prefix = f"{path}:{title}!"
            number = self.header_row
            header: list[str] | None = None
            width = 0
            try:
                for number, row in enumerate(
                    sheet.iter_rows(min_row=self.header_row, values_only=True), self.header_row
                ):
                    if header is None:
                        header = [
                            get_column_letter(i) if v is None else str(v)
                            for i, v in enumerate(row, 1)
                        ]
                        width = len(header)
                        continue
                    if row.count(None) == len(row):
                        continue
                    record: dict[str, Any] = dict(zip(header, row, strict=False))
                    if len(row) != width:
                        for name in header[len(row) :]:
                            record[name] = None
                        for i, value in enumerate(row[width:], width + 1):
                            if value is not None:
                                record[get_column_letter(i)] = value
                    yield Entry(record, f"{prefix}{number}")
            except SourceUnreadable:
                raise
            except Exception as exc:  # the sheet's XML breaks off
                raise SourceUnreadable(
                    f"{path}, {title}!{number}: the sheet cannot be read on "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            if header is None:
                raise SourceUnreadable(
                    f"{path}: sheet {title!r} has no header row {self.header_row}"
                )
        finally:
            book.close()

    def __repr__(self) -> str:
        extra = f", sheet={self.sheet!r}" if self.sheet is not None else ""
        return f"read_xlsx({str(self.path)!r}{extra})"
