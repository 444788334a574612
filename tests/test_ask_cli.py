"""``medtui ask`` as a user runs it: a real subprocess on the demo model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CASE = "女性，45岁，右上腹痛3天，TBil 68μmol/L"


def ask(*args: str, stdin: str | None = None, workspace: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if workspace is not None:
        env["MEDTUI_WORKSPACE"] = str(workspace)
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", "ask", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=300)


def test_ask_json_compare_with_base(demo_model: Path, workspace: Path) -> None:
    p = ask("--model", "demo", "--compare", "base", "--json", "--max-new-tokens", "6", "--seed", "1",
            "--save", CASE, workspace=workspace)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["disclaimer"].startswith("Model answers are for clinicians to assess")
    assert out["sampling"] == {"temperature": 0.3, "top_p": 0.9, "max_new_tokens": 6, "seed": 1, "top_k": 50,
                               "repetition_penalty": None}
    sides = [a["side"] for a in out["answers"]]
    assert sides == ["tuned", "base"]
    for a in out["answers"]:
        assert a["model"]["demo"] and "random weights, demo only" in a["model"]["label"]
        assert 151645 in a["stop_ids"] and isinstance(a["notes"], list)  # <|im_end|> always stops
        st = a["stats"]
        assert st["output_tokens"] <= 6 and st["ttft_s"] > 0 and st["total_s"] > 0
        assert st["finish_reason"] in ("length", "eos") and set(a["sections_missing"]) <= {
            "diagnosis", "basis", "differential", "treatment", "followup"}
    saved = list((workspace / "transcripts").glob("*.jsonl"))
    assert len(saved) == 1 and saved[0].with_suffix(".md").exists()


def test_ask_streams_text_from_stdin(demo_model: Path, workspace: Path) -> None:
    p = ask("--max-new-tokens", "5", "--seed", "2", "-", stdin=CASE + "\n", workspace=workspace)
    assert p.returncode == 0, p.stderr
    assert "Model answers are for clinicians to assess; they are not medical advice." in p.stderr
    assert "random weights, demo only" in p.stderr and "first token" in p.stderr
    assert p.stdout.strip()  # the streamed answer went to stdout


def test_ask_user_mistakes_are_one_line(workspace: Path) -> None:
    p = ask("--model", "/no/such/model", CASE, workspace=workspace)
    assert p.returncode == 2 and "no model called" in p.stderr and "Traceback" not in p.stderr
    p = ask("--temperature", "-1", CASE, workspace=workspace)
    assert p.returncode == 2 and "temperature" in p.stderr and "Traceback" not in p.stderr
    p = ask("-", stdin="  \n", workspace=workspace)
    assert p.returncode == 2 and "empty" in p.stderr
    p = ask("--demo-case", "99", workspace=workspace)
    assert p.returncode == 2 and "no demo case" in p.stderr


def test_ask_through_unsloth_backend(demo_model: Path, workspace: Path) -> None:
    """Unsloth's path (its CPU fallback here; its fast inference on a GPU), in its own process since
    importing Unsloth patches transformers for the whole process."""
    p = ask("--backend", "unsloth", "--json", "--max-new-tokens", "4", "--temperature", "0", CASE, workspace=workspace)
    assert p.returncode == 0, p.stderr[-2000:]
    (a,) = json.loads(p.stdout)["answers"]
    assert a["backend"] == "unsloth" and a["stats"]["decode_path"] == "generate"
    assert 0 < a["stats"]["output_tokens"] <= 4
