"""Token lengths as the trainer will see them: each case rendered with the chosen template and
tokenized with the chosen model's tokenizer, fast enough for 20,000 long Chinese cases.

Prompt and completion are tokenized separately (both templates end the prompt on a special token,
so the sum equals the joined length), in large batches (see ``tokens.ModelTokenizer.lengths``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..templates import render_case
from .findings import Finding, finding
from .load import Case
from .tokens import load_tokenizer

__all__ = ["load_tokenizer", "measure_cases", "estimate_epoch", "Measurement", "EpochEstimate", "Histogram"]

BATCH = 2048  # rows per tokenizer call: big enough to keep the Rust side busy, small enough to report progress


def _encode_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    if hasattr(tokenizer, "lengths"):
        return tokenizer.lengths(texts)
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@dataclass(frozen=True)
class RowLength:
    row: int
    prompt: int       # tokens of the prompt (masked from the loss when the run asks)
    completion: int   # tokens of think + answer + EOS (trained)

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass(frozen=True)
class Histogram:
    edges: tuple[int, ...]   # bin i holds lengths in [edges[i], edges[i+1])
    counts: tuple[int, ...]


@dataclass
class Measurement:
    template: str
    max_seq_length: int
    rows: int = 0
    total_tokens: int = 0
    trained_tokens: int = 0              # completion tokens within max_seq_length
    prompt_tokens: int = 0
    p50: int = 0
    p95: int = 0
    max: int = 0
    mean: float = 0.0
    too_long: int = 0
    too_long_max_over: int = 0
    too_long_mean_over: float = 0.0
    prompt_too_long: int = 0
    histogram: Histogram = field(default_factory=lambda: Histogram((0, 1), (0,)))
    lengths: list[RowLength] = field(default_factory=list, repr=False)

    def as_dict(self, with_rows: bool = False) -> dict[str, object]:
        d = asdict(self)
        if not with_rows:
            d.pop("lengths")
        return d


def percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def histogram(values: list[int], bins: int = 20, limit: int | None = None) -> Histogram:
    """Equal-width bins from 0 to the largest value; stretched to ``limit`` (max_seq_length) when
    that is near, so its mark falls inside the chart, but not when it is far beyond every row."""
    top = max(max(values, default=0), 1)
    if limit and limit <= 1.5 * top:
        top = max(top, limit)
    width = max(1, math.ceil((top + 1) / bins))
    edges = tuple(i * width for i in range(bins + 1))
    counts = [0] * bins
    for v in values:
        counts[min(v // width, bins - 1)] += 1
    return Histogram(edges, tuple(counts))


def measure_cases(cases: list[Case], tokenizer: Any, template: str, max_seq_length: int,
                  progress: Callable[[int, int], None] | None = None) -> tuple[Measurement, list[Finding]]:
    """Token lengths for every case, the summary, and the too-long findings."""
    lengths: list[RowLength] = []
    for start in range(0, len(cases), BATCH):
        chunk = cases[start:start + BATCH]
        rendered = [render_case(template, c.question, c.cot, c.response, tokenizer) for c in chunk]
        p = _encode_lengths(tokenizer, [r.prompt for r in rendered])
        q = _encode_lengths(tokenizer, [r.completion for r in rendered])
        lengths += [RowLength(c.row, a, b) for c, a, b in zip(chunk, p, q, strict=True)]
        if progress:
            progress(start + len(chunk), len(cases))

    m = Measurement(template, max_seq_length, rows=len(lengths), lengths=lengths)
    totals = sorted(rl.total for rl in lengths)
    m.total_tokens = sum(totals)
    m.prompt_tokens = sum(rl.prompt for rl in lengths)
    m.trained_tokens = sum(max(0, min(rl.total, max_seq_length) - rl.prompt) for rl in lengths)
    m.p50, m.p95, m.max = percentile(totals, 0.5), percentile(totals, 0.95), (totals[-1] if totals else 0)
    m.mean = round(m.total_tokens / len(totals), 1) if totals else 0.0
    m.histogram = histogram(totals, 20, max_seq_length)

    findings: list[Finding] = []
    long_rows = [(c, rl) for c, rl in zip(cases, lengths, strict=True) if rl.total > max_seq_length]
    if long_rows:
        # How much of the answer truncation would cut needs the answer's own length: only for these rows.
        answer_eos = _encode_lengths(tokenizer, [c.response for c, _ in long_rows])
        overs = []
        for (case, rl), answer_len in zip(long_rows, answer_eos, strict=True):
            over = rl.total - max_seq_length
            overs.append(over)
            if rl.prompt >= max_seq_length:
                m.prompt_too_long += 1
                findings.append(finding("prompt_too_long", case.row, "question",
                                        f"{rl.total} tokens; the prompt alone is {rl.prompt}, max_seq_length is {max_seq_length}"))
                continue
            answer_len += 1  # its EOS
            if over <= answer_len:
                cut = f"the last {over} tokens: the end of the answer and its EOS"
            else:
                cut = f"the last {over} tokens: all of the answer, EOS, and {over - answer_len} tokens of the reasoning"
            findings.append(finding("too_long", case.row, "response",
                                    f"{rl.total} tokens, {over} over max_seq_length {max_seq_length}; truncation would cut {cut}"))
        m.too_long = len(long_rows)
        m.too_long_max_over = max(overs)
        m.too_long_mean_over = round(sum(overs) / len(overs), 1)
    return m, findings


@dataclass(frozen=True)
class EpochEstimate:
    train_rows: int
    batch_size: int
    grad_accum: int
    devices: int
    steps_per_epoch: int
    tokens_per_epoch: int
    tokens_per_second: float | None
    epoch_seconds: float | None
    note: str = "tokens counted without padding; batches above 1 also process padding"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def estimate_epoch(measurement: Measurement, train_rows: int | None = None, batch_size: int = 1, grad_accum: int = 8,
                   devices: int = 1, tokens_per_second: float | None = None) -> EpochEstimate:
    """Optimizer steps per epoch and, from a stated throughput, how long an epoch takes."""
    rows = measurement.rows if train_rows is None else train_rows
    per_step = max(1, batch_size) * max(1, grad_accum) * max(1, devices)
    steps = math.ceil(rows / per_step) if rows else 0
    capped = sum(min(rl.total, measurement.max_seq_length) for rl in measurement.lengths)
    tokens = round(capped * rows / measurement.rows) if measurement.rows else 0
    seconds = tokens / tokens_per_second if tokens_per_second else None
    return EpochEstimate(rows, batch_size, grad_accum, devices, steps, tokens, tokens_per_second,
                         round(seconds, 1) if seconds is not None else None)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")
