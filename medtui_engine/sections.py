"""Reading a clinical answer: the think block and the sections a clinician expects.

Used by the dataset validator (answers missing sections), the console (marking sections) and the
evaluation (section rates, basis and differential counts). Pure functions over text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# name -> headings that count for it (first match wins). Order is the expected order in an answer.
SECTIONS: dict[str, tuple[str, ...]] = {
    "diagnosis": ("疑似诊断", "初步诊断", "诊断"),
    "basis": ("诊断依据",),
    "differential": ("鉴别诊断",),
    "treatment": ("治疗方案", "治疗原则", "处理"),
    "followup": ("随访建议", "随访", "复查", "复诊"),
}
SECTION_LABELS = {
    "diagnosis": "疑似诊断",
    "basis": "诊断依据",
    "differential": "鉴别诊断",
    "treatment": "治疗方案",
    "followup": "随访建议",
}
# The seed's "three elements": differential diagnosis, supporting basis, follow-up advice.
THREE_ELEMENTS = ("differential", "basis", "followup")

_HEADING_END = r"\s*(?:[：:]|\n|$)"
_LINE_START = r"(?:^|\n)[ \t>#*\-]*(?:\*\*)?"


def _heading_regex(words: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(re.escape(w) for w in words)
    return re.compile(_LINE_START + r"(?:" + alts + r")(?:\*\*)?" + _HEADING_END)


_PATTERNS = {name: _heading_regex(words) for name, words in SECTIONS.items()}
# "诊断" alone must not match inside "诊断依据" / "鉴别诊断": the heading must end at a colon/newline.


@dataclass(frozen=True)
class ThinkSplit:
    think: str
    answer: str
    opened: bool
    closed: bool

    @property
    def well_formed(self) -> bool:
        return self.opened and self.closed and bool(self.think.strip())


def split_think(output: str, prompt_opened_think: bool = False) -> ThinkSplit:
    """Split a generation into the think block and the visible answer.

    With the seed template the prompt ends in ``<think>``, so the output starts inside the block.
    """
    opened = prompt_opened_think or "<think>" in output
    text = output
    if "<think>" in text:
        text = text.split("<think>", 1)[1]
    if "</think>" in text:
        think, answer = text.split("</think>", 1)
        closed = True
    elif opened:
        think, answer, closed = text, "", False
    else:
        think, answer, closed = "", text, False
    answer = answer.lstrip()
    if answer.startswith("### 回答:"):
        answer = answer[len("### 回答:"):].lstrip()
    return ThinkSplit(think.strip(), answer, opened, closed)


@dataclass(frozen=True)
class SectionSpan:
    name: str
    start: int      # where the heading starts
    body_start: int  # after the heading
    end: int        # where the next section starts (or end of text)

    def body(self, text: str) -> str:
        return text[self.body_start:self.end].strip()


@dataclass(frozen=True)
class AnswerSections:
    spans: dict[str, SectionSpan] = field(default_factory=dict)

    @property
    def present(self) -> set[str]:
        return set(self.spans)

    @property
    def missing(self) -> list[str]:
        return [n for n in SECTIONS if n not in self.spans]


def find_sections(answer: str) -> AnswerSections:
    found: list[tuple[int, int, str]] = []
    for name, pattern in _PATTERNS.items():
        m = pattern.search(answer)
        if m:
            start = m.start() + (1 if answer[m.start():m.start() + 1] == "\n" else 0)
            found.append((start, m.end(), name))
    found.sort()
    spans: dict[str, SectionSpan] = {}
    for i, (start, body_start, name) in enumerate(found):
        end = found[i + 1][0] if i + 1 < len(found) else len(answer)
        spans[name] = SectionSpan(name, start, body_start, end)
    return AnswerSections(spans)


_ITEM = re.compile(r"(?:^|\n)\s*(?:\d+[.、.)）]|[（(]\d+[)）]|[-*•·]|[①②③④⑤⑥⑦⑧⑨])\s*")


def count_items(body: str) -> int:
    """Distinct points in a section body: numbered/bulleted lines, else sentences split by 。；;."""
    items = [s for s in _ITEM.split(body) if s.strip()]
    if len(items) > 1 or _ITEM.search(body):
        return len({re.sub(r"\s+", "", s) for s in items})
    parts = [p for p in re.split(r"[。；;]\s*", body) if p.strip()]
    return len({re.sub(r"\s+", "", p) for p in parts})
