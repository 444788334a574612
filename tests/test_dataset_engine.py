"""The dataset engine on real data: the 198 real records, every input format, mapping, splitting,
identifier detection, token counts that match the model's own tokenizer, and the preview."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medtui_engine.dataset import (
    FieldMapping,
    load_cases,
    mapping_from,
    split_cases,
    split_record,
    validate_file,
)
from medtui_engine.dataset.checks import normalise_question
from medtui_engine.dataset.identifiers import find_identifiers, id_checksum_ok, mask_identifiers
from medtui_engine.dataset.measure import estimate_epoch, measure_cases
from medtui_engine.dataset.preview import render_preview
from medtui_engine.dataset.tokens import load_tokenizer
from medtui_engine.errors import UserError
from medtui_engine.templates import TEMPLATES, render_case

EXTRA = ["question", "options", "answer_idx", "answer", "Open-ended Verifiable Question", "Ground-True Answer"]
ROWS = [
    {"Question": "女性，45岁，右上腹痛3天。", "Complex_CoT": "考虑胆囊炎。", "Response": "疑似诊断：急性胆囊炎", "id": 1},
    {"Question": "男性，62岁，吞咽困难2月。", "Complex_CoT": "警惕食管癌。", "Response": "疑似诊断：食管癌", "id": 2},
    {"Question": "女性，28岁，停经8周。", "Complex_CoT": "排除异位妊娠。", "Response": "疑似诊断：异位妊娠", "id": 3},
]


def test_real_records_load_map_and_validate(shared_records: Path, demo_model: Path) -> None:
    ds = load_cases(shared_records)
    assert (ds.format, ds.encoding, ds.total_rows, len(ds.cases)) == ("json", "utf-8", 198, 198)
    # Both "question" and "Question" exist: the exact name wins; the rest are listed and ignored.
    assert ds.mapping == FieldMapping("Question", "Complex_CoT", "Response")
    assert ds.extra_columns == EXTRA
    assert set(ds.cases[0].extra) == set(EXTRA)
    raw = json.loads(shared_records.read_text(encoding="utf-8"))
    assert ds.cases[5].question == raw[5]["Question"] and ds.cases[5].row == 6
    report = validate_file(shared_records, model=demo_model, template="seed", max_seq_length=2048,
                           tokens_per_second=1000)
    assert report.go and report.errors == 0
    assert report.by_kind() == {"unmapped_columns": 1}
    m = report.measurement
    assert m.rows == 198 and 0 < m.p50 <= m.p95 <= m.max < 2048 and sum(m.histogram.counts) == 198
    assert report.estimate.steps_per_epoch == 25 and report.estimate.epoch_seconds > 0
    assert report.as_dict()["extra_columns"] == EXTRA


def test_token_counts_match_the_models_tokenizer(shared_records: Path, demo_model: Path) -> None:
    """Bulk counting (tiktoken when verified) gives the same counts as transformers' tokenizer."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(demo_model))
    tok = load_tokenizer(demo_model)
    assert tok.counter.startswith("tiktoken")
    cases = load_cases(shared_records).cases[:12]
    for template in TEMPLATES:
        m, _ = measure_cases(cases, tok, template, 8192)
        for case, rl in zip(cases, m.lengths, strict=True):
            rc = render_case(template, case.question, case.cot, case.response, hf)
            assert rc.prompt == render_case(template, case.question, case.cot, case.response, tok).prompt
            assert rl.total == len(hf(rc.text)["input_ids"])
            assert rl.prompt == len(hf(rc.prompt)["input_ids"])


def test_chat_prompt_rendering_matches_transformers(demo_model: Path) -> None:
    """The chat prompt is rendered without transformers (memoised around the question); it must be
    the very text transformers renders, whatever the question holds."""
    from transformers import AutoTokenizer

    from medtui_engine.templates import render_prompt

    hf = AutoTokenizer.from_pretrained(str(demo_model))
    tok = load_tokenizer(demo_model)
    for question in ("", " 前后有空格 ", "{{ messages }} {% if x %}", "<think>x</think>", "多行\n\n问题\r\n", "a" * 5000):
        assert render_prompt("chat", question, tok) == render_prompt("chat", question, hf)


def _write_formats(tmp: Path) -> dict[str, Path]:
    out = {}
    out["json"] = tmp / "a.json"
    out["json"].write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    out["json-train"] = tmp / "b.json"
    out["json-train"].write_text(json.dumps({"train": ROWS, "test": ROWS[:1]}, ensure_ascii=False), encoding="utf-8")
    out["json-columns"] = tmp / "c.json"
    out["json-columns"].write_text(json.dumps({k: [r[k] for r in ROWS] for k in ROWS[0]}, ensure_ascii=False), encoding="utf-8")
    out["jsonl"] = tmp / "d.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in ROWS), encoding="utf-8")
    for fmt, delim in (("csv", ","), ("tsv", "\t")):
        out[fmt] = tmp / f"e.{fmt}"
        with open(out[fmt], "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(ROWS[0]), delimiter=delim)
            w.writeheader()
            w.writerows(ROWS)
    import pyarrow as pa
    import pyarrow.parquet as pq

    out["parquet"] = tmp / "f.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), out["parquet"])
    from datasets import Dataset, DatasetDict

    out["arrow"] = tmp / "saved"
    Dataset.from_list(ROWS).save_to_disk(str(out["arrow"]))
    out["arrow-dict"] = tmp / "saved-dict"
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:1])}).save_to_disk(str(out["arrow-dict"]))
    return out


