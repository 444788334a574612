"""Redaction: every possible identifier replaced by a typed placeholder ([身份证号], [手机号], ...),
and nothing else changed: the same encoding (and byte order mark), line endings, quoting, escapes
and structure. Works on the text formats (JSON, JSONL, CSV, TSV) by finding each string value's
exact place in the file, so only the characters of an identifier are rewritten.

    result = redact_file(src, out)      # counts by kind; the input is only read
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..dataset.findings import IDENTIFIER_KINDS
from ..dataset.identifiers import find_identifiers
from ..errors import UserError
from .gate import PLACEHOLDERS, counts_phrase

TEXT_FORMATS = ("json", "jsonl", "csv", "tsv")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@dataclass
class Redaction:
    source: Path
    output: Path
    format: str
    encoding: str
    replaced: dict[str, int] = field(default_factory=dict)   # kind -> values replaced
    fields: int = 0                                           # string values that changed
    remaining: int = 0                                        # identifiers still found in the output

    @property
    def total(self) -> int:
        return sum(self.replaced.values())

    def as_dict(self) -> dict:
        return {"input": str(self.source), "output": str(self.output), "format": self.format,
                "encoding": self.encoding, "replaced": self.replaced, "total": self.total, "fields": self.fields,
                "remaining": self.remaining, "placeholders": {k: PLACEHOLDERS[k] for k in self.replaced}}

    def summary(self) -> str:
        if not self.total:
            return (f"{self.source}: no possible identifiers found; {self.output} is a copy "
                    "(the input was not changed)")
        return (f"{self.source} -> {self.output}: {self.total} possible identifier(s) replaced in {self.fields} "
                f"field(s) ({counts_phrase(self.replaced)}); the output holds none (checked); the input was not changed")


# ---------------------------------------------------------------- spans in one text value

def identifier_spans(value: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each identifier, overlapping finds merged (the longer one names the kind)."""
    merged: list[list] = []
    for h in find_identifiers(value):
        if merged and h.start < merged[-1][1]:
            last = merged[-1]
            if h.end - h.start > last[1] - last[0]:
                last[2] = h.kind
            last[1] = max(last[1], h.end)
        else:
            merged.append([h.start, h.end, h.kind])
    return [(s, e, k) for s, e, k in merged]


# ---------------------------------------------------------------- JSON / JSONL string literals

def _json_literals(text: str, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each string literal in text[lo:hi] (start at the opening quote, end after the closing one)."""
    i = lo
    while True:
        j = text.find('"', i, hi)
        if j < 0:
            return
        k = j + 1
        while k < hi:
            c = text[k]
            if c == "\\":
                k += 2
                continue
            if c == '"':
                break
            k += 1
        if k >= hi:
            return  # unterminated: leave the rest as it is
        yield j, k + 1
        i = k + 1


def _decode_literal(text: str, lo: int, hi: int) -> tuple[str, list[int], list[int]]:
    """The value of the literal body text[lo:hi], and where each of its characters sits in the text."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i = lo
    while i < hi:
        c = text[i]
        if c == "\\":
            e = text[i + 1] if i + 1 < hi else ""
            if e == "u":
                code = int(text[i + 2:i + 6], 16)  # ValueError on a damaged escape: the caller skips it
                j = i + 6
                if 0xD800 <= code < 0xDC00 and text[j:j + 2] == "\\u":
                    low = int(text[j + 2:j + 6], 16)
                    if 0xDC00 <= low < 0xE000:
                        code, j = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00), j + 6
                ch = chr(code)
            else:
                ch, j = _ESCAPES.get(e, e), i + 2
        else:
            ch, j = c, i + 1
        chars.append(ch)
        starts.append(i)
        ends.append(j)
        i = j
    return "".join(chars), starts, ends


def _json_placeholder(body: str, placeholder: str) -> str:
    """The placeholder as this literal writes non-ASCII text: raw, or as \\u escapes (ensure_ascii files)."""
    escaped = "\\u" in body and not any(ord(c) > 127 for c in body)
    return "".join(c if ord(c) < 128 else f"\\u{ord(c):04x}" for c in placeholder) if escaped else placeholder


def _json_edits(text: str, lo: int, hi: int, scan_only: bool = False) -> Iterator[tuple[int, int, str, str]]:
    """(start, end, replacement, kind) for each identifier in a string value (not a key) of text[lo:hi]."""
    for start, end in _json_literals(text, lo, hi):
        k = end
        while k < hi and text[k] in " \t\r\n":
            k += 1
        if k < hi and text[k] == ":":
            continue  # a key: column names are structure
        try:
            value, starts, ends = _decode_literal(text, start + 1, end - 1)
        except ValueError:
            continue
        for s, e, kind in identifier_spans(value):
            rep = "" if scan_only else _json_placeholder(text[start + 1:end - 1], PLACEHOLDERS[kind])
            yield starts[s], ends[e - 1], rep, kind


def _jsonl_edits(text: str, scan_only: bool = False) -> Iterator[tuple[int, int, str, str]]:
    pos = 0
    while pos < len(text):
        nl = text.find("\n", pos)
        end = len(text) if nl < 0 else nl
        yield from _json_edits(text, pos, end, scan_only)  # a damaged line cannot upset the next
        pos = end + 1


# ---------------------------------------------------------------- CSV / TSV fields

