"""From cases to training rows: the real Qwen tokenizer, both templates, the prompt mask, truncation."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtui_engine.errors import UserError
from medtui_engine.templates import render_prompt
from medtui_engine.train.data import TrainCase, load_train_cases, split_train_eval, tokenize_cases

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_model))


CASE = TrainCase(1, "女性，45岁，右上腹痛3天，TBil 68μmol/L。", "先排除胆囊炎，转向肝细胞性黄疸。", "疑似诊断：病毒性肝炎。")


@pytest.mark.parametrize("template", ["seed", "chat"])
def test_rows_are_prompt_then_completion_with_eos(tokenizer, template):
    rows, counts = tokenize_cases([CASE], template, tokenizer, 4096, mask_prompt=True)
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    prompt_ids = tokenizer(render_prompt(template, CASE.question, tokenizer))["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids  # exactly the tokens the console will send
    assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
    assert labels[len(prompt_ids):] == ids[len(prompt_ids):]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # the model learns to stop
    assert counts == {"tokens": len(ids), "truncated": 0, "dropped": 0}
    text = tokenizer.decode(ids)
    assert CASE.cot in text and CASE.response in text
    unmasked, _ = tokenize_cases([CASE], template, tokenizer, 4096, mask_prompt=False)
    assert unmasked[0]["labels"] == unmasked[0]["input_ids"]


def test_truncation_and_cases_with_nothing_to_learn(tokenizer):
    rows, counts = tokenize_cases([CASE], "seed", tokenizer, 64, mask_prompt=False)
    assert len(rows[0]["input_ids"]) == 64 and counts["truncated"] == 1
    rows, counts = tokenize_cases([CASE], "seed", tokenizer, 64, mask_prompt=True)  # the prompt alone fills 64
    assert rows == [] and counts["dropped"] == 1


def test_the_bundled_demo_data_loads_and_splits():
    cases, notes = load_train_cases(ROOT / "data" / "demo_train.jsonl", "Question", "Complex_CoT", "Response")
    assert len(cases) >= 64 and notes == []
    assert all(c.question and c.cot and c.response for c in cases)
    train, evals = split_train_eval(cases, 0.1, 3407)
    assert len(train) + len(evals) == len(cases) and len(evals) >= 1
    assert split_train_eval(cases, 0.1, 3407) == (train, evals)
    assert split_train_eval(cases, 0.0, 1) == (cases, [])


def test_a_file_without_usable_cases_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"Question": "q", "Note": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="bad.jsonl"):
        load_train_cases(bad, "Question", "Complex_CoT", "Response")
