"""Per-answer measures, each with its method stated (``METHODS``), computed from text alone.

The visible answer is what follows ``</think>``; the think block is scored only for being well formed.
A section counts only when its heading has content under it. The diagnosis is matched by
``matching`` (exact, synonym, one-way containment, subtype; never by similarity); an exam answer is
the option letter(s) the visible answer gives.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass

from ..sections import SECTIONS, THREE_ELEMENTS, count_items, find_sections, split_think
from .matching import METHOD as MATCH_METHOD
from .matching import Synonyms, char_f1, match_answer, normalise, references  # noqa: F401 (re-exported)

BASIS_EXPECTED = 3
DIFFERENTIAL_EXPECTED = 2
MIN_SECTION_CHARS = 2

METHODS = {
    "think_well_formed": "the output opens <think> (or the prompt does), closes it with </think>, and the block is non-empty",
    "cut_off": "generation stopped at max_new_tokens instead of at an end-of-answer token",
    "section_*": "the visible answer has a line starting with the section's heading (e.g. 诊断依据) followed by ':' / '：' "
                 f"or a line end, and at least {MIN_SECTION_CHARS} letters or Chinese characters under it "
                 "(list markers and punctuation do not count): an empty heading is not a section",
    "all_sections": "all five sections present with content: diagnosis, basis, differential, treatment, follow-up",
    "three_elements": "the seed's three elements present with content: differential diagnosis + diagnostic basis + follow-up advice",
    "basis_points": f"distinct numbered/bulleted points (else sentences) under 诊断依据; 'complete' = at least {BASIS_EXPECTED}",
    "differential_count": f"distinct numbered/bulleted items under 鉴别诊断; 'covered' = at least {DIFFERENTIAL_EXPECTED}",
    "diagnosis_match": MATCH_METHOD + "; only cases with a reference diagnosis count",
    "diagnosis_similarity": "best character-level F1 between the predicted diagnosis and a reference name: a similarity "
                            "shown for review, never counted as a match",
    "exam_correct": "multiple-choice cases: the option letter(s) given after </think> (the last '答案…X' or '选X', else a "
                    "leading letter, else the one letter named alone) equal the answer key's letters; no letter = wrong",
    "latency": "time to first token, time to the end of </think>, total time, decode tokens/s, output tokens",
}

_CONTENT_CHAR = re.compile(r"[A-Za-z\u4e00-\u9fff]")


def has_content(body: str) -> bool:
    return len(_CONTENT_CHAR.findall(body)) >= MIN_SECTION_CHARS


_LETTERS = r"([A-Z](?:\s*[、,，和及与/]?\s*[A-Z])*)"
_ANSWER_IS = re.compile(r"答案\s*(?:应该?|就)?\s*(?:是|为|选|:|：)*\s*(?:选项)?\s*" + _LETTERS + r"(?![A-Za-z])")
_CHOOSE = re.compile(r"选(?:择)?(?:项)?\s*(?:是|为|:|：)?\s*" + _LETTERS + r"(?![A-Za-z])")
_LEADING_LETTERS = re.compile(r"^\s*(?:\*\*)?([A-Z]{1,8})(?![A-Za-z])")
_LONE = re.compile(r"(?<![A-Za-z])([A-Z])(?=[\s.。,，、;；:：)）]|项|$)")


def exam_letters(answer: str, valid: str) -> str | None:
    """The option letter(s) a visible answer gives, sorted (e.g. "D", "ABE"); None when it gives none."""
    text = unicodedata.normalize("NFKC", answer)
    valid_set = set(valid.upper())

    def pick(raw: str) -> str | None:
        letters = {c for c in raw.upper() if c in valid_set}
        return "".join(sorted(letters)) or None

    for pattern in (_ANSWER_IS, _CHOOSE):
        found = [m.group(1) for m in pattern.finditer(text)]
        found = [f for f in found if pick(f)]
        if found:
            return pick(found[-1])
    lone = {c for c in _LONE.findall(text) if c in valid_set}
    m = _LEADING_LETTERS.match(text)
    if m and pick(m.group(1)) and set(m.group(1)) <= valid_set and lone <= set(m.group(1)):
        return pick(m.group(1))
    return lone.pop() if len(lone) == 1 else None


@dataclass(frozen=True)
class CaseScore:
    think_well_formed: bool
    cut_off: bool | None
    sections: dict[str, bool]          # heading present AND content under it
    headings: dict[str, bool]          # heading present (with or without content)
    all_sections: bool
    three_elements: bool
    basis_points: int
    differential_count: int
    predicted_diagnosis: str
    diagnosis_candidates: list[str]
    diagnosis_match: bool | None       # None: no reference diagnosis
    diagnosis_tier: str | None         # exact | synonym | containment | subtype, or why not
    diagnosis_reference: str | None    # the reference name that matched
    diagnosis_similarity: float | None
    exam_given: str | None = None      # letters the answer gave
    exam_correct: bool | None = None   # None: not a multiple-choice case

    def as_dict(self) -> dict:
        return asdict(self)


def score_answer(output: str, prompt_opened_think: bool, reference_diagnosis=None, cut_off: bool | None = False, *,
                 exam_answer: str | None = None, options=None, synonyms: Synonyms | None = None) -> CaseScore:
    split = split_think(output, prompt_opened_think=prompt_opened_think)
    answer = split.answer
    found = find_sections(answer)
    headings = {name: name in found.present for name in SECTIONS}
    present = {name: headings[name] and has_content(found.spans[name].body(answer)) for name in SECTIONS}
    basis = found.spans.get("basis")
    diff = found.spans.get("differential")
    match = match_answer(answer, reference_diagnosis, synonyms)
    given = correct = None
    if exam_answer:
        valid = "".join(options) if options else "ABCDEFGH"
        given = exam_letters(answer, valid)
        correct = given is not None and given == "".join(sorted(set(exam_answer.upper())))
    return CaseScore(
        think_well_formed=split.well_formed,
        cut_off=cut_off,
        sections=present,
        headings=headings,
        all_sections=all(present.values()),
        three_elements=all(present[n] for n in THREE_ELEMENTS),
        basis_points=count_items(basis.body(answer)) if present["basis"] else 0,
        differential_count=count_items(diff.body(answer)) if present["differential"] else 0,
        predicted_diagnosis=match.predicted,
        diagnosis_candidates=match.candidates,
        diagnosis_match=match.match,
        diagnosis_tier=match.tier,
        diagnosis_reference=match.matched_reference,
        diagnosis_similarity=match.similarity,
        exam_given=given,
        exam_correct=correct,
    )
