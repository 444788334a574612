"""Validate a data file end to end: load and map, check every row, measure token lengths with the
chosen model and template, and gather it all into a ``ValidationReport``.

Used by ``medtui validate`` and by the Dataset screen's worker (``progress`` reports the stage).
Reads the input only; writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..sections import SECTIONS, THREE_ELEMENTS
from ..templates import TemplateError, check_template
from .checks import check_case_text, check_duplicates, check_sections, section_presence
from .findings import SEVERITY_RANK, Finding, finding
from .load import FieldMapping, LoadedDataset, load_cases
from .measure import estimate_epoch, load_tokenizer, measure_cases
from .report import ValidationReport

DEFAULT_MAX_SEQ_LENGTH = 8192  # the trainer's default (the seed's setting)
# progress(stage, done, total): stage is "reading", "checking", "tokenizer" or "measuring".
Progress = Callable[[str, int, int], None]


def check_loaded(dataset: LoadedDataset, progress: Progress | None = None) -> tuple[list[Finding], dict[str, float], float, float]:
    """Every check that needs no tokenizer. Returns findings and the section rates."""
    findings: list[Finding] = list(dataset.notices) + list(dataset.skipped)
    cases = dataset.cases
    step = max(1, len(cases) // 20)
    for i, case in enumerate(cases):
        findings += check_case_text(case)
        if progress and i % step == 0:
            progress("checking", i, len(cases))
    findings += check_duplicates(cases)
    rates, present = section_presence(cases)
    findings += check_sections(cases, present, rates)
    n = len(cases) or 1
    all_rate = sum(1 for p in present if len(p) == len(SECTIONS)) / n
    three = sum(1 for p in present if all(e in p for e in THREE_ELEMENTS)) / n
    if not cases:
        findings.append(finding("no_rows", 0, "", f"none of the {dataset.total_rows} rows is usable"))
    if progress:
        progress("checking", len(cases), len(cases))
    return findings, rates, all_rate, three


def validate_loaded(dataset: LoadedDataset, *, tokenizer: Any | None = None, model_label: str = "",
                    template: str = "seed", max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, batch_size: int = 1,
                    grad_accum: int = 8, devices: int = 1, tokens_per_second: float | None = None,
                    eval_fraction: float = 0.0, progress: Progress | None = None) -> ValidationReport:
    started = time.perf_counter()
    check_template(template)
    findings, rates, all_rate, three = check_loaded(dataset, progress)
    report = ValidationReport(dataset, findings, template, max_seq_length, model_label,
                              section_rates=rates, all_sections_rate=all_rate, three_elements_rate=three)
    if tokenizer is not None and dataset.cases:
        try:
            measurement, long_findings = measure_cases(
                dataset.cases, tokenizer, template, max_seq_length,
                (lambda done, total: progress("measuring", done, total)) if progress else None)
        except TemplateError as exc:  # e.g. no EOS token, or no chat template for 'chat'
            raise UserError(f"{model_label or 'the model'}: {exc}") from None
        report.measurement = measurement
        report.findings += long_findings
        train_rows = len(dataset.cases) - (round(len(dataset.cases) * eval_fraction) if eval_fraction else 0)
        report.estimate = estimate_epoch(measurement, train_rows, batch_size, grad_accum, devices, tokens_per_second)
    report.findings.sort(key=lambda f: (f.row, f.field, SEVERITY_RANK[f.severity], f.kind))
    report.elapsed_s = time.perf_counter() - started
    return report


def validate_file(path: str | Path, mapping: FieldMapping | None = None, *, model: str | Path | None = "demo",
                  template: str = "seed", max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, batch_size: int = 1,
                  grad_accum: int = 8, devices: int = 1, tokens_per_second: float | None = None,
                  eval_fraction: float = 0.0, format: str | None = None, encoding: str | None = None,
                  progress: Progress | None = None) -> ValidationReport:
    """Load, check and measure one file. ``model=None`` skips the token measurement.

    Raises ``UserError`` when the file (or the model's tokenizer) cannot be read.
    """
    from ..demo import model_label, resolve_model

    started = time.perf_counter()
    check_template(template)
    if max_seq_length < 16:
        raise UserError(f"max_seq_length must be at least 16, got {max_seq_length}")
    if progress:
        progress("reading", 0, 1)
    dataset = load_cases(path, mapping, format=format, encoding=encoding)
    if progress:
        progress("reading", 1, 1)
    tokenizer, label = None, ""
    if model is not None:
        if progress:
            progress("tokenizer", 0, 1)
        try:
            model_dir = resolve_model(model)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        tokenizer, label = load_tokenizer(model_dir), model_label(model_dir)
    report = validate_loaded(dataset, tokenizer=tokenizer, model_label=label, template=template,
                             max_seq_length=max_seq_length, batch_size=batch_size, grad_accum=grad_accum,
                             devices=devices, tokens_per_second=tokens_per_second, eval_fraction=eval_fraction,
                             progress=progress)
    report.elapsed_s = time.perf_counter() - started
    return report
