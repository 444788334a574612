"""Diagnosis matching against a hand-labelled set of (prediction, reference, verdict) pairs, and the
primary diagnosis read from real answer text (sections, lists, negation), and the synonyms files."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtui_engine.errors import UserError
from medtui_engine.evaluate.matching import (
    TIERS,
    load_synonyms,
    match_answer,
    match_diagnosis,
    predict_from_answer,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"


def _pairs() -> list[tuple[str, list[str], bool, str]]:
    rows = []
    lines = (FIXTURES / "diagnosis_pairs.tsv").read_text(encoding="utf-8").splitlines()
    header = None
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if header is None:
            header = cols
            continue
        pred, ref, verdict, why = cols
        assert verdict in ("yes", "no"), line
        rows.append((pred, ref.split("|"), verdict == "yes", why))
    return rows


PAIRS = _pairs()


def test_the_labelled_set_is_big_enough_and_has_the_issue_cases():
    assert len(PAIRS) >= 40
    labelled = {(p, "|".join(r)): v for p, r, v, _ in PAIRS}
    for pred, ref in [("肺炎", "肺癌"), ("胃癌", "肝癌"), ("1型糖尿病", "2型糖尿病"), ("炎", "急性胆囊炎"),
                      ("肺炎、肺结核、肺癌、支气管扩张", "肺结核"), ("不考虑肺炎，考虑肺结核", "肺炎")]:
        assert labelled[(pred, ref)] is False
    assert labelled[("急性化脓性阑尾炎", "阑尾炎")] is True
    assert sum(v for _, _, v, _ in PAIRS) >= 15 and sum(not v for _, _, v, _ in PAIRS) >= 15


@pytest.mark.parametrize(("prediction", "reference", "verdict", "why"), PAIRS,
                         ids=[f"{p}~{'|'.join(r)}" for p, r, _, _ in PAIRS])
def test_labelled_pair(prediction, reference, verdict, why):
    m = match_diagnosis(prediction, reference)
    assert m.match is verdict, f"{prediction} vs {reference}: expected {verdict} ({why}); got tier {m.tier}"
    if verdict:
        assert m.tier in TIERS and m.matched_reference
    else:
        assert m.tier not in TIERS


def test_similarity_is_reported_but_never_a_match():
    m = match_diagnosis("肺炎", "肺癌")
    assert m.similarity == pytest.approx(0.5) and m.match is False and m.tier == "different"
    m = match_diagnosis("非小细胞肺癌", "小细胞肺癌")
    assert m.similarity > 0.9 and m.match is False


def test_primary_diagnosis_comes_from_the_diagnosis_section():
    answer = ("患者腹痛，考虑胆道疾病。\n疑似诊断：急性胆囊炎（中度）\n诊断依据：\n1. Murphy征阳性\n"
              "鉴别诊断：\n1. 急性胰腺炎\n2. 消化性溃疡穿孔\n3. 肺炎\n4. 肝癌")
    m = match_answer(answer, "急性胆囊炎")
    assert m.match and m.tier == "exact" and m.candidates == ["急性胆囊炎"]
    # the differential names the reference, but the diagnosis section does not
    assert match_answer(answer, "急性胰腺炎").match is False
    # no diagnosis section: nothing to match
    m = match_answer("急性胰腺炎可能。建议完善检查。", "急性胰腺炎")
    assert m.match is False and m.tier == "no_diagnosis"
    # an empty diagnosis heading
    assert match_answer("疑似诊断：\n诊断依据：饮酒后腹痛", "急性胰腺炎").tier == "no_diagnosis"
    # no reference: no verdict
    assert match_answer("疑似诊断：肺炎", None).match is None


def test_numbered_lists_and_negation_in_answers():
    two = "诊断：\n1. 社区获得性肺炎\n2. 2型糖尿病\n诊断依据：发热咳嗽"
    assert predict_from_answer(two).candidates == ["社区获得性肺炎", "2型糖尿病"]
    assert match_answer(two, "肺炎").tier == "containment"
    four = "诊断：\n1. 肺炎\n2. 肺结核\n3. 肺癌\n4. 支气管扩张\n鉴别诊断：略"
    assert match_answer(four, "肺炎").tier == "too_many_candidates"
    neg = "初步诊断：排除急性心肌梗死，考虑主动脉夹层\n诊断依据：撕裂样胸痛"
    assert match_answer(neg, "急性心肌梗死").tier == "negated"
    assert match_answer(neg, "主动脉夹层").tier == "exact"


def test_a_users_synonyms_file_adds_groups(tmp_path):
    assert match_diagnosis("大叶性肺炎", "肺炎链球菌肺炎").match is False
    syn = load_synonyms(FIXTURES / "synonyms-extra.tsv")
    assert match_diagnosis("大叶性肺炎", "肺炎链球菌肺炎", syn).tier == "synonym"
    assert match_diagnosis("慢阻肺", "慢性阻塞性肺疾病", syn).tier == "synonym"  # the defaults stay
    assert str(FIXTURES / "synonyms-extra.tsv") in syn.sources and "default" in syn.sources
    bad = tmp_path / "syn.tsv"
    bad.write_text("# comment\n肺炎 大叶性肺炎\n", encoding="utf-8")  # a space, not a tab
    with pytest.raises(UserError, match=r"syn.tsv: line 2 .*separated by tabs"):
        load_synonyms(bad)
    with pytest.raises(UserError, match="no such synonyms file"):
        load_synonyms(tmp_path / "missing.tsv")
