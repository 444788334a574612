"""Case files in three shapes (flat, CMB-Clin-shaped clinical records, multiple-choice exams), and
errors that name the file, the row and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtui_engine.errors import UserError
from medtui_engine.evaluate.cases import (
    diagnosis_from_solution,
    is_diagnosis_question,
    load_eval_cases,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"


def test_clinical_records_ask_each_question_with_the_description():
    cases = load_eval_cases(FIXTURES / "clinical_records.json")
    assert [c.id for c in cases] == ["101-q1", "101-q2", "101-q3", "102-q1", "102-q2", "103-q1", "103-q2"]
    assert {c.kind for c in cases} == {"clinical"}
    first = cases[0]
    assert "饮酒及饱餐后上腹部持续性剧痛" in first.question and first.question.endswith("请给出该病人的诊断及诊断依据。")
    assert first.record == "101" and first.title == "案例分析-急性胰腺炎"
    assert first.reference_diagnosis == "急性胰腺炎"            # from the solution's 诊断 heading
    assert cases[3].reference_diagnosis == "右下肺社区获得性肺炎"  # from "考虑为 ..." in the solution
    assert cases[5].reference_diagnosis == ["2型糖尿病", "糖尿病"]  # the record's own list wins
    # questions on the differential, treatment or basis carry no reference diagnosis
    assert [c.reference_diagnosis for c in (cases[1], cases[2], cases[4], cases[6])] == [None] * 4
    assert cases[1].reference_answer.startswith("（1）消化性溃疡穿孔")


def test_which_questions_ask_for_the_diagnosis():
    assert is_diagnosis_question("简述该病人的诊断及诊断依据。")
    assert is_diagnosis_question("最可能的诊断是什么？")
    assert not is_diagnosis_question("简述该病人的鉴别诊断。")
    assert not is_diagnosis_question("诊断依据是什么？")
    assert diagnosis_from_solution("诊断：嵌顿性疝合并肠梗阻。\n诊断依据：\n①腹痛") == "嵌顿性疝合并肠梗阻"
    assert diagnosis_from_solution("结合病史，诊断为急性阑尾炎，需手术。") == "急性阑尾炎"


def test_exam_questions_from_json_and_csv():
    cases = load_eval_cases(FIXTURES / "exam.json")
    assert [(c.id, c.kind, c.exam_answer) for c in cases] == [("x1", "exam", "B"), ("x2", "exam", "C"),
                                                               ("x3", "exam", "ABD"), ("x4", "exam", "B")]
    assert "B. 异位妊娠破裂" in cases[0].question and cases[0].question.startswith("（单项选择题）")
    assert cases[3].options == {"A": "血清铁降低", "B": "骨髓铁染色示细胞外铁消失", "C": "红细胞体积减小",
                                "D": "血红蛋白降低"}
    csv_cases = load_eval_cases(FIXTURES / "exam.csv")
    assert [(c.id, c.exam_answer, len(c.options)) for c in csv_cases] == [("c1", "A", 4), ("c2", "A", 4)]


def test_flat_cases_still_load(demo_data_dir):
    cases = load_eval_cases(demo_data_dir / "demo_eval.jsonl", limit=3)
    assert len(cases) == 3 and cases[0].kind == "flat" and cases[0].reference_diagnosis


@pytest.mark.parametrize(("records", "message"), [
    ([{"title": "x", "text": "y"}], r"rows?\.json: row 1 has no question .*'title', 'text'.*clinical record needs 'description'"),
    ([{"description": "病例", "QA_pairs": []}], r"row 1, field 'QA_pairs': expected a non-empty list"),
    ([{"description": "", "QA_pairs": [{"question": "诊断？", "solution": "肺炎"}]}], r"row 1, field 'description'"),
    ([{"description": "病例", "QA_pairs": [{"question": "诊断？"}, {"solution": "肺炎"}]}],
     r"row 1, field 'QA_pairs\[1\]\.question'"),
    ([{"Question": "a"}, {"question": "题", "option": {"A": "甲", "B": "乙"}, "answer": "C"}],
     r"row 2, field 'answer': expected the correct option letter\(s\) out of AB; got 'C'"),
    ([{"question": "题", "option": "A甲B乙", "answer": "A"}], r"row 1, field 'option': expected the options as an object"),
    ([{"question": "题", "option": {"A": "甲"}, "answer": "A"}], r"row 1, field 'option': expected at least two options"),
    ([{"id": "a", "Question": "一"}, {"id": "a", "Question": "二"}], r"row 2, field 'id': id 'a' is already used by row 1"),
    ([{"Question": "病例", "reference_diagnosis": 3}], r"row 1, field 'reference_diagnosis'"),
    (["just text"], r"row 1: is not an object"),
])
def test_bad_shapes_name_the_row_and_field(tmp_path, records, message):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_eval_cases(path)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "cases.jsonl"
    bad.write_text('{"Question": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        load_eval_cases(bad)
    with pytest.raises(UserError, match="no such case file"):
        load_eval_cases(tmp_path / "missing.jsonl")
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        load_eval_cases(bad)
