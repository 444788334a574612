"""Matching a model's diagnosis against the reference the way a clinician would accept it.

The primary diagnosis is read from the answer's diagnosis section (``sections.find_sections``): its
first line with content, parentheticals removed, split into clauses at list separators. A clause
under negation (不考虑, 排除, 除外, 不支持, 不像, 可排除 ...) is dropped (the part after a later
positive cue such as 考虑 is kept). What is left are the candidates; more than two candidates is a
list, not a primary diagnosis, and matches nothing.

A candidate matches a reference in one of three tiers, tried in this order:

* ``exact``: equal after normalisation (NFKC, lower case, no spaces or punctuation, no lead-in
  words such as 考虑/诊断为) to any name in the reference list;
* ``synonym``: the candidate and a reference are names of one group in the synonyms file(s);
* ``containment``: one way only: the candidate contains a whole reference name (or one of its
  synonyms) of at least two characters, not right after 非/无/不 (非小细胞肺癌 is not 小细胞肺癌);
* ``subtype``: the candidate names a kind of the reference: the reference's own leading modifier,
  further modifiers ending in 性/型, then the reference's head term (急性化脓性阑尾炎 is a 急性阑尾炎;
  肝转移癌 is not a 肝癌: no modifier ends in 性/型).

Character similarity (character-level F1) is reported beside the verdict as a similarity; it never
makes a match.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from ..errors import UserError
from ..sections import find_sections

TIERS = ("exact", "synonym", "containment", "subtype")
# Why a case did not match (the tier field says one of these when diagnosis_match is false).
NO_DIAGNOSIS = "no_diagnosis"
TOO_MANY = "too_many_candidates"
NEGATED = "negated"
DIFFERENT = "different"
MAX_CANDIDATES = 2
MIN_CONTAINED_CHARS = 2

SYNONYMS_FORMAT = (
    "UTF-8 text, one group of names for the same diagnosis a line, names separated by tabs; "
    "blank lines and lines starting with # are ignored"
)

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
_LEADING = re.compile(r"^(?:(?:疑似|考虑|初步|诊断为?|可能为?|拟诊|患者|本例|该患者|该病人|病人)[:：]?\s*)+")
PARENTHETICAL = re.compile(r"[（(][^（）()]*[)）]|【[^】]*】|\[[^\]]*\]")
# List separators between diagnoses; 、 and 或 included, 和/及/合并/伴 are parts of one diagnosis.
_STRONG_SPLIT = re.compile(r"[，,；;。.！!？?]")
_WEAK_SPLIT = re.compile(r"[/|、]|或者|或")
_COMPLICATION = re.compile(r"\s*(?:合并|伴有|伴|并发|继发)")
# "Cannot exclude" is a hedge, not a negation: rewrite it before looking for negation cues.
_DOUBLE_NEGATIVE = re.compile(r"不能除外|不能排除|不除外|不排除|未能排除|未排除")
_NEGATION = re.compile(
    r"暂不考虑|不考虑|可以排除|可排除|已排除|待排除|排除|待除外|除外|待排|不支持|不像|不符合|不是|并非|而非|否认|"
    r"可能性小|可能性不大|可能性较小|可能性低"
)
_POSITIVE = re.compile(r"考虑为|考虑|诊断为|诊断|符合|应为|拟诊|倾向于?")
_TRAILING = re.compile(r"(?:诊断明确|诊断成立|明确|可能性大|可能性较大|可能大|可能|待查|待确诊)+$")
_NOT_BEFORE = "非无不"


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = _LEADING.sub("", text)
    text = _PUNCT.sub("", text)
    return _LEADING.sub("", text)


def char_f1(pred: str, ref: str) -> float:
    p, r = Counter(pred), Counter(ref)
    common = sum((p & r).values())
    if not common:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def references(value) -> list[str]:
    """A reference diagnosis as a list of accepted names: a list, or a string split at ; ； |."""
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in re.split(r"[;；|]", value) if p.strip()]
    return [str(v).strip() for v in value if v is not None and str(v).strip()]


# --- synonyms -------------------------------------------------------------------------------------

class Synonyms:
    """Groups of names for the same diagnosis; a name may sit in several groups."""

    def __init__(self, groups: list[list[str]] | None = None, sources: list[str] | None = None):
        self.groups: list[frozenset[str]] = []
        self._by_name: dict[str, list[int]] = {}
        self.sources = list(sources or [])
        for g in groups or []:
            self.add_group(g)

    def add_group(self, names: list[str]) -> None:
        norm = frozenset(n for n in (normalise(x) for x in names) if n)
        if len(norm) < 2:
            return
        idx = len(self.groups)
        self.groups.append(norm)
        for n in norm:
            self._by_name.setdefault(n, []).append(idx)

    def of(self, name: str) -> set[str]:
        """Every name that shares a group with ``name`` (normalised), ``name`` included."""
        out = {name}
        for i in self._by_name.get(name, ()):
            out |= self.groups[i]
        return out

    def same(self, a: str, b: str) -> bool:
        return bool(set(self._by_name.get(a, ())) & set(self._by_name.get(b, ())))

    def merged(self, other: Synonyms) -> Synonyms:
        out = Synonyms(sources=self.sources + other.sources)
        for g in self.groups + other.groups:
            out.add_group(list(g))
        return out


def parse_synonyms(text: str, where: str) -> list[list[str]]:
    groups = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        names = [x.strip() for x in line.split("\t") if x.strip()]
        if len(names) < 2:
            raise UserError(f"{where}: line {n} has {len(names)} name; a synonym group needs at least two names "
                            f"separated by tabs ({SYNONYMS_FORMAT})")
        groups.append(names)
    return groups


def load_synonyms(path: Path | None = None, *, defaults: bool = True) -> Synonyms:
    """The shipped default groups (``synonyms.tsv`` in this package), plus the user's file if given."""
    syn = Synonyms()
    if defaults:
        text = resources.files(__package__).joinpath("synonyms.tsv").read_text(encoding="utf-8")
        syn = syn.merged(Synonyms(parse_synonyms(text, "default synonyms"), ["default"]))
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise UserError(f"{path}: no such synonyms file") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text; save the synonyms file as UTF-8") from None
        syn = syn.merged(Synonyms(parse_synonyms(text, str(path)), [str(path)]))
    return syn


