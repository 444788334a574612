"""Turning a data file's bytes into text, and saying plainly when they are not clean UTF-8.

Hospital exports are often GB18030/GBK (Windows, older HIS systems), sometimes UTF-8 with a BOM or
UTF-16. We read what we can, say which encoding we used and how to convert, and refuse (with the
line and byte) only when no sensible reading exists.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .findings import Finding, finding

# Share of non-ASCII characters that may be undecodable before we stop calling the file "UTF-8 with
# a few damaged bytes" and try another encoding instead.
_DAMAGED_UTF8_SHARE = 0.01


@dataclass(frozen=True)
class DecodedText:
    text: str
    encoding: str                 # what we used: utf-8, utf-8-sig, gb18030, utf-16
    notices: tuple[Finding, ...]  # file-level findings (bom, not_utf8)


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_bytes(data: bytes, path: Path, encoding: str | None = None) -> DecodedText:
    """Decode a whole file. ``encoding`` forces one (the user said so); otherwise detect."""
    if encoding:
        try:
            return DecodedText(data.decode(encoding), encoding, ())
        except LookupError:
            raise UserError(f"{path}: unknown encoding '{encoding}' (try utf-8 or gb18030)") from None
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{path}: not valid {encoding}: line {_line_of(data, exc.start)}, byte {exc.start}; "
                "give the file's real encoding, or leave it out to let medtui detect it") from None

    if data.startswith(codecs.BOM_UTF8):
        notice = finding("bom", 0, "", "the file starts with a UTF-8 byte order mark (BOM); it was skipped")
        try:
            return DecodedText(data[3:].decode("utf-8"), "utf-8-sig", (notice,))
        except UnicodeDecodeError:
            text = data[3:].decode("utf-8", errors="replace")
            return DecodedText(text, "utf-8-sig", (notice,))
    for bom, name in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            try:
                text = data[2:].decode(name)
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}: starts like UTF-16 but is not valid UTF-16 (byte {exc.start}); "
                                "convert it to UTF-8") from None
            return DecodedText(text, "utf-16", (finding(
                "not_utf8", 0, "", "the file is UTF-16 (it starts with a UTF-16 byte order mark); read as UTF-16",
                hint="convert it to UTF-8, e.g. iconv -f UTF-16 -t UTF-8 IN > OUT"),))

    try:
        return DecodedText(data.decode("utf-8"), "utf-8", ())
    except UnicodeDecodeError as exc:
        first_bad = exc.start

    # Mostly UTF-8 with a few damaged bytes: keep UTF-8; the damaged rows show U+FFFD and are reported
    # row by row (replacement_char). A GBK file read as UTF-8 fails almost everywhere instead.
    lossy = data.decode("utf-8", errors="replace")
    non_ascii = len(data.translate(None, bytes(range(0x80)))) or 1
    if lossy.count("\ufffd") / non_ascii <= _DAMAGED_UTF8_SHARE:
        return DecodedText(lossy, "utf-8", ())

    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        raise UserError(
            f"{path}: not UTF-8 (first bad byte at line {_line_of(data, first_bad)}, byte offset {first_bad}) "
            "and not GB18030/GBK either; convert the file to UTF-8 and try again") from None
    return DecodedText(text, "gb18030", (finding(
        "not_utf8", 0, "",
        f"the file is not UTF-8 (line {_line_of(data, first_bad)} has bytes UTF-8 cannot read); "
        "it reads cleanly as GB18030 (GBK), so it was read that way",
        hint="convert it to UTF-8 so every tool reads it the same, e.g. iconv -f GB18030 -t UTF-8 IN > OUT"),))
