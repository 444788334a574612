"""Possible patient identifiers in free text, always reported masked.

Looks for: 18-digit resident ID numbers whose check digit is right (GB 11643), mainland mobile
numbers, e-mail addresses, hospital record numbers introduced by 住院号/门诊号/病案号/病历号, and
``姓名：`` fields holding a name that is not already masked (张某, XXX, ***). A match is a *possible*
identifier: the validator asks a person to look. The matched text is never returned whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

_ID_RE = re.compile(r"(?<![0-9A-Za-z])([1-9]\d{16}[\dXx])(?![0-9A-Za-z])")
_PHONE_RE = re.compile(r"(?<![\d.])(?:\+?86[- ]?)?(1[3-9]\d[- ]?\d{4}[- ]?\d{4})(?![\d.])")
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_RECORD_RE = re.compile(r"(住院号|门诊号|病案号|病历号|住院编号|门诊编号|登记号)\s*[:：]?\s*([A-Za-z]{0,3}\d[\dA-Za-z-]{3,})")
_NAME_RE = re.compile(r"(?:患者)?姓\s*名\s*[:：]\s*([^\s，,。；;:：、()（）]{1,6})")
# A name field that already hides the name (张某, 某某, XX, ***, 患者A, a placeholder such as [姓名]) is not a finding.
_MASKED_NAME = re.compile(r"某|[xX×*＊?？]|^[\[【]|^患者|^[A-Za-z]$|^[甲乙丙丁]$|^(?:未知|不详|未提供|无|略|匿名|保密|已隐去)")
# Cheap tests first: most rows hold none of these, and the full scan is the slow part on big files.
# Every ID or phone number holds 3 digits, an optional separator, then 4 digits.
_DIGIT_RUN = re.compile(r"\d{3}[- ]?\d{4}")


@dataclass(frozen=True)
class IdentifierHit:
    kind: str     # id_number | phone_number | email | record_number | name_field
    start: int    # position in the text (for masking a preview), never shown to the user as such
    end: int
    masked: str   # the value with most of it hidden

    def describe(self) -> str:
        return {
            "id_number": "a resident ID number",
            "phone_number": "a mobile number",
            "email": "an e-mail address",
            "record_number": "a record number",
            "name_field": "a name",
        }[self.kind] + f" ({self.masked})"


def id_checksum_ok(number: str) -> bool:
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def mask(value: str, keep_start: int = 2, keep_end: int = 2) -> str:
    """Hide the middle of a value; short values are hidden whole except their first character."""
    if len(value) <= keep_start + keep_end + 2:
        return value[:1] + "*" * (len(value) - 1)
    return value[:keep_start] + "*" * (len(value) - keep_start - keep_end) + value[len(value) - keep_end:]


def _mask_email(value: str) -> str:
    local, _, domain = value.partition("@")
    tld = domain.rsplit(".", 1)[-1]
    return f"{local[:1]}***@***.{tld}"


def find_identifiers(text: str) -> list[IdentifierHit]:
    if not ("@" in text or "号" in text or "姓" in text or _DIGIT_RUN.search(text)):
        return []
    hits: list[IdentifierHit] = []
    for m in _ID_RE.finditer(text):
        if id_checksum_ok(m.group(1)):
            hits.append(IdentifierHit("id_number", m.start(1), m.end(1), mask(m.group(1), 3, 1)))
    for m in _PHONE_RE.finditer(text):
        digits = re.sub(r"\D", "", m.group(1))
        if any(h.start <= m.start(1) < h.end for h in hits):
            continue  # part of an ID number already found
        hits.append(IdentifierHit("phone_number", m.start(1), m.end(1), mask(digits, 3, 2)))
    if "@" in text:
        for m in _EMAIL_RE.finditer(text):
            hits.append(IdentifierHit("email", m.start(), m.end(), _mask_email(m.group())))
    for m in _RECORD_RE.finditer(text):
        hits.append(IdentifierHit("record_number", m.start(2), m.end(2), f"{m.group(1)} {mask(m.group(2), 1, 1)}"))
    for m in _NAME_RE.finditer(text):
        name = m.group(1)
        if not _MASKED_NAME.search(name):
            hits.append(IdentifierHit("name_field", m.start(1), m.end(1), "姓名：" + mask(name, 1, 0)))
    hits.sort(key=lambda h: h.start)
    return hits


def mask_identifiers(text: str, hits: list[IdentifierHit] | None = None) -> str:
    """The text with every identifier found replaced by its masked form (for previews)."""
    hits = find_identifiers(text) if hits is None else hits
    out, pos = [], 0
    for h in hits:
        if h.start < pos:
            continue
        out.append(text[pos:h.start])
        out.append("*" * max(3, min(h.end - h.start, 8)))
        pos = h.end
    out.append(text[pos:])
    return "".join(out)