_DEFAULT: Synonyms | None = None


def default_synonyms() -> Synonyms:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_synonyms()
    return _DEFAULT


# --- reading the prediction -----------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    line: str                   # the line the diagnosis was read from ("" when none)
    candidates: list[str]       # normalised, negated clauses removed
    negated: list[str]          # normalised text under negation


def _last(matches):
    found = None
    for found in matches:  # noqa: B007 (the last one is wanted)
        pass
    return found


def _split_negation(clause: str) -> tuple[str, str]:
    """(positive part, negated part) of one clause."""
    clause = _DOUBLE_NEGATIVE.sub("可能", clause)
    m = _NEGATION.search(clause)
    if not m:
        return clause, ""
    p = _last(_POSITIVE.finditer(clause, m.end()))  # the last positive cue after the negation
    if p is not None:
        return clause[p.end():], clause[:p.start()]
    return "", clause


def read_prediction(text: str) -> Prediction:
    """Candidates from one line of text (a diagnosis line, or a whole short prediction).

    The line splits at ，；。 into clauses; a clause opening with 合并/伴/并发/继发 names complications of
    the diagnosis before it (not competing candidates); negation covers its whole clause (up to a
    later positive cue such as 考虑); what is left splits at 、 / 或 into candidates."""
    line = PARENTHETICAL.sub("", unicodedata.normalize("NFKC", text))
    line = re.sub(r"^\s*(?:\d+[.、)]|[-*•·])\s*", "", line)
    candidates: list[str] = []
    negated: list[str] = []
    for clause in _STRONG_SPLIT.split(line):
        if not clause.strip() or (candidates and _COMPLICATION.match(clause)):
            continue
        pos, neg = _split_negation(clause)
        if neg and normalise(neg):
            negated += [normalise(x) for x in _WEAK_SPLIT.split(neg) if normalise(x)]
        for part in _WEAK_SPLIT.split(pos):
            part = _TRAILING.sub("", _PUNCT.sub("", part))
            m = _last(_POSITIVE.finditer(part))
            if m is not None and normalise(part[m.end():]):
                part = part[m.end():]
            c = normalise(part)
            if c and c not in candidates:
                candidates.append(c)
    return Prediction(text.strip(), candidates, negated)


_ITEM_LINE = re.compile(r"^\s*(?:\d+[.、.)）]|[（(]\d+[)）]|[-*•·]|[①②③④⑤⑥⑦⑧⑨])")


def _has_content(line: str) -> bool:
    return bool(re.search(r"[\w\u4e00-\u9fff]", line))


def diagnosis_line(answer: str) -> tuple[str, list[str]]:
    """(first line of the diagnosis section, the lines of a numbered/bulleted list there, if any)."""
    span = find_sections(answer).spans.get("diagnosis")
    if span is None:
        return "", []
    lines = [ln.strip() for ln in span.body(answer).splitlines() if _has_content(ln)]
    if not lines:
        return "", []
    items = []
    if _ITEM_LINE.match(lines[0]):
        for ln in lines:
            if not _ITEM_LINE.match(ln):
                break
            items.append(ln)
    return lines[0], items


def predict_from_answer(answer: str) -> Prediction:
    first, items = diagnosis_line(answer)
    if len(items) > 1:  # a numbered list: every item is a candidate
        cands, neg = [], []
        for it in items:
            p = read_prediction(it)
            cands += [c for c in p.candidates if c not in cands]
            neg += p.negated
        return Prediction(" / ".join(items), cands, neg)
    return read_prediction(first) if first else Prediction("", [], [])


