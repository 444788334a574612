"""Answering cases and writing the report. The evaluation job (:mod:`.job`) has each model answer every
case through :func:`answer_items` (one model in memory at a time, k samples a case if asked), saving each
answer as it comes; :func:`report_from_answers` builds the report from those answers and writes it (temp
dir, then rename). ``score_answer_files`` builds the same report from saved answers, with no model."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..templates import generation_prefix
from .answers import read_answers
from .cases import EvalCase
from .matching import Synonyms
from .report import MEASURES, build_report, write_report
from .report import _fmt as fmt_entry
from .report import _fmt_diff as fmt_diff
from .report import _fmt_p as fmt_p


def answer_row(case: EvalCase, output: str, *, sample: int, prompt_opened: bool, stats: dict, source) -> dict:
    row = {"id": case.id, "sample": sample, "kind": case.kind, "question": case.question,
           "reference_diagnosis": case.reference_diagnosis, "answer": output, "prompt_opened_think": prompt_opened,
           "stats": stats, "model": source.label, "template": source.template, "demo": bool(source.is_demo)}
    for k in ("reference_answer", "exam_answer", "options", "record", "title"):
        v = getattr(case, k)
        if v is not None:
            row[k] = v
    return row


@dataclass(frozen=True)
class Item:
    """One answer to give: a case, which sample of it (0..k-1), and its place in the case list."""

    case: EvalCase
    sample: int
    index: int


def sample_settings(settings, sample: int):
    """Sample j of a case is drawn with seed + j (sample 0 with the seed itself)."""
    return settings if sample == 0 or settings.seed is None else replace(settings, seed=settings.seed + sample)


def answer_one(loaded, source, item: Item, settings, cancel=None) -> dict | None:
    """One case answered by a loaded model: its answer row, or None when ``cancel`` was set before the
    answer was complete (a stopped job gives that case again when it resumes)."""
    from ..infer import StreamDone, stream_answer

    think_end = None
    result = None
    for event in stream_answer(loaded, item.case.question, sample_settings(settings, item.sample), cancel):
        if isinstance(event, StreamDone):
            result = event.result
        elif think_end is None and event.think_tokens is not None:
            think_end = event.elapsed_s
    if result is None or result.stats.finish_reason == "cancelled":
        return None
    stats = result.stats.as_dict()
    stats["think_end_s"] = think_end
    return answer_row(item.case, result.output, sample=item.sample, stats=stats, source=source,
                      prompt_opened=bool(generation_prefix(result.template)))


def answer_items(loaded, source, items: list[Item], settings, cancel=None, batch: int = 1
                 ) -> Iterator[tuple[Item, dict]]:
    """Answer ``items`` in order, yielding each (item, row) as soon as it is complete; stops early (without
    a row for an unfinished item) once ``cancel`` is set.

    ``batch`` > 1 decodes that many cases together (:func:`medtui_engine.infer.batch.answer_batch`: the same
    greedy answers within numerics, each case stopping at its own end); the items of one batch share a
    sample number, so each batch has one set of sampling settings; the items are split into batches of
    near-equal size (a smaller last batch would be compiled again). On a GPU the batches decode on the
    compiled static cache (what ``medtui bench eval`` measured fastest). The evaluation job only relies on
    each yielded row being complete (it saves the row, then reports it)."""
    if batch <= 1:
        for item in items:
            if cancel is not None and cancel.is_set():
                return
            row = answer_one(loaded, source, item, settings, cancel)
            if row is None:
                return
            yield item, row
        return
    from ..infer.batch import answer_batch

    by_sample: dict[int, list[Item]] = {}
    for item in items:
        by_sample.setdefault(item.sample, []).append(item)
    compiled = loaded.device == "cuda"
    for sample, group in sorted(by_sample.items()):
        size = math.ceil(len(group) / math.ceil(len(group) / batch))  # the fewest batches of at most `batch`, sizes even
        for start in range(0, len(group), size):
            if cancel is not None and cancel.is_set():
                return
            chunk = group[start:start + size]
            got = answer_batch(loaded, [it.case.question for it in chunk], sample_settings(settings, sample),
                               batch_size=len(chunk), cancel=cancel, compiled=compiled)
            if len(got.results) < len(chunk) or any(r.stats.finish_reason == "cancelled" for r in got.results):
                return  # a stopped batch is given again, whole, on resume
            for item, result in zip(chunk, got.results, strict=True):
                stats = result.stats.as_dict()
                stats["think_end_s"] = None   # not seen inside a batch
                yield item, answer_row(item.case, result.output, sample=item.sample, stats=stats, source=source,
                                       prompt_opened=bool(generation_prefix(result.template)))


def default_batch(loaded, questions: list[str], max_new_tokens: int) -> int:
    """Cases decoded together when the user does not say (``--batch N`` says): on a GPU as many as
    :func:`medtui_engine.infer.batch.fit_batch` fits (up to EVAL_MAX_BATCH: measured 12.5x the cases a
    minute of one at a time on the H200); on the CPU one at a time (a batch there saves little and holds
    every answer back until the slowest is done)."""
    if loaded.device != "cuda":
        return 1
    from ..infer.batch import fit_batch

    return fit_batch(loaded, questions, max_new_tokens)


def new_report_dir(reports_dir: Path, started: float, stem: str = "eval") -> Path:
    final = reports_dir / time.strftime(f"{stem}-%Y%m%d-%H%M%S", time.localtime(started))
    n = 1
    while final.exists():
        n += 1
        final = final.with_name(f"{final.name.split('.')[0]}.{n}")
    return final


def report_from_answers(sources: dict[str, dict], answers: dict[str, list[dict]], meta: dict, final: Path,
                        synonyms: Synonyms | None = None) -> tuple[dict, Path]:
    """Score every model's answer rows and write the report (report.json, report.md, answers-<model>.jsonl)
    into ``final`` (a temp dir, then a rename). ``sources``: name -> the model's description."""
    models = {name: {"source": sources[name], "rows": rows} for name, rows in answers.items()}
    report = build_report(models, meta, synonyms)
    return report, write_report(report, answers, final)


