"""Row-level text checks: what would corrupt the template, damage the text, or teach the wrong thing.

Pure functions over strings; each returns findings for one field of one row (identifiers masked).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from ..sections import SECTION_LABELS, SECTIONS, find_sections
from ..templates import TEMPLATE_MARKERS
from .findings import Finding, finding
from .identifiers import find_identifiers
from .load import FIELD_TITLES, Case

_MARKER_RE = re.compile("|".join(re.escape(m) for m in TEMPLATE_MARKERS))
# Invisible characters that have no business in clinical text: C0/C1 controls (tab, newline and
# carriage return excepted), DEL, zero-width characters, line/paragraph separators, stray BOMs.
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u2060\ufeff]")
# Runs of characters UTF-8 bytes turn into when read as Latin-1 / Windows-1252.
_CP1252_EXTRA = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_MOJIBAKE_RUN = re.compile("[\u00c0-\u00ff][\u0080-\u00ff" + re.escape(_CP1252_EXTRA) + "]{1,}")
_LATIN1_RUN = re.compile("[\u00a1-\u00ff]{4,}")
_LATIN_HIGH = re.compile("[\u00c0-\u00ff]")
_CP1252_TO_BYTE = {ch: bytes([b]) for b in range(0x80, 0xA0)
                   for ch in [bytes([b]).decode("cp1252", errors="ignore")] if ch}


def _char_name(ch: str) -> str:
    return f"U+{ord(ch):04X}" + (f" {unicodedata.name(ch, '')}" if unicodedata.name(ch, "") else "")


def check_markers(row: int, name: str, text: str) -> list[Finding]:
    found = sorted({m.group() for m in _MARKER_RE.finditer(text)})
    if not found:
        return []
    return [finding("template_marker", row, name,
                    f"{FIELD_TITLES[name]} contains {', '.join(repr(f) for f in found)}, which the template uses itself")]


def check_control(row: int, name: str, text: str) -> list[Finding]:
    chars = _CONTROL_RE.findall(text)
    if not chars:
        return []
    kinds = sorted(set(chars))
    return [finding("control_char", row, name,
                    f"{FIELD_TITLES[name]} has {len(chars)} control/invisible character(s): "
                    + ", ".join(_char_name(c) for c in kinds[:4]))]


def _unmojibake(run: str) -> str | None:
    out = bytearray()
    for ch in run:
        o = ord(ch)
        if o < 0x100:
            out.append(o)
        elif ch in _CP1252_TO_BYTE:
            out += _CP1252_TO_BYTE[ch]
        else:
            return None
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_encoding_damage(row: int, name: str, text: str) -> list[Finding]:
    out: list[Finding] = []
    if "\ufffd" in text:
        i = text.index("\ufffd")
        out.append(finding("replacement_char", row, name,
                           f"{FIELD_TITLES[name]} has {text.count(chr(0xFFFD))} undecodable character(s) (\ufffd), the first at character {i + 1}"))
    if not _LATIN_HIGH.search(text):
        return out
    for m in _MOJIBAKE_RUN.finditer(text):
        fixed = _unmojibake(m.group())
        if fixed and any(ord(c) >= 0x0800 for c in fixed):
            out.append(finding("mojibake", row, name,
                               f"{FIELD_TITLES[name]} looks like UTF-8 read as Latin-1/Windows-1252: "
                               f"'{m.group()[:12]}' reads as '{fixed[:6]}'"))
            return out
    for m in _LATIN1_RUN.finditer(text):
        try:
            fixed = m.group().encode("latin-1").decode("gb18030")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if sum(1 for c in fixed if "\u4e00" <= c <= "\u9fff") >= 2:
            out.append(finding("mojibake", row, name,
                               f"{FIELD_TITLES[name]} looks like GBK text read as Latin-1: '{m.group()[:12]}' reads as '{fixed[:6]}'"))
            return out
    return out


def check_identifiers(row: int, name: str, text: str) -> list[Finding]:
    out = []
    for hit in find_identifiers(text):
        out.append(finding(hit.kind, row, name, f"{FIELD_TITLES[name]} may hold {hit.describe()}"))
    return out


def check_case_text(case: Case) -> list[Finding]:
    """Every per-field text check for one case."""
    out: list[Finding] = []
    for name in ("question", "cot", "response"):
        text = getattr(case, name)
        if not text:
            continue
        out += check_markers(case.row, name, text)
        out += check_control(case.row, name, text)
        out += check_encoding_damage(case.row, name, text)
        out += check_identifiers(case.row, name, text)
    return out


_NORMALISE_RE = re.compile(r"[\W_]+")


def normalise_question(text: str) -> str:
    """For near-duplicates: same letters and digits, ignoring case, width, spacing and punctuation."""
    return _NORMALISE_RE.sub("", unicodedata.normalize("NFKC", text).lower())


def check_duplicates(cases: Iterable[Case]) -> list[Finding]:
    exact: dict[str, int] = {}
    near: dict[str, int] = {}
    out: list[Finding] = []
    for case in cases:
        first = exact.get(case.question)
        if first is not None:
            out.append(finding("duplicate_question", case.row, "question", f"same Question as row {first}"))
            continue
        exact[case.question] = case.row
        key = normalise_question(case.question)
        if not key:
            continue
        first = near.get(key)
        if first is not None:
            out.append(finding("near_duplicate_question", case.row, "question",
                               f"Question repeats row {first} up to spacing, case and punctuation"))
        else:
            near[key] = case.row
    return out


def section_presence(cases: list[Case]) -> tuple[dict[str, float], list[set[str]]]:
    """Rate of answers holding each section, and each case's set of sections."""
    present = [find_sections(c.response).present if ("诊断" in c.response or "治疗" in c.response
               or "处理" in c.response or "随访" in c.response or "复" in c.response) else set()
               for c in cases]
    n = len(cases) or 1
    rates = {name: sum(1 for p in present if name in p) / n for name in SECTIONS}
    return rates, present


def check_sections(cases: list[Case], present: list[set[str]], rates: dict[str, float]) -> list[Finding]:
    """Rows lacking a section that most answers in this file have (the file's own convention)."""
    expected = [name for name in SECTIONS if rates.get(name, 0.0) >= 0.5]
    if not expected:
        return []
    out = []
    for case, have in zip(cases, present, strict=True):
        missing = [n for n in expected if n not in have]
        if missing:
            out.append(finding("missing_sections", case.row, "response",
                               "Response lacks " + "、".join(SECTION_LABELS[n] for n in missing)
                               + " (most answers in this file have them)"))
    return out