def test_every_format_loads_the_same_cases(tmp_path: Path) -> None:
    files = _write_formats(tmp_path)
    for name, path in files.items():
        ds = load_cases(path)
        got = [(c.row, c.question, c.cot, c.response) for c in ds.cases]
        assert got == [(i + 1, r["Question"], r["Complex_CoT"], r["Response"]) for i, r in enumerate(ROWS)], name
        assert ds.extra_columns == ["id"], name
    assert load_cases(files["json-train"]).note.startswith("records taken from key 'train'")
    assert load_cases(files["arrow-dict"]).note.startswith("split 'train'")
    assert load_cases(files["parquet"]).format == "parquet"
    assert load_cases(files["jsonl"]).cases[1].row == 2  # JSONL rows are line numbers


def test_aliases_case_insensitive_and_explicit_mapping(tmp_path: Path) -> None:
    rows = [{"INSTRUCTION": "q1", "Reasoning": "c1", "Output": "a1", "note": "x"}]
    path = tmp_path / "alias.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    ds = load_cases(path)
    assert ds.mapping == FieldMapping("INSTRUCTION", "Reasoning", "Output") and ds.extra_columns == ["note"]
    ds = load_cases(path, mapping_from("question=note,cot=-,response=Output"))
    assert ds.mapping == FieldMapping("note", None, "Output")
    assert ds.cases[0].question == "x" and ds.cases[0].cot == ""
    assert "INSTRUCTION" in ds.extra_columns
    with pytest.raises(UserError, match="no column 'nope'"):
        load_cases(path, mapping_from("question=nope"))
    with pytest.raises(UserError, match="not FIELD=COLUMN"):
        mapping_from("answer")


def test_split_is_deterministic_and_recorded(shared_records: Path) -> None:
    ds = load_cases(shared_records)
    a = split_cases(ds.cases, 0.1, seed=7)
    b = split_cases(ds.cases, 0.1, seed=7)
    c = split_cases(ds.cases, 0.1, seed=8)
    assert [x.row for x in a[1]] == [x.row for x in b[1]] != [x.row for x in c[1]]
    assert len(a[1]) == 20 and len(a[0]) == 178
    assert {x.row for x in a[0]}.isdisjoint(x.row for x in a[1])
    assert [x.row for x in a[0]] == sorted(x.row for x in a[0])
    rec = split_record(ds, *a, 0.1, 7)
    assert rec["eval_rows"] == [x.row for x in a[1]] and rec["sha256"] == ds.sha256
    tiny = split_cases(ds.cases[:3], 0.01, seed=0)
    assert (len(tiny[0]), len(tiny[1])) == (2, 1)
    assert split_cases(ds.cases, 0.0, 0) == (ds.cases, [])


def test_identifiers_found_masked_and_not_confused_with_lab_values() -> None:
    assert id_checksum_ok("11010519491231002X") and not id_checksum_ok("110105194912310021")
    text = "身份证110105194912310021（校验位错）。WBC 12.5×10^9/L，血小板197,000/mm^3，体温37.8°C，编号20231231"
    assert find_identifiers(text) == []
    text = "患者姓名：王小明，电话 138-1234-5678，+86 13912345678，住院号: 1234567，病案号A0098765"
    hits = find_identifiers(text)
    assert [h.kind for h in hits] == ["name_field", "phone_number", "phone_number", "record_number", "record_number"]
    masked = mask_identifiers(text, hits)
    for whole in ("王小明", "138-1234-5678", "13912345678", "1234567", "A0098765"):
        assert whole not in masked and all(whole not in h.masked for h in hits)
    assert find_identifiers("患者姓名：张某，姓名：XXX，姓名：***，姓名：不详") == []


def test_near_duplicate_normalisation() -> None:
    assert normalise_question("头痛 3天， 伴呕吐。") == normalise_question("头痛3天,伴呕吐") != normalise_question("头痛4天")


def test_preview_parts_and_masking(demo_model: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(demo_model)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"Question": "电话13812345678，头痛", "Response": "疑似诊断：偏头痛"},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    case = load_cases(path).cases[0]
    seed = render_preview(case, "seed", tok)
    assert seed.prompt.endswith("<think>") and seed.completion == "</think>\n### 回答:\n疑似诊断：偏头痛<|im_end|>"
    assert "13812345678" not in seed.prompt and seed.identifiers_masked == 1
    assert any("<think> block is empty" in n for n in seed.notes)
    chat = render_preview(case, "chat", tok)
    assert chat.prompt.startswith("<|im_start|>system") and chat.completion.startswith("<think>\n\n</think>")
    assert chat.prompt_tokens > 0 and chat.completion_tokens > 0


def test_epoch_estimate_arithmetic(demo_model: Path) -> None:
    from medtui_engine.dataset.load import Case

    cases = [Case(i, "问题" * 10, "想", "答", {}) for i in range(1, 18)]
    m, _ = measure_cases(cases, load_tokenizer(demo_model), "seed", 8192)
    est = estimate_epoch(m, batch_size=2, grad_accum=4, tokens_per_second=m.total_tokens / 60)
    assert est.steps_per_epoch == 3 and est.tokens_per_epoch == m.total_tokens and est.epoch_seconds == 60.0
    assert estimate_epoch(m).epoch_seconds is None
