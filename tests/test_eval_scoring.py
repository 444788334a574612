"""Evaluation measures on real answers (the reference answers of data/demo_eval.jsonl) and on broken ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medtui_engine.evaluate.cases import load_eval_cases
from medtui_engine.evaluate.report import aggregate, markdown, wilson
from medtui_engine.evaluate.scoring import char_f1, exam_letters, normalise, score_answer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "eval"


# Reference answers the strict matcher does not accept, and why (a clinician would; the matcher errs
# towards "no": a fuller reference list or a synonyms file fixes these).
KNOWN_MISSES = {
    "eval-012": "different",            # 胃窦低分化腺癌 vs 胃癌/胃腺癌: site and grade inserted into the name
    "eval-014": "too_many_candidates",  # three diagnoses on one line: no primary diagnosis by rule
}


def test_reference_answers_score_complete(demo_data_dir):
    cases = load_eval_cases(demo_data_dir / "demo_eval.jsonl")
    assert len(cases) >= 15
    for case in cases:
        output = "推理过程。</think>\n### 回答:\n" + case.reference_answer
        s = score_answer(output, prompt_opened_think=True, reference_diagnosis=case.reference_diagnosis)
        assert s.think_well_formed and s.all_sections and s.three_elements, case.id
        assert s.basis_points == 3 and s.differential_count == 2, case.id
        if case.id in KNOWN_MISSES:
            assert s.diagnosis_match is False and s.diagnosis_tier == KNOWN_MISSES[case.id], case.id
        else:
            assert s.diagnosis_match is True, (case.id, s.predicted_diagnosis, s.diagnosis_tier)


def test_broken_answers():
    s = score_answer("还在思考，没有结束", prompt_opened_think=True, reference_diagnosis=["急性胆囊炎"], cut_off=True)
    assert not s.think_well_formed and s.cut_off and not s.all_sections
    assert s.diagnosis_match is False and s.diagnosis_tier == "no_diagnosis"
    s = score_answer("</think>疑似诊断：急性胆囊炎\n鉴别诊断：\n1. 胆管炎\n诊断依据：发热。右上腹痛。", True, "急性胆囊炎")
    assert not s.think_well_formed  # empty think block
    assert s.diagnosis_match and s.diagnosis_tier == "exact" and s.differential_count == 1 and s.basis_points == 2
    assert s.sections["diagnosis"] and not s.sections["treatment"] and not s.three_elements


def test_empty_headings_are_not_sections():
    five_empty = "思考</think>\n疑似诊断：\n诊断依据：\n鉴别诊断：\n治疗方案：\n随访建议：\n"
    s = score_answer(five_empty, True, "肺炎")
    assert all(s.headings.values()) and not any(s.sections.values())
    assert not s.all_sections and not s.three_elements and s.basis_points == 0 and s.differential_count == 0
    assert s.diagnosis_match is False and s.diagnosis_tier == "no_diagnosis"
    markers_only = "思考</think>\n疑似诊断：肺炎\n诊断依据：\n1.\n2.\n鉴别诊断：——\n治疗方案：无\n随访建议：…"
    s = score_answer(markers_only, True, "肺炎")
    assert s.sections == {"diagnosis": True, "basis": False, "differential": False, "treatment": False,
                          "followup": False}


def test_matching_tiers_in_scores():
    assert normalise("疑似诊断：急性 胆囊炎。") == "急性胆囊炎"
    assert char_f1("急性胆囊炎", "胆囊炎") == pytest.approx(2 * 1 * 0.6 / 1.6)
    s = score_answer("x</think>疑似诊断：急性结石性胆囊炎", True, ["胆囊炎"])
    assert s.diagnosis_match is True and s.diagnosis_tier == "containment" and s.diagnosis_reference == "胆囊炎"
    s = score_answer("x</think>疑似诊断：肺炎", True, "肺癌")
    assert s.diagnosis_match is False and s.diagnosis_similarity == pytest.approx(0.5)
    assert score_answer("x</think>疑似诊断：肺炎", True, None).diagnosis_match is None


@pytest.mark.parametrize(("answer", "letters"), [
    ("答案：B", "B"),
    ("分析各选项后，所以答案是 D。", "D"),
    ("A项不对，C项也不对，应选B。", "B"),
    ("答案为A、B、D", "ABD"),
    ("B. 异位妊娠破裂", "B"),
    ("**C**", "C"),
    ("正确的是 E。", "E"),
    ("行B超检查，可见包块。", None),
    ("A 或 C 都有可能。", None),
    ("", None),
])
def test_exam_letters(answer, letters):
    assert exam_letters(answer, "ABCDE") == letters


def test_exam_answers_score_only_after_think():
    opts = {"A": "甲", "B": "乙", "C": "丙"}
    s = score_answer("我想答案是A</think>答案：B", True, exam_answer="B", options=opts)
    assert s.exam_given == "B" and s.exam_correct is True
    s = score_answer("答案是B，还没想完", True, exam_answer="B", options=opts, cut_off=True)
    assert s.exam_given is None and s.exam_correct is False
    assert score_answer("x</think>答案：B", True).exam_correct is None


def test_wilson_interval_and_report_table():
    lo, hi = wilson(9, 10)
    assert 0.59 < lo < 0.6 and 0.98 < hi < 0.99
    case = {"score": score_answer("a</think>疑似诊断：肺炎\n诊断依据：\n1. 发热\n2. 咳嗽\n3. 湿啰音", True, "肺炎").as_dict(),
            "stats": {"ttft_s": 0.1, "total_s": 1.0, "output_tokens": 10, "decode_tokens_per_s": 12.0, "think_end_s": 0.2}}
    summary = aggregate([case, case])
    assert summary["diagnosis_match"]["value"] == 1.0 and summary["basis_complete"]["k"] == 2
    report = {"cases_file": "x.jsonl", "n_cases": 2, "sampling": {}, "models": {
        "base": {"source": {"label": "b", "template": "seed"}, "summary": summary},
        "tuned": {"source": {"label": "t", "template": "seed"}, "summary": summary}}}
    md = markdown(report)
    assert "| measure | base | tuned |" in md and md.count("not medical advice") == 1
    assert "exam: correct option" not in md  # no exam questions: no row


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
    saved = [json.loads(x) for x in (where / "answers-tuned.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in saved] == [c["id"] for c in report["models"]["tuned"]["cases"]]
    assert all({"id", "question", "reference_diagnosis", "answer"} <= set(r) for r in saved)


@pytest.mark.slow
@pytest.mark.parametrize("cases_file", ["clinical_records.json", "exam.json"])
def test_clinical_and_exam_files_run_end_to_end_and_rescore_the_same(workspace, demo_model, tmp_path, cases_file):
    env = os.environ.copy()
    out = subprocess.run([sys.executable, "-m", "medtui", "eval", "--model", "demo", "--base", "none",
                          "--cases", str(FIXTURES / cases_file), "--limit", "3", "--max-new-tokens", "8", "--json",
                          *(["--samples", "2"] if cases_file == "exam.json" else [])],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    where = Path(json.loads(out.stdout)["report_dir"])
    report = json.loads((where / "report.json").read_text(encoding="utf-8"))
    cases = report["models"]["tuned"]["cases"]
    assert len(cases) == 3
    if cases_file == "exam.json":
        assert report["models"]["tuned"]["summary"]["exam_correct"]["n"] == 3
        assert all(c["kind"] == "exam" and c["exam_answer"] and c["n_samples"] == 2 for c in cases)
        assert report["samples_per_case"] == 2 and report["models"]["tuned"]["summary"]["exam_correct"]["ci_method"] == "bootstrap"
    else:
        assert cases[0]["kind"] == "clinical" and cases[0]["reference_diagnosis"] == "急性胰腺炎"
        assert cases[0]["diagnosis_match"] is False and cases[1]["diagnosis_match"] is None
    rescored = subprocess.run([sys.executable, "-m", "medtui", "eval", "score", str(where / "answers-tuned.jsonl"),
                               "--out", str(tmp_path / "again"), "--json"], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "report.json").read_text(encoding="utf-8"))
    assert again["models"]["model"]["summary"] == report["models"]["tuned"]["summary"]
