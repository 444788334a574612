"""Evaluation measures on real answers (the reference answers of data/demo_eval.jsonl) and on broken ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medtui_engine.errors import UserError
from medtui_engine.evaluate.cases import load_eval_cases
from medtui_engine.evaluate.report import aggregate, markdown, wilson
from medtui_engine.evaluate.scoring import char_f1, normalise, score_answer

ROOT = Path(__file__).resolve().parent.parent


def test_reference_answers_score_complete(demo_data_dir):
    cases = load_eval_cases(demo_data_dir / "demo_eval.jsonl")
    assert len(cases) >= 15
    for case in cases:
        output = "推理过程。</think>\n### 回答:\n" + case.reference_answer
        s = score_answer(output, prompt_opened_think=True, reference_diagnosis=case.reference_diagnosis)
        assert s.think_well_formed and s.all_sections and s.three_elements, case.id
        assert s.basis_points == 3 and s.differential_count == 2, case.id
        assert s.diagnosis_contains or s.diagnosis_f1 >= 0.5, (case.id, s.predicted_diagnosis)


def test_broken_answers():
    s = score_answer("还在思考，没有结束", prompt_opened_think=True, reference_diagnosis=["急性胆囊炎"], cut_off=True)
    assert not s.think_well_formed and s.cut_off and not s.all_sections and s.diagnosis_exact is False
    s = score_answer("</think>疑似诊断：急性胆囊炎\n鉴别诊断：\n1. 胆管炎\n诊断依据：发热。右上腹痛。", True, "急性胆囊炎")
    assert not s.think_well_formed  # empty think block
    assert s.diagnosis_exact and s.differential_count == 1 and s.basis_points == 2
    assert s.sections["diagnosis"] and not s.sections["treatment"] and not s.three_elements


def test_matching_tiers():
    assert normalise("疑似诊断：急性 胆囊炎。") == "急性胆囊炎"
    assert char_f1("急性胆囊炎", "胆囊炎") == pytest.approx(2 * 1 * 0.6 / 1.6)
    s = score_answer("x</think>疑似诊断：急性结石性胆囊炎", True, ["胆囊炎"])
    assert s.diagnosis_exact is False and s.diagnosis_contains is True
    assert score_answer("x</think>疑似诊断：肺炎", True, None).diagnosis_exact is None


def test_wilson_interval_and_report_table():
    lo, hi = wilson(9, 10)
    assert 0.59 < lo < 0.6 and 0.98 < hi < 0.99
    case = {"score": score_answer("a</think>疑似诊断：肺炎\n诊断依据：\n1. a\n2. b\n3. c", True, "肺炎").as_dict(),
            "stats": {"ttft_s": 0.1, "total_s": 1.0, "output_tokens": 10, "decode_tokens_per_s": 12.0, "think_end_s": 0.2}}
    summary = aggregate([case, case])
    assert summary["diagnosis_exact"]["value"] == 1.0 and summary["basis_complete"]["k"] == 2
    report = {"cases_file": "x.jsonl", "n_cases": 2, "sampling": {}, "models": {
        "base": {"source": {"label": "b", "template": "seed"}, "summary": summary},
        "tuned": {"source": {"label": "t", "template": "seed"}, "summary": summary}}}
    md = markdown(report)
    assert "| measure | base | tuned | difference |" in md and "+0.0 pts" in md
    assert "not medical advice" in md


def test_bad_case_files(tmp_path):
    bad = tmp_path / "cases.jsonl"
    bad.write_text('{"Question": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2"):
        load_eval_cases(bad)
    bad.write_text('{"reference_diagnosis": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="row 1 has no question"):
        load_eval_cases(bad)


@pytest.mark.slow
def test_eval_cli_writes_a_report_on_the_demo_model(workspace, demo_model):
    out = subprocess.run([sys.executable, "-m", "medtui", "eval", "--model", "demo", "--limit", "2",
                          "--max-new-tokens", "12", "--json"], capture_output=True, text=True, cwd=ROOT,
                         env=os.environ.copy(), timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    where = Path(result["report_dir"])
    assert where.parent == workspace.resolve() / "reports"
    report = json.loads((where / "report.json").read_text())
    assert report["n_cases"] == 2 and len(report["models"]["tuned"]["cases"]) == 2
    assert report["models"]["tuned"]["cases"][0]["stats"]["output_tokens"] <= 12
    assert "random weights" in (where / "report.md").read_text()
    assert not [p for p in where.parent.iterdir() if p.name.startswith(".eval-")]
