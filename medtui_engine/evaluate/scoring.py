"""Per-answer measures, each with its method stated (``METHODS``), computed from text alone.

The visible answer is what follows ``</think>``; the think block is scored only for being well formed.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass

from ..sections import SECTIONS, THREE_ELEMENTS, count_items, find_sections, split_think

F1_THRESHOLD = 0.5
BASIS_EXPECTED = 3
DIFFERENTIAL_EXPECTED = 2

METHODS = {
    "think_well_formed": "the output opens <think> (or the prompt does), closes it with </think>, and the block is non-empty",
    "cut_off": "generation stopped at max_new_tokens instead of at an end-of-answer token",
    "section_*": "the visible answer has a line starting with the section's heading (e.g. 诊断依据) followed by ':' / '：' or a line end",
    "all_sections": "all five sections present: diagnosis, basis, differential, treatment, follow-up",
    "three_elements": "the seed's three elements present: differential diagnosis + diagnostic basis + follow-up advice",
    "basis_points": f"distinct numbered/bulleted points (else sentences) under 诊断依据; 'complete' = at least {BASIS_EXPECTED}",
    "differential_count": f"distinct numbered/bulleted items under 鉴别诊断; 'covered' = at least {DIFFERENTIAL_EXPECTED}",
    "diagnosis_exact": "first line of the diagnosis section, normalised (NFKC, lower case, no spaces or punctuation), equals a reference",
    "diagnosis_contains": "normalised prediction contains a reference, or a reference contains it",
    "diagnosis_f1": f"character-level F1 with the best reference >= {F1_THRESHOLD}",
    "latency": "time to first token, time to the end of </think>, total time, decode tokens/s, output tokens",
}

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
_LEADING = re.compile(r"^(?:(?:疑似|考虑|初步|诊断为?|可能为?|拟诊)[:：]?\s*)+")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = _LEADING.sub("", text)
    return _PUNCT.sub("", text)


def char_f1(pred: str, ref: str) -> float:
    p, r = Counter(pred), Counter(ref)
    common = sum((p & r).values())
    if not common:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def references(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parts = re.split(r"[;；|]", value)
        return [p.strip() for p in parts if p.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def predicted_diagnosis(answer: str) -> str:
    sections = find_sections(answer)
    span = sections.spans.get("diagnosis")
    if span is None:
        return ""
    body = span.body(answer)
    first = next((ln.strip() for ln in body.splitlines() if ln.strip()), "")
    return re.split(r"[。；;（(]", first)[0].strip()


@dataclass(frozen=True)
class CaseScore:
    think_well_formed: bool
    cut_off: bool
    sections: dict[str, bool]
    all_sections: bool
    three_elements: bool
    basis_points: int
    differential_count: int
    predicted_diagnosis: str
    diagnosis_exact: bool | None
    diagnosis_contains: bool | None
    diagnosis_f1: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def score_answer(output: str, prompt_opened_think: bool, reference_diagnosis=None, cut_off: bool = False) -> CaseScore:
    split = split_think(output, prompt_opened_think=prompt_opened_think)
    answer = split.answer
    found = find_sections(answer)
    present = {name: name in found.present for name in SECTIONS}
    basis = found.spans.get("basis")
    diff = found.spans.get("differential")
    pred = predicted_diagnosis(answer)
    refs = [normalise(r) for r in references(reference_diagnosis)]
    refs = [r for r in refs if r]
    exact = contains = f1 = None
    if refs:
        p = normalise(pred)
        exact = bool(p) and p in refs
        contains = bool(p) and any(r in p or p in r for r in refs)
        f1 = max(char_f1(p, r) for r in refs) if p else 0.0
    return CaseScore(
        think_well_formed=split.well_formed,
        cut_off=cut_off,
        sections=present,
        all_sections=all(present.values()),
        three_elements=all(present[n] for n in THREE_ELEMENTS),
        basis_points=count_items(basis.body(answer)) if basis else 0,
        differential_count=count_items(diff.body(answer)) if diff else 0,
        predicted_diagnosis=pred,
        diagnosis_exact=exact,
        diagnosis_contains=contains,
        diagnosis_f1=round(f1, 4) if f1 is not None else None,
    )
