"""Reading raw rows from the formats hospitals export: JSON, JSONL, CSV/TSV, Parquet, and a
directory written by ``datasets.save_to_disk``.

A reader yields ``RawRow``: the 1-based row number users will look for (the line for JSONL, the
record index otherwise) and either the record (a dict) or the finding that explains why the row
could not be read. A file that cannot be read at all raises ``UserError`` naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .encoding import DecodedText, decode_bytes
from .findings import Finding, finding

FORMATS = ("json", "jsonl", "csv", "tsv", "parquet", "arrow")
_EXT = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
        ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class RawRow:
    row: int
    record: dict | None          # None when the row could not be read
    problem: Finding | None = None


@dataclass
class RawTable:
    format: str
    encoding: str                # "binary" for Parquet/Arrow (text is UTF-8 by definition there)
    rows: list[RawRow]
    notices: list[Finding]
    note: str = ""               # e.g. which key or split of a container was used


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "arrow"
    fmt = _EXT.get(path.suffix.lower())
    if fmt:
        return fmt
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        return "jsonl" if b"}\n{" in head.replace(b"\r\n", b"\n") or b"}\n" in head else "json"
    if b"\t" in head.split(b"\n", 1)[0]:
        return "tsv"
    return "csv"


_NOT_REGULAR = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                (stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"))


def not_regular(path: Path) -> str | None:
    """Why ``path`` cannot be a data file (a device, a pipe, a socket, or a link to one), or None.

    Reading such a path can block or never end (``/dev/zero``), so it is refused before any read.
    A path that does not exist, a regular file or a directory gives None (other checks speak of those).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, what in _NOT_REGULAR:
        if test(mode):
            via = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
            return (f"{path}{via} is a {what}, not a regular file: reading it could block or never end; "
                    "give a data file (JSON, JSONL, CSV, Parquet)")
    return None


def read_table(path: Path, fmt: str | None = None, encoding: str | None = None) -> RawTable:
    if why := not_regular(path):
        raise UserError(why)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory; check the path")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"{path}: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        return _read_parquet(path)
    if fmt == "arrow":
        return _read_arrow(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory but not one written by datasets.save_to_disk; give a data file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror}); check the path and its permissions") from None
    if not data.strip():
        raise UserError(f"{path}: the file is empty; nothing to validate")
    decoded = decode_bytes(data, path, encoding)
    if fmt == "json":
        return _read_json(path, decoded)
    if fmt == "jsonl":
        return _read_jsonl(decoded)
    return _read_csv(path, decoded, "\t" if fmt == "tsv" else ",", fmt)