# --- matching -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    match: bool | None          # None: no reference to match against
    tier: str | None            # exact | synonym | containment, or why not: no_diagnosis | too_many_candidates | negated | different
    predicted: str              # the line the diagnosis was read from
    candidates: list[str]
    matched_reference: str | None
    similarity: float | None    # best character F1 between a candidate (or the line) and a reference; not a match

    def as_dict(self) -> dict:
        return asdict(self)


def _contains(cand: str, ref: str) -> bool:
    if len(ref) < MIN_CONTAINED_CHARS or len(cand) <= len(ref) or (ref.isascii() and len(ref) < 4):
        return False
    start = cand.find(ref)
    while start != -1:
        if start == 0 or cand[start - 1] not in _NOT_BEFORE:
            return True
        start = cand.find(ref, start + 1)
    return False


def _subtype(cand: str, ref: str) -> bool:
    """急性化脓性阑尾炎 names a kind of 急性阑尾炎: the reference's own leading modifier (up to its last
    性/型), then further modifiers ending in 性/型, then the reference's whole head term (2+ characters)."""
    i = max(ref.rfind("性"), ref.rfind("型"))
    if i <= 0 or len(ref) - i - 1 < MIN_CONTAINED_CHARS:
        return False
    prefix, head = ref[:i + 1], ref[i + 1:]
    start = cand.find(prefix)
    while start != -1:
        if start == 0 or cand[start - 1] not in _NOT_BEFORE:
            rest = cand[start + len(prefix):]
            j = rest.find(head)
            if 0 < j <= 8 and rest[j - 1] in "性型":
                return True
        start = cand.find(prefix, start + 1)
    return False


def match_prediction(pred: Prediction, reference, synonyms: Synonyms | None = None) -> Match:
    syn = synonyms if synonyms is not None else default_synonyms()
    refs = [r for r in (normalise(x) for x in references(reference)) if r]
    if not refs:
        return Match(None, None, pred.line, pred.candidates, None, None)
    pool = pred.candidates or ([normalise(pred.line)] if normalise(pred.line) else [])
    sim = round(max((char_f1(c, r) for c in pool for r in refs), default=0.0), 4) if pool else 0.0

    def no(tier: str) -> Match:
        return Match(False, tier, pred.line, pred.candidates, None, sim)

    if not pred.candidates:
        if pred.negated:
            return no(NEGATED)
        return no(NO_DIAGNOSIS)
    if len(pred.candidates) > MAX_CANDIDATES:
        return no(TOO_MANY)
    for tier in TIERS:
        for c in pred.candidates:
            for r in refs:
                if tier == "exact" and c == r:
                    return Match(True, tier, pred.line, pred.candidates, r, sim)
                if tier == "synonym" and syn.same(c, r):
                    return Match(True, tier, pred.line, pred.candidates, r, sim)
                if tier == "containment" and any(_contains(c, name) for name in syn.of(r)):
                    return Match(True, tier, pred.line, pred.candidates, r, sim)
                if tier == "subtype" and any(_subtype(c, name) for name in syn.of(r)):
                    return Match(True, tier, pred.line, pred.candidates, r, sim)
    if any(r in n or n in r for n in pred.negated for r in refs):
        return no(NEGATED)
    return no(DIFFERENT)


def match_diagnosis(prediction: str, reference, synonyms: Synonyms | None = None) -> Match:
    """Match a diagnosis given as text (one line) against a reference (a name or a list of names)."""
    return match_prediction(read_prediction(prediction), reference, synonyms)


def match_answer(answer: str, reference, synonyms: Synonyms | None = None) -> Match:
    """Match the primary diagnosis of a visible answer (its diagnosis section) against a reference."""
    return match_prediction(predict_from_answer(answer), reference, synonyms)


METHOD = (
    "primary diagnosis = first line with content of the diagnosis section (a numbered list there: its items), "
    "parentheticals removed, split at list separators (，；。、/ 或), a clause opening with 合并/伴/并发/继发 read as a complication of the diagnosis before it; clauses under negation (不考虑, 排除, 除外, "
    "不支持, 不像, 可排除, 可能性小 ...) dropped, 不除外/不能排除 read as a hedge; more than "
    f"{MAX_CANDIDATES} candidates is a list and matches nothing. A candidate matches when, after normalisation "
    "(NFKC, lower case, no spaces/punctuation/lead-in words), it equals a reference name (exact), shares a group "
    "in the synonyms file (synonym), or contains a whole reference name or synonym of at least "
    f"{MIN_CONTAINED_CHARS} characters, not right after 非/无/不 (containment, one way only), or names a subtype of "
    "it: the reference's leading modifier, further modifiers ending in 性/型, then the reference's head term "
    "(subtype: 急性化脓性阑尾炎 for 急性阑尾炎). Character F1 is reported as a similarity, never as a match"
)
