"""The malformed-data corpus: each file yields its specific finding (kind, row, field), the input
bytes are never changed, identifiers never appear whole, and unreadable files exit 2."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medtui_engine.dataset import load_cases, validate_file
from medtui_engine.dataset.findings import IDENTIFIER_KINDS, KINDS
from medtui_engine.errors import UserError

CORPUS = Path(__file__).parent / "fixtures" / "malformed"

# file -> (kind, row, field, severity). max_seq_length 256 for the length checks.
EXPECTED = {
    "bad_json.jsonl": ("bad_json", 2, "", "error"),
    "not_object.jsonl": ("not_object", 2, "", "error"),
    "bad_csv_row.csv": ("bad_csv_row", 2, "", "error"),
    "missing_field.jsonl": ("missing_field", 2, "response", "error"),
    "null_field.json": ("null_field", 2, "question", "error"),
    "null_cot.jsonl": ("null_field", 2, "cot", "warning"),
    "not_string.json": ("not_string", 3, "response", "error"),
    "empty_field.jsonl": ("empty_field", 2, "response", "error"),
    "duplicate_question.jsonl": ("duplicate_question", 3, "question", "warning"),
    "near_duplicate_question.jsonl": ("near_duplicate_question", 3, "question", "warning"),
    "think_marker.jsonl": ("template_marker", 1, "cot", "error"),
    "template_marker.jsonl": ("template_marker", 2, "response", "error"),
    "control_char.jsonl": ("control_char", 2, "question", "warning"),
    "gb18030.jsonl": ("not_utf8", 0, "", "warning"),
    "utf16.json": ("not_utf8", 0, "", "warning"),
    "bom.csv": ("bom", 0, "", "warning"),
    "mojibake.jsonl": ("mojibake", 2, "question", "error"),
    "replacement_char.jsonl": ("replacement_char", 2, "cot", "error"),
    "missing_sections.jsonl": ("missing_sections", 4, "response", "info"),
    "too_long.jsonl": ("too_long", 2, "response", "warning"),
    "prompt_too_long.jsonl": ("prompt_too_long", 1, "question", "error"),
    "id_number.jsonl": ("id_number", 2, "question", "error"),
    "phone_number.jsonl": ("phone_number", 1, "response", "error"),
    "email.csv": ("email", 2, "question", "error"),
    "record_number.jsonl": ("record_number", 1, "question", "error"),
    "name_field.jsonl": ("name_field", 3, "question", "error"),
    "no_cot_column.tsv": ("no_cot_column", 0, "cot", "info"),
}
UNREADABLE = {
    "truncated.json": "not valid JSON at line",
    "empty.jsonl": "empty",
    "no_question_column.jsonl": "no column for Question",
    "binary.json": "not UTF-8",
}
# The whole values planted in the corpus: they must never be printed.
PLANTED = ("11010519491231002X", "13812345678", "zhang.san@example.com", "ZY2023001234", "李秀英")


def _hashes() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(CORPUS.iterdir()) if p.is_file()}


def test_corpus_is_complete_and_current() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.suffix != ".py" and p.is_file()}
    assert len(EXPECTED) >= 20
    assert set(EXPECTED) | set(UNREADABLE) == files
    # The committed bytes are what the generator writes (so the corpus can be rebuilt and reviewed).
    sys.path.insert(0, str(CORPUS))
    try:
        import make_corpus
    finally:
        sys.path.remove(str(CORPUS))
    for name, data in make_corpus.corpus().items():
        assert (CORPUS / name).read_bytes() == data, name
    assert {k for k, *_ in EXPECTED.values()} <= set(KINDS)


@pytest.fixture(scope="module")
def reports(demo_model: Path) -> dict:
    before = _hashes()
    out = {name: validate_file(CORPUS / name, model=demo_model, max_seq_length=256) for name in EXPECTED}
    assert _hashes() == before, "validation changed an input file"
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_file_yields_its_finding(name: str, reports: dict) -> None:
    kind, row, field, severity = EXPECTED[name]
    report = reports[name]
    hits = [f for f in report.findings if f.kind == kind]
    assert [(f.row, f.field, f.severity) for f in hits] == [(row, field, severity)], report.findings
    # Only that problem: the good rows around it stay clean (apart from notes about the file).
    others = [f for f in report.findings if f.kind != kind and f.severity != "info"]
    assert others == []
    assert hits[0].message and hits[0].hint
    assert report.go == (severity != "error")
    for value in PLANTED:
        assert value not in json.dumps(report.as_dict(), ensure_ascii=False)


def test_skipped_rows_are_not_cases_and_notices_do_not_skip() -> None:
    ds = load_cases(CORPUS / "missing_field.jsonl")
    assert [c.row for c in ds.cases] == [1, 3] and ds.skipped_rows == [2]
    ds = load_cases(CORPUS / "null_cot.jsonl")
    assert [c.row for c in ds.cases] == [1, 2, 3] and ds.cases[1].cot == ""
    ds = load_cases(CORPUS / "gb18030.jsonl")
    assert ds.encoding == "gb18030" and ds.cases[0].question.startswith("女性，45岁")
    ds = load_cases(CORPUS / "bom.csv")
    assert ds.encoding == "utf-8-sig" and ds.mapping.question == "Question"
    ds = load_cases(CORPUS / "no_cot_column.tsv")
    assert (ds.mapping.question, ds.mapping.cot, ds.mapping.response) == ("input", None, "output")
    assert all(c.cot == "" for c in ds.cases)


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_files_raise_user_error(name: str) -> None:
    with pytest.raises(UserError) as err:
        load_cases(CORPUS / name)
    assert name in str(err.value) and UNREADABLE[name] in str(err.value)
    assert err.value.exit_code == 2


def test_cli_exit_codes_and_masking(demo_model: Path) -> None:
    before = _hashes()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "medtui_engine.cli", "validate", *args],
                              capture_output=True, text=True, timeout=180)

    ok = cli(str(CORPUS / "control_char.jsonl"), "--model", str(demo_model))
    assert ok.returncode == 0 and "GO:" in ok.stdout and "control_char" in ok.stdout
    bad = cli(str(CORPUS / "id_number.jsonl"), "--model", str(demo_model), "--json")
    assert bad.returncode == 1
    data = json.loads(bad.stdout)
    assert data["go"] is False and data["kinds"]["id_number"] == 1
    assert "11010519491231002X" not in bad.stdout + bad.stderr
    gone = cli(str(CORPUS / "truncated.json"))
    assert gone.returncode == 2 and "truncated.json" in gone.stderr and "Traceback" not in gone.stderr
    unmapped = cli(str(CORPUS / "no_question_column.jsonl"), "--no-measure")
    assert unmapped.returncode == 2 and "--map question=COLUMN" in unmapped.stderr
    mapped = cli(str(CORPUS / "no_question_column.jsonl"), "--no-measure", "--map", "question=foo", "--json")
    assert mapped.returncode == 0 and json.loads(mapped.stdout)["mapping"]["question"] == "foo"
    assert _hashes() == before


def test_identifier_kinds_are_errors() -> None:
    assert all(KINDS[k][0] == "error" for k in IDENTIFIER_KINDS)