def _read_jsonl(decoded: DecodedText) -> RawTable:
    rows: list[RawRow] = []
    # strict=False: a raw control character inside a string is reported as control_char (naming
    # the field), not as an unreadable line.
    decoder = json.JSONDecoder(strict=False)
    loads = decoder.decode
    for lineno, line in enumerate(decoded.text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = loads(line)
        except ValueError as exc:
            rows.append(RawRow(lineno, None, finding("bad_json", lineno, "", f"line {lineno} is not valid JSON: {exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else f"line {lineno} is not valid JSON")))
            continue
        rows.append(_as_record(lineno, value))
    return RawTable("jsonl", decoded.encoding, rows, list(decoded.notices))


def _as_record(row: int, value: object) -> RawRow:
    if isinstance(value, dict):
        return RawRow(row, value)
    kind = type(value).__name__ if value is not None else "null"
    return RawRow(row, None, finding("not_object", row, "", f"row {row} is a JSON {kind}, not an object"))


def _read_json(path: Path, decoded: DecodedText) -> RawTable:
    try:
        doc = json.JSONDecoder(strict=False).decode(decoded.text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several JSON values one after another: it is JSONL
            table = _read_jsonl(decoded)
            table.note = "read as JSON Lines (one object per line)"
            return table
        raise UserError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; "
                        "fix the file (or save it as JSON Lines, one object per line)") from None
    note = ""
    if isinstance(doc, dict):
        doc, note = _unwrap_object(path, doc)
    if not isinstance(doc, list):
        raise UserError(f"{path}: the JSON is a {type(doc).__name__}; expected a list of records "
                        "(or an object holding one)")
    rows = [_as_record(i, value) for i, value in enumerate(doc, start=1)]
    return RawTable("json", decoded.encoding, rows, list(decoded.notices), note)


def _unwrap_object(path: Path, doc: dict) -> tuple[list, str]:
    """An object of arrays: either {"train": [records]} or columns {"Question": [...], ...}."""
    lists = {k: v for k, v in doc.items() if isinstance(v, list)}
    record_lists = {k: v for k, v in lists.items() if v and all(isinstance(x, dict) for x in v[:100])}
    if record_lists:
        key = "train" if "train" in record_lists else next(iter(record_lists))
        others = [k for k in record_lists if k != key]
        note = f"records taken from key '{key}'" + (f" (also present, not read: {', '.join(others)})" if others else "")
        return record_lists[key], note
    if lists and len(lists) == len(doc):
        lengths = {len(v) for v in lists.values()}
        if len(lengths) != 1:
            sizes = ", ".join(f"{k}: {len(v)}" for k, v in lists.items())
            raise UserError(f"{path}: the JSON holds columns of different lengths ({sizes}); every column needs one value per row")
        n = lengths.pop()
        columns = list(lists)
        return [{c: lists[c][i] for c in columns} for i in range(n)], "read as columns (an object of arrays)"
    raise UserError(f"{path}: the JSON object holds no list of records; expected a list of records, "
                    "an object holding one (e.g. {\"train\": [...]}), or an object of equal-length columns")


def _read_csv(path: Path, decoded: DecodedText, delimiter: str, fmt: str) -> RawTable:
    csv.field_size_limit(2**31 - 1)  # a long reasoning field is normal here, not an attack
    reader = csv.reader(io.StringIO(decoded.text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: the file is empty; nothing to validate") from None
    except csv.Error as exc:
        raise UserError(f"{path}: cannot read the header: {exc}") from None
    header = [h.strip() for h in header]
    if len(header) < 2:
        other = "tab" if delimiter == "," else "comma"
        raise UserError(f"{path}: the header has a single column '{header[0][:40] if header else ''}'; "
                        f"is the file {other}-separated? (use --format {'tsv' if delimiter == ',' else 'csv'})")
    rows: list[RawRow] = []
    index = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise UserError(f"{path}: CSV error near line {reader.line_num}: {exc}; check the quoting") from None
        if not values or all(not v.strip() for v in values):
            continue
        index += 1
        if len(values) != len(header):
            rows.append(RawRow(index, None, finding(
                "bad_csv_row", index, "",
                f"row {index} (near line {reader.line_num}) has {len(values)} columns; the header has {len(header)}")))
            continue
        rows.append(RawRow(index, dict(zip(header, values, strict=True))))
    return RawTable(fmt, decoded.encoding, rows, list(decoded.notices))


def _rows_from_arrow(table: object) -> list[RawRow]:
    return [RawRow(i, rec) for i, rec in enumerate(table.to_pylist(), start=1)]  # type: ignore[attr-defined]


def _read_parquet(path: Path) -> RawTable:
    import pyarrow.parquet as pq  # pyarrow costs ~0.3 s to import: only when a Parquet file is opened

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises many types for a damaged file
        raise UserError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    return RawTable("parquet", "binary", _rows_from_arrow(table), [])


def _read_arrow(path: Path) -> RawTable:
    """A directory written by ``datasets.save_to_disk`` (a Dataset, or a DatasetDict: its train split)."""
    import pyarrow as pa  # see _read_parquet

    note = ""
    if path.is_file():
        files = [path]
    else:
        if (path / "dataset_dict.json").exists():
            try:
                splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
            except (OSError, ValueError, KeyError):
                raise UserError(f"{path}/dataset_dict.json is damaged; save the data set again") from None
            split = "train" if "train" in splits else splits[0]
            note = f"split '{split}' of {', '.join(splits)}"
            path = path / split
        state = path / "state.json"
        if not state.exists():
            raise UserError(f"{path} is a directory without state.json: not a data set written by "
                            "datasets.save_to_disk; give a data file instead")
        try:
            files = [path / f["filename"] for f in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{state} is damaged; save the data set again") from None
    tables = []
    for f in files:
        try:
            with pa.memory_map(str(f)) as source:
                try:
                    tables.append(pa.ipc.open_stream(source).read_all())
                except pa.ArrowInvalid:
                    source.seek(0)
                    tables.append(pa.ipc.open_file(source).read_all())
        except (OSError, pa.ArrowInvalid) as exc:
            raise UserError(f"{f}: not a readable Arrow file ({exc})") from None
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return RawTable("arrow", "binary", _rows_from_arrow(table), [], note)
