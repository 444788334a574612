"""Running an evaluation: each model answers every case (one model in memory at a time), each answer
is scored, and the report is written to ``<workspace>/reports/eval-<time>/`` (temp dir, then rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..templates import generation_prefix
from .cases import EvalCase
from .report import aggregate, markdown
from .scoring import score_answer

Progress = Callable[[str], None]


def answer_cases(source, cases: list[EvalCase], settings, progress: Progress, load_options=None) -> list[dict]:
    from ..infer import LoadOptions, StreamDone, load_model, stream_answer

    loaded = load_model(source, load_options or LoadOptions(), progress=lambda msg, _f: progress(f"{source.label}: {msg}"))
    results = []
    try:
        for i, case in enumerate(cases, start=1):
            progress(f"{source.label}: case {i}/{len(cases)} ({case.id})")
            think_end = None
            result = None
            for event in stream_answer(loaded, case.question, settings):
                if isinstance(event, StreamDone):
                    result = event.result
                elif think_end is None and event.think_tokens is not None:
                    think_end = event.elapsed_s
            assert result is not None
            stats = result.stats.as_dict()
            stats["think_end_s"] = think_end
            score = score_answer(result.output, bool(generation_prefix(result.template)), case.reference_diagnosis,
                                 cut_off=result.stats.cut_off)
            results.append({"id": case.id, "question": case.question, "reference_diagnosis": case.reference_diagnosis,
                            "output": result.output, "answer": result.answer, "stats": stats, "score": score.as_dict()})
    finally:
        loaded.unload()
    return results


def run_evaluation(sources: dict[str, object], cases: list[EvalCase], cases_file: Path, settings, reports_dir: Path,
                   progress: Progress | None = None, load_options=None) -> tuple[dict, Path]:
    say = progress or (lambda _m: None)
    started = time.time()
    models = {}
    for name, source in sources.items():
        answers = answer_cases(source, cases, settings, say, load_options)
        models[name] = {"source": source.as_dict(), "summary": aggregate(answers), "cases": answers}
    report = {
        "schema": 1,
        "cases_file": str(cases_file),
        "n_cases": len(cases),
        "sampling": settings.as_dict(),
        "started": started,
        "seconds": round(time.time() - started, 2),
        "models": models,
    }
    reports_dir.mkdir(parents=True, exist_ok=True)
    final = reports_dir / time.strftime("eval-%Y%m%d-%H%M%S", time.localtime(started))
    n = 1
    while final.exists():
        n += 1
        final = final.with_name(f"{final.name.split('.')[0]}.{n}")
    tmp = Path(tempfile.mkdtemp(prefix=".eval-", dir=reports_dir))
    try:
        (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        (tmp / "report.md").write_text(markdown(report), encoding="utf-8")
        os.chmod(tmp, 0o700)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report, final