def _csv_fields(text: str, delimiter: str) -> Iterator[tuple[int, list[int], list[int], str]]:
    """(record index, char starts, char ends, value) of each field, read as Python's csv module reads
    (double quotes, "" for a quote inside, any line ending)."""
    n = len(text)
    i, record = 0, 0
    stops = (delimiter, "\r", "\n")
    while i < n:
        chars: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        j = i
        if text[j] == '"':
            j += 1
            while j < n:
                c = text[j]
                if c == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        chars.append('"')
                        starts.append(j)
                        ends.append(j + 2)
                        j += 2
                        continue
                    j += 1
                    break
                chars.append(c)
                starts.append(j)
                ends.append(j + 1)
                j += 1
        while j < n and text[j] not in stops:
            chars.append(text[j])
            starts.append(j)
            ends.append(j + 1)
            j += 1
        yield record, starts, ends, "".join(chars)
        if j < n and text[j] == delimiter:
            i = j + 1
            if i == n:
                yield record, [], [], ""
            continue
        record += 1
        if j < n and text[j] == "\r" and j + 1 < n and text[j + 1] == "\n":
            j += 1
        i = j + 1


def _csv_edits(text: str, delimiter: str, scan_only: bool = False) -> Iterator[tuple[int, int, str, str]]:
    header: int | None = None  # the first record with any text: column names are structure
    for record, starts, ends, value in _csv_fields(text, delimiter):
        if header is None and value.strip():
            header = record
        if header is None or record == header:
            continue
        for s, e, kind in identifier_spans(value):
            yield starts[s], ends[e - 1], "" if scan_only else PLACEHOLDERS[kind], kind


def _edits(text: str, fmt: str, scan_only: bool = False) -> Iterator[tuple[int, int, str, str]]:
    if fmt == "json":
        return _json_edits(text, 0, len(text), scan_only)
    if fmt == "jsonl":
        return _jsonl_edits(text, scan_only)
    return _csv_edits(text, "\t" if fmt == "tsv" else ",", scan_only)


# ---------------------------------------------------------------- files

def _codec(data: bytes, path: Path, encoding: str | None) -> tuple[bytes, str, str]:
    """(byte order mark to keep, codec, the encoding's name for people)."""
    from ..dataset.encoding import decode_bytes

    for bom, codec, name in ((codecs.BOM_UTF8, "utf-8", "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16"),
                             (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16")):
        if not encoding and data.startswith(bom):
            return bom, codec, name
    name = encoding or decode_bytes(data, path).encoding
    return b"", name, name


def redact_text(text: str, fmt: str) -> tuple[str, dict[str, int], int]:
    """(redacted text, replaced values by kind, string values changed)."""
    out: list[str] = []
    pos = 0
    counts = {k: 0 for k in IDENTIFIER_KINDS}
    touched: set[int] = set()
    for start, end, rep, kind in sorted(_edits(text, fmt), key=lambda e: e[0]):
        if start < pos:
            continue
        out.append(text[pos:start])
        out.append(rep)
        pos = end
        counts[kind] += 1
        touched.add(start)
    out.append(text[pos:])
    return "".join(out), {k: v for k, v in counts.items() if v}, len(touched)


def count_identifiers(text: str, fmt: str) -> int:
    return sum(1 for _ in _edits(text, fmt, scan_only=True))


def redact_file(source: str | Path, output: str | Path, *, force: bool = False, format: str | None = None,
                encoding: str | None = None) -> Redaction:
    """Write ``output``: ``source`` with every possible identifier replaced by its placeholder.

    Refuses (UserError) an output that exists (unless ``force``) or is the input itself, a binary
    format, and a result in which an identifier is still found. The input is only read.
    """
    from ..dataset.readers import detect_format, not_regular

    source, output = Path(source).expanduser(), Path(output).expanduser()
    if why := not_regular(source):
        raise UserError(why)
    if not source.is_file():
        raise UserError(f"{source}: no such file; check the path")
    if output.exists() and os.path.samefile(output, source):
        raise UserError(f"{output} is the input file: redaction never changes its input; give a new file with --out")
    if output.exists() and not force:
        raise UserError(f"{output} already exists: give a new file, or pass --force to replace it")
    if output.is_dir():
        raise UserError(f"{output} is a directory: give a file name with --out")
    fmt = format or detect_format(source)
    if fmt not in TEXT_FORMATS:
        raise UserError(f"{source}: redaction works on text files (JSON, JSONL, CSV, TSV), not {fmt}; "
                        "export the data as JSONL first")
    data = source.read_bytes()
    bom, codec, name = _codec(data, source, encoding)
    try:
        text = data[len(bom):].decode(codec, errors="surrogateescape")
    except LookupError:
        raise UserError(f"{source}: unknown encoding '{codec}' (try utf-8 or gb18030)") from None
    new, counts, fields = redact_text(text, fmt)
    remaining = count_identifiers(new, fmt)
    if remaining:
        raise UserError(f"{source}: {remaining} possible identifier(s) are still found after redaction; "
                        "nothing was written: please report this file's layout")
    try:
        payload = bom + new.encode(codec, errors="surrogateescape")
    except UnicodeEncodeError:
        raise UserError(f"{source}: the placeholders cannot be written in {name}; convert the file to UTF-8 first") from None
    if not output.parent.is_dir():
        raise UserError(f"{output.parent}: no such directory")
    tmp = output.with_name(f".{output.name}.redact-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Redaction(source, output, fmt, name, counts, fields, remaining)
