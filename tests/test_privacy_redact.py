"""`medtui redact`: every identifier replaced by its typed placeholder, nothing else changed (diffed
byte for byte against the input with the values replaced), the input untouched, the output clean."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from privacy_data import EMAIL, ID_NUMBER, NAME, PHONE, RECORD, VALUES, rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
IDENTIFIER_KINDS = {"id_number", "phone_number", "email", "record_number", "name_field"}


def medtui(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def replaced(text: str) -> str:
    for value, placeholder in VALUES.items():
        text = text.replace(value, placeholder)
    return text


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_validates_clean(path: Path, *extra: str) -> None:
    proc = medtui("validate", str(path), "--no-measure", "--json", *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    kinds = {f["kind"] for f in report["findings"]}
    assert not kinds & IDENTIFIER_KINDS, kinds


def test_jsonl_redacted_with_counts_and_nothing_else_changed(tmp_path: Path):
    src = write_jsonl(tmp_path / "cases.jsonl")
    before = sha(src)
    # the input does hold identifiers: validation says so
    proc = medtui("validate", str(src), "--no-measure", "--json")
    assert proc.returncode == 1
    assert {f["kind"] for f in json.loads(proc.stdout)["findings"]} >= IDENTIFIER_KINDS

    out = tmp_path / "redacted.jsonl"
    proc = medtui("redact", str(src), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # the note column's phone number is replaced too: redaction is not only for the mapped fields
    assert report["replaced"] == {"id_number": 1, "phone_number": 2, "email": 1, "record_number": 1, "name_field": 1}
    assert report["total"] == 6 and report["remaining"] == 0
    assert report["placeholders"]["id_number"] == "[身份证号]"
    assert sha(src) == before  # the input is never modified
    text = out.read_text(encoding="utf-8")
    assert text == replaced(src.read_text(encoding="utf-8"))  # the diff: exactly the values, nothing else
    for value in VALUES:
        assert value not in text
    assert [json.loads(line) for line in text.splitlines()][4]["Complex_CoT"] == "考虑急性冠脉综合征。住院号：[病历号]，既往史不详。"
    assert_validates_clean(out)

    # the CLI's words: the counts by kind, never a value
    again = medtui("redact", str(src), "--out", str(tmp_path / "again.jsonl"))
    assert again.returncode == 0
    assert "6 possible identifier(s) replaced" in again.stdout and "2 mobile numbers" in again.stdout
    assert "[手机号]" in again.stdout
    for value in VALUES:
        assert value not in again.stdout + again.stderr


def test_refuses_to_overwrite_unless_forced_and_never_the_input(tmp_path: Path):
    src = write_jsonl(tmp_path / "cases.jsonl")
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n", encoding="utf-8")
    proc = medtui("redact", str(src), "--out", str(out))
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--force" in proc.stderr
    assert out.read_text(encoding="utf-8") == "keep me\n"
    proc = medtui("redact", str(src), "--out", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == replaced(src.read_text(encoding="utf-8"))
    before = sha(src)
    proc = medtui("redact", str(src), "--out", str(src), "--force")
    assert proc.returncode == 2 and "is the input file" in proc.stderr
    assert sha(src) == before


def test_json_with_escaped_text_keeps_its_escapes(tmp_path: Path):
    """A JSON file written with ASCII escapes (\\uXXXX) gets its placeholders escaped the same way."""
    data = rows()
    src = tmp_path / "cases.json"
    src.write_text(json.dumps({"train": data}, ensure_ascii=True, indent=2), encoding="utf-8")
    out = tmp_path / "redacted.json"
    proc = medtui("redact", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    expected = [{k: replaced(v) for k, v in r.items()} for r in data]
    assert out.read_text(encoding="utf-8") == json.dumps({"train": expected}, ensure_ascii=True, indent=2)
    assert_validates_clean(out)


@pytest.mark.parametrize(("encoding", "newline", "delimiter", "suffix"), [
    ("gb18030", "\r\n", ",", ".csv"),
    ("utf-8-sig", "\n", "\t", ".tsv"),
])
def test_csv_and_tsv_keep_encoding_line_endings_and_quoting(tmp_path: Path, encoding: str, newline: str,
                                                            delimiter: str, suffix: str):
    data = rows()
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=newline)
    writer.writerow(list(data[0]))
    for r in data:
        # quotes inside a field, and a field spanning two lines
        writer.writerow([r["Question"].replace("胸痛", '"胸痛"'), r["Complex_CoT"], r["Response"] + "\n随访：1周", r["Note"]])
    raw = buf.getvalue()
    src = tmp_path / f"cases{suffix}"
    src.write_bytes(raw.encode(encoding))
    out = tmp_path / f"redacted{suffix}"
    proc = medtui("redact", str(src), "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"] == 6
    assert out.read_bytes() == replaced(raw).encode(encoding)  # same encoding, BOM, line endings, quoting
    if encoding == "utf-8-sig":
        assert out.read_bytes().startswith(codecs.BOM_UTF8)
    assert_validates_clean(out)


def test_a_file_without_identifiers_is_copied_unchanged(tmp_path: Path):
    src = tmp_path / "clean.jsonl"
    src.write_text(json.dumps({"Question": "女性，30岁，咳嗽3天。", "Complex_CoT": "", "Response": "诊断：上呼吸道感染。"},
                              ensure_ascii=False) + "\r\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = medtui("redact", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "no possible identifiers found" in proc.stdout
    assert out.read_bytes() == src.read_bytes()


def test_placeholders_are_not_identifiers():
    from medtui_engine.dataset.identifiers import find_identifiers

    assert find_identifiers("姓名：[姓名]，身份证号[身份证号]，病历号：[病历号]，电话[手机号]，邮箱[邮箱]") == []
    assert {h.kind for h in find_identifiers(f"姓名：{NAME} {ID_NUMBER} {PHONE} {EMAIL} 病历号：{RECORD}")} == IDENTIFIER_KINDS
