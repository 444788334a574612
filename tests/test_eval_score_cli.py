"""`medtui eval score`: rescoring saved answers without a model, in a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "eval"


def medtui(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui", *args], capture_output=True, text=True, cwd=cwd,
                          env=os.environ.copy(), timeout=120, stdin=subprocess.DEVNULL)


def test_score_pairs_base_and_tuned(tmp_path, workspace):
    out = tmp_path / "report"
    run = medtui("eval", "score", str(FIXTURES / "answers-tuned.jsonl"), "--base", str(FIXTURES / "answers-base.jsonl"),
                 "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("not medical advice") == 1
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in out.iterdir()) == ["answers-base.jsonl", "answers-tuned.jsonl", "report.json",
                                                     "report.md"]
    verdicts = {n: {c["id"]: (c["diagnosis_match"], c["diagnosis_tier"]) for c in m["cases"]}
                for n, m in report["models"].items()}
    assert verdicts["base"] == {
        "f1": (False, "too_many_candidates"), "f2": (False, "negated"), "f3": (False, "different"),
        "f4": (False, "no_diagnosis"), "f5": (None, None), "f6": (True, "synonym"), "101-q1": (True, "exact"),
        "x1": (None, None), "x3": (None, None)}
    assert verdicts["tuned"] == {
        "f1": (True, "containment"), "f2": (True, "containment"), "f3": (True, "synonym"), "f4": (True, "exact"),
        "f5": (None, None), "f6": (False, "different"), "101-q1": (True, "exact"), "x1": (None, None),
        "x3": (None, None)}
    tuned = report["models"]["tuned"]["summary"]
    assert tuned["exam_correct"]["k"] == 2 and report["models"]["base"]["summary"]["exam_correct"]["k"] == 1
    assert report["models"]["base"]["summary"]["all_sections"]["k"] == 0  # five empty headings in f4 do not count
    pair = report["paired"]["measures"]["diagnosis_match"]
    assert (pair["n"], pair["b"], pair["c"]) == (6, 1, 4)
    assert abs(pair["p_mcnemar"] - 0.375) < 1e-12 and abs(pair["diff"] - 0.5) < 1e-12
    lo, hi = pair["ci95"]
    assert -1 <= lo < 0.5 < hi <= 1
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.count("not medical advice") == 1
    for phrase in ("McNemar", "paired bootstrap", "2000 resamples", "Wilson", "never as a match", "one way only",
                   "with content", "exam_correct", "| diagnosis: match (exact, synonym, containment, subtype) | 33.3% (2/6"):
        assert phrase in md, phrase
    # the same files scored twice give the same report (the bootstrap is seeded)
    again = medtui("eval", "score", str(FIXTURES / "answers-tuned.jsonl"), "--base", str(FIXTURES / "answers-base.jsonl"),
                   "--out", str(out), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["paired"] == report["paired"]


def test_score_one_file_into_the_workspace(workspace):
    run = medtui("eval", "score", str(FIXTURES / "answers-base.jsonl"), "--json",
                 "--synonyms", str(FIXTURES / "synonyms-extra.tsv"))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    where = Path(result["report_dir"])
    assert where.parent == workspace.resolve() / "reports" and where.name.startswith("eval-score-")
    assert result["disclaimer"].endswith("not medical advice.")
    assert "paired" not in result and list(result["summary"]) == ["model"]
    assert result["synonyms"] == ["default", str(FIXTURES / "synonyms-extra.tsv")]


def test_bad_answers_files_are_user_errors(tmp_path, workspace):
    bad = tmp_path / "answers.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "q", "answer": "x"}) + "\n", encoding="utf-8")
    run = medtui("eval", "score", str(bad))
    assert run.returncode == 2 and "line 1 has no field 'reference_diagnosis'" in run.stderr, run.stderr
    bad.write_text(json.dumps({"id": "a", "question": "q", "reference_diagnosis": 5, "answer": "x"}) + "\n",
                   encoding="utf-8")
    run = medtui("eval", "score", str(bad))
    assert run.returncode == 2 and "line 1, field 'reference_diagnosis'" in run.stderr, run.stderr
    run = medtui("eval", "score", str(tmp_path / "none.jsonl"))
    assert run.returncode == 2 and "no such answers file" in run.stderr
    run = medtui("eval")
    assert run.returncode == 2 and "--model" in run.stderr and "eval score" in run.stderr