def report_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The seed-shaped table of a report: a header and one row per measure that applies (label, each
    model's figure, and with two models the difference with its interval and McNemar's p), formatted as
    report.md formats them."""
    models = report["models"]
    names = list(models)
    pair = report.get("paired")
    header = ["measure", *names] + (["difference (95% CI)", "McNemar"] if pair else [])
    rows = []
    for m in MEASURES:
        if all((models[n]["summary"].get(m.key) or {}).get("n", 0) == 0 for n in names):
            continue
        row = [m.label, *(fmt_entry(models[n]["summary"].get(m.key)) for n in names)]
        if pair:
            e = pair["measures"].get(m.key)
            row += [fmt_diff(e), fmt_p(e)]
        rows.append(row)
    return header, rows


def _source_from_rows(rows: list[dict], path: Path) -> dict:
    first = rows[0]
    return {"kind": "answers", "label": str(first.get("model") or path.stem), "template": first.get("template", "unknown"),
            "demo": bool(first.get("demo")), "answers_file": str(path)}


def score_answer_files(answers_file: Path, base_file: Path | None, out: Path | None, reports_dir: Path,
                       synonyms: Synonyms | None = None) -> tuple[dict, Path]:
    """Rescore saved answers (and, with ``base_file``, pair them with the base model's)."""
    started = time.time()
    models, answers = {}, {}
    if base_file is not None:
        rows = read_answers(base_file)
        models["base"] = {"source": _source_from_rows(rows, base_file), "rows": rows}
        answers["base"] = rows
    rows = read_answers(answers_file)
    name = "tuned" if base_file is not None else "model"
    models[name] = {"source": _source_from_rows(rows, answers_file), "rows": rows}
    answers[name] = rows
    meta = {"cases_file": str(answers_file), "scored_from": [str(p) for p in (base_file, answers_file) if p],
            "sampling": None, "started": started}
    report = build_report(models, meta, synonyms)
    final = out if out is not None else new_report_dir(reports_dir, started, "eval-score")
    return report, write_report(report, answers, final)
