"""Paired statistics: McNemar's exact test against hand-computed binomial tails, the seeded paired
bootstrap, and k samples per case aggregated per case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtui_engine.evaluate.answers import read_answers
from medtui_engine.evaluate.report import aggregate, build_report, markdown, score_rows
from medtui_engine.evaluate.stats import PairedBootstrap, mcnemar_exact


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(1, 4) == pytest.approx(2 * (1 + 5) / 32)
    assert mcnemar_exact(0, 7) == pytest.approx(2 / 128)
    assert mcnemar_exact(7, 0) == mcnemar_exact(0, 7)
    assert mcnemar_exact(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)


def test_paired_bootstrap_is_seeded_and_brackets_the_difference():
    diffs = [1.0] * 12 + [0.0] * 6 + [-1.0] * 2
    a = PairedBootstrap(len(diffs)).interval(diffs)
    b = PairedBootstrap(len(diffs)).interval(diffs)
    assert a == b
    lo, hi = a
    assert lo < 0.5 < hi and -1 <= lo and hi <= 1
    assert PairedBootstrap(3).interval([0.0, 0.0, 0.0]) == (0.0, 0.0)
    assert PairedBootstrap(2).interval([None, None]) is None


def _row(cid: str, sample: int, diagnosis: str) -> dict:
    return {"id": cid, "sample": sample, "question": "病例", "reference_diagnosis": "急性胆囊炎",
            "answer": f"思考</think>\n疑似诊断：{diagnosis}"}


def test_k_samples_are_aggregated_per_case(tmp_path: Path):
    rows = [_row("a", 0, "急性胆囊炎"), _row("a", 1, "急性胆囊炎"), _row("a", 2, "肺炎"),
            _row("b", 0, "肺炎"), _row("b", 1, "急性胆囊炎"), _row("b", 2, "胃炎")]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cases = score_rows(read_answers(path))
    assert [c["n_samples"] for c in cases] == [3, 3]
    assert cases[0]["values"]["diagnosis_match"] == pytest.approx(2 / 3) and cases[0]["diagnosis_match"] is True
    assert cases[1]["values"]["diagnosis_match"] == pytest.approx(1 / 3) and cases[1]["diagnosis_match"] is False
    s = aggregate(cases)["diagnosis_match"]
    assert s["value"] == pytest.approx(0.5) and s["n"] == 2 and s["ci_method"] == "bootstrap"
    report = build_report({"base": {"source": {"label": "b"}, "rows": read_answers(path)},
                           "tuned": {"source": {"label": "t"}, "rows": read_answers(path)}}, {"cases_file": "x"})
    assert report["samples_per_case"] == 3 and report["paired"]["measures"]["diagnosis_match"]["diff"] == 0
    assert "3 samples per case" in markdown(report) and "per-case majority" in markdown(report)
