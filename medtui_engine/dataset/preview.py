"""One row exactly as the trainer sees it: the prompt part (masked from the loss when the run asks)
and the trained part (think + answer + EOS), with possible identifiers masked."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..templates import render_case
from .identifiers import find_identifiers, mask_identifiers
from .load import Case
from .measure import _encode_lengths


@dataclass(frozen=True)
class Preview:
    row: int
    template: str
    prompt: str             # what the user supplies; not trained on when prompt masking is on
    completion: str         # think + answer + EOS: what the model learns to write
    prompt_tokens: int
    completion_tokens: int
    notes: tuple[str, ...]
    identifiers_masked: int  # how many possible identifiers were hidden in this preview

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def render_preview(case: Case, template: str, tokenizer: Any, mask: bool = True) -> Preview:
    rendered = render_case(template, case.question, case.cot, case.response, tokenizer)
    p_len, c_len = _encode_lengths(tokenizer, [rendered.prompt, rendered.completion])
    notes = []
    if not case.cot.strip():
        notes.append("Complex_CoT is empty or absent: the <think> block is empty in this row")
    prompt, completion = rendered.prompt, rendered.completion
    hidden = 0
    if mask:
        hits_p, hits_c = find_identifiers(prompt), find_identifiers(completion)
        hidden = len(hits_p) + len(hits_c)
        if hidden:
            prompt, completion = mask_identifiers(prompt, hits_p), mask_identifiers(completion, hits_c)
            notes.append(f"{hidden} possible identifier(s) hidden as *** in this preview (the file still holds them)")
    return Preview(case.row, template, prompt, completion, p_len, c_len, tuple(notes), hidden)
