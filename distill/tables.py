"""Read a local data file into columns, from exactly the bytes its sha256 names.

The file is read once into memory, hashed, and parsed from those same bytes, so the rows can
never come from other content than the hash (and so the data stage's key) says. No reader
cache is involved: `datasets` keys its cache of a local file by path and modification time,
and served the old rows of a file rewritten under its old mtime (`cp -p`, `rsync -a`, tar).

Every row keeps its number in the file (the line for CSV/TSV and JSON Lines, the 1-based row
for Parquet and JSON arrays), so a message can point at it; a file that does not parse is
reported with the parser's own reason (line, field counts, unclosed quote).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


class TableError(ValueError):
    """A file that cannot be parsed; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class Table:
    """A file's columns, each row's number in the file, and the sha256 of the bytes parsed."""

    columns: dict[str, list[Any]]
    row_numbers: list[int]
    sha256: str

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __getitem__(self, column: str) -> list[Any]:
        return self.columns[column]


def read_table(
    path: Path,
    fmt: str | None = None,
    encoding: str = "utf-8",
    text_columns: tuple[str, ...] = (),
    **csv_options: Any,
) -> Table:
    """Parse `path` as `fmt` (default: from its suffix). `text_columns` are read as strings
    as they are written (a text "42" or "NA" stays a text); `csv_options` go to pandas."""
    fmt = fmt or FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TableError(
            f"data file {path}: unknown format '{path.suffix}' (use one of {sorted(FILE_FORMATS)})"
        )
    try:
        content = path.read_bytes()
    except OSError as err:
        raise TableError(f"data file {path} could not be read: {err}") from None
    digest = hashlib.sha256(content).hexdigest()
    try:
        if fmt == "csv":
            columns, numbers = _csv(path, content, encoding, text_columns, csv_options)
        elif fmt == "json":
            columns, numbers = _json(path, content, encoding)
        else:
            columns, numbers = _parquet(content)
    except UnicodeDecodeError as err:
        raise TableError(
            f"data file {path} is not valid {encoding} text (byte "
            f"{err.object[err.start : err.start + 1]!r} at position {err.start}); "
            "set data.encoding to the file's encoding, e.g. data.encoding=latin-1"
        ) from None
    except TableError:
        raise
    except Exception as err:  # noqa: BLE001 - the parser's own reason is the message
        raise TableError(f"data file {path} could not be read as {fmt}: {_reason(err)}") from None
    return Table(columns, numbers, digest)


def _reason(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _csv(
    path: Path, content: bytes, encoding: str, text_columns: tuple[str, ...], options: dict
) -> tuple[dict[str, list[Any]], list[int]]:
    import pandas as pd

    if path.suffix.lower() == ".tsv":
        options.setdefault("delimiter", "\t")
    if not content.strip():
        raise TableError(f"data file {path} is empty (no header line)")
    frame = pd.read_csv(
        io.BytesIO(content),
        encoding=encoding,
        # Only an empty cell is missing: the texts "NA", "None", "null", "NaN" are texts.
        keep_default_na=False,
        na_values=[""],
        dtype={column: str for column in text_columns},
        **options,
    )
    columns = {str(name): _plain(frame[name].tolist()) for name in frame.columns}
    header_lines = 1
    # A row's line: the header is line 1 (exact unless quoted texts span several lines).
    return columns, [index + 1 + header_lines for index in range(len(frame))]


def _json(path: Path, content: bytes, encoding: str) -> tuple[dict[str, list[Any]], list[int]]:
    text = content.decode(encoding)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise TableError(f"data file {path}: not valid JSON ({err})") from None
        numbers = list(range(1, len(records) + 1))
    else:  # JSON Lines: one object per line, blank lines skipped
        records, numbers = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TableError(
                    f"data file {path}: line {number} is not valid JSON ({err.msg} at column "
                    f"{err.colno})"
                ) from None
            numbers.append(number)
    for record, number in zip(records, numbers, strict=True):
        if not isinstance(record, dict):
            raise TableError(f"data file {path}: row {number} is not a JSON object")
    names = list(dict.fromkeys(name for record in records for name in record))
    columns = {name: [record.get(name) for record in records] for name in names}
    return columns, numbers


def _parquet(content: bytes) -> tuple[dict[str, list[Any]], list[int]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(content))
    return table.to_pydict(), list(range(1, table.num_rows + 1))


def _plain(values: list[Any]) -> list[Any]:
    """pandas' missing cells (NaN) as None, like every other reader's."""
    return [None if isinstance(value, float) and value != value else value for value in values]
