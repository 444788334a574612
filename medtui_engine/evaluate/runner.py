"""Running an evaluation: each model answers every case (one model in memory at a time, k samples a
case if asked), the answers are saved as JSONL, and the report is built from those answers and written
to ``<workspace>/reports/eval-<time>/`` (temp dir, then rename). ``score_answer_files`` builds the same
report from saved answers, with no model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..templates import generation_prefix
from .answers import read_answers
from .cases import EvalCase
from .matching import Synonyms
from .report import build_report, write_report

Progress = Callable[[str], None]


def answer_row(case: EvalCase, output: str, *, sample: int, prompt_opened: bool, stats: dict, source) -> dict:
    row = {"id": case.id, "sample": sample, "kind": case.kind, "question": case.question,
           "reference_diagnosis": case.reference_diagnosis, "answer": output, "prompt_opened_think": prompt_opened,
           "stats": stats, "model": source.label, "template": source.template, "demo": bool(source.is_demo)}
    for k in ("reference_answer", "exam_answer", "options", "record", "title"):
        v = getattr(case, k)
        if v is not None:
            row[k] = v
    return row


def answer_cases(source, cases: list[EvalCase], settings, progress: Progress, load_options=None,
                 samples: int = 1) -> list[dict]:
    from ..infer import LoadOptions, StreamDone, load_model, stream_answer

    loaded = load_model(source, load_options or LoadOptions(), progress=lambda msg, _f: progress(f"{source.label}: {msg}"))
    rows = []
    try:
        for i, case in enumerate(cases, start=1):
            for j in range(samples):
                tag = f" sample {j + 1}/{samples}" if samples > 1 else ""
                progress(f"{source.label}: case {i}/{len(cases)} ({case.id}){tag}")
                s = settings if j == 0 or settings.seed is None else replace(settings, seed=settings.seed + j)
                think_end = None
                result = None
                for event in stream_answer(loaded, case.question, s):
                    if isinstance(event, StreamDone):
                        result = event.result
                    elif think_end is None and event.think_tokens is not None:
                        think_end = event.elapsed_s
                assert result is not None
                stats = result.stats.as_dict()
                stats["think_end_s"] = think_end
                rows.append(answer_row(case, result.output, sample=j, stats=stats, source=source,
                                       prompt_opened=bool(generation_prefix(result.template))))
    finally:
        loaded.unload()
    return rows


def _new_report_dir(reports_dir: Path, started: float, stem: str = "eval") -> Path:
    final = reports_dir / time.strftime(f"{stem}-%Y%m%d-%H%M%S", time.localtime(started))
    n = 1
    while final.exists():
        n += 1
        final = final.with_name(f"{final.name.split('.')[0]}.{n}")
    return final


def run_evaluation(sources: dict[str, object], cases: list[EvalCase], cases_file: Path, settings, reports_dir: Path,
                   progress: Progress | None = None, load_options=None, *, samples: int = 1,
                   synonyms: Synonyms | None = None) -> tuple[dict, Path]:
    say = progress or (lambda _m: None)
    started = time.time()
    models, answers = {}, {}
    for name, source in sources.items():
        rows = answer_cases(source, cases, settings, say, load_options, samples)
        answers[name] = rows
        models[name] = {"source": source.as_dict(), "rows": rows}
    meta = {"cases_file": str(cases_file), "sampling": settings.as_dict(), "started": started,
            "seconds": round(time.time() - started, 2)}
    report = build_report(models, meta, synonyms)
    final = write_report(report, answers, _new_report_dir(reports_dir, started))
    return report, final


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
    final = out if out is not None else _new_report_dir(reports_dir, started, "eval-score")
    return report, write_report(report, answers, final)
