"""Transcripts: Markdown for people, JSONL read back exactly; damaged files named, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtui_engine.errors import UserError
from medtui_engine.transcripts import (
    DISCLAIMER,
    Transcript,
    TranscriptEntry,
    list_transcripts,
    load_transcript,
    save_transcript,
)

OUT = "思考中</think>\n### 回答:\n疑似诊断：子痫前期重度，警惕HELLP综合征\n鉴别诊断：1. 妊娠期急性脂肪肝"


def _entry(case: int, side: str, output: str = OUT) -> TranscriptEntry:
    return TranscriptEntry(case, "女性，29岁，孕36周，BP 162/108mmHg", f"model-{side}", output, "seed", "/m", None,
                           {"temperature": 0.3}, {"ttft_s": 0.04, "decode_tokens_per_s": 50.0, "total_s": 2.0,
                                                  "output_tokens": 99, "finish_reason": "length"}, side, 1.0)


def test_save_and_read_back(tmp_path: Path) -> None:
    tr = Transcript.new()
    tr.add(_entry(1, "tuned"))
    tr.add(_entry(1, "base", "无思考"))
    tr.add(_entry(2, ""))
    md, jl = save_transcript(tr, tmp_path / "transcripts")
    assert list_transcripts(tmp_path / "transcripts") == [jl]
    text = md.read_text(encoding="utf-8")
    assert DISCLAIMER in text and "## Case 1" in text and "## Case 2" in text
    assert "### model-tuned (tuned)" in text and "cut off at max_new_tokens" in text
    assert "✓ 疑似诊断" in text and "✗ 治疗方案" in text and "<summary>思考过程 (think)</summary>" in text
    back = load_transcript(md)  # the .md path reads its .jsonl
    assert back.session_id == tr.session_id and back.entries == tr.entries
    assert [len(g) for g in back.cases()] == [2, 1] and back.next_case() == 3
    assert not [p for p in (tmp_path / "transcripts").iterdir() if p.name.startswith(".")]  # no temp files left


def test_damaged_transcripts_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"type": "session", "session_id": "s"}\n{not json\n')
    with pytest.raises(UserError, match=r"x\.jsonl, line 2: not valid JSON"):
        load_transcript(bad)
    bad.write_text('{"type": "session", "session_id": "s"}\n{"type": "answer", "case": 1}\n')
    with pytest.raises(UserError, match="line 2: missing field"):
        load_transcript(bad)
    bad.write_text('{"type": "answer"}\n')
    with pytest.raises(UserError, match="before the session line"):
        load_transcript(bad)
    with pytest.raises(UserError, match="cannot read"):
        load_transcript(tmp_path / "missing.jsonl")
