"""Clinician review: a real report (`medtui eval score`) exported blinded, filled as a clinician would, imported."""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtui_engine.errors import UserError
from medtui_engine.evaluate.judge import parse_verdicts, run_judge
from medtui_engine.evaluate.review import KEY_PREFIX, import_review
from medtui_engine.notices import DISCLAIMER

ROOT = Path(__file__).resolve().parent.parent
BASE_LABEL, TUNED_LABEL = "Qwen-Sentinel-Base-7B", "Sentinel-Medical-Tuned-Run42"
HOSTILE = "<script>alert('x')</script> & <b>粗体</b>"
JUDGEMENTS = ("diagnosis_correct", "basis_complete", "differential_adequate", "treatment_feasible")


def medtui(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120, stdin=subprocess.DEVNULL)


def _answers(tmp: Path) -> tuple[Path, Path]:
    """Eight demo cases answered twice (a vague base, a tuned answer shaped like the reference) and one exam question."""
    cases = [json.loads(line) for line in (ROOT / "data" / "demo_eval.jsonl").read_text(encoding="utf-8").splitlines()][:8]
    base, tuned = [], []
    for i, c in enumerate(cases):
        row = {"id": c["id"], "question": c["Question"], "reference_diagnosis": c["reference_diagnosis"],
               "reference_answer": c["reference_answer"], "prompt_opened_think": True, "template": "seed"}
        vague = f"疑似诊断：{c['reference_diagnosis'][0] if i % 2 else '待查'}\n诊断依据：症状符合。\n治疗方案：对症治疗。"
        if i == 2:
            vague += "\n" + HOSTILE
        base.append({**row, "model": BASE_LABEL, "answer": f"考虑常见病。</think>\n{vague}"})
        tuned.append({**row, "model": TUNED_LABEL, "answer": f"逐条分析症状、体征和检查。</think>\n{c['reference_answer']}"})
    exam = {"id": "x1", "question": "下列哪项…？", "reference_diagnosis": None, "exam_answer": "B",
            "options": {"A": "甲", "B": "乙"}, "kind": "exam", "template": "seed"}
    base.append({**exam, "model": BASE_LABEL, "answer": "</think>答案：A"})
    tuned.append({**exam, "model": TUNED_LABEL, "answer": "</think>答案：B"})
    paths = []
    for name, rows in (("base", base), ("tuned", tuned)):
        p = tmp / f"answers-{name}.jsonl"
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        paths.append(p)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("review")
    base, tuned = _answers(tmp)
    env = {"MEDTUI_WORKSPACE": str(tmp / "ws")}
    paired, single = tmp / "paired", tmp / "single"
    for out, files in ((paired, [str(tuned), "--base", str(base)]), (single, [str(tuned)])):
        run = medtui("eval", "score", *files, "--out", str(out), "--json", env=env)
        assert run.returncode == 0, run.stderr
    return {"paired": paired, "single": single, "env": env}


@pytest.fixture
def report(built, tmp_path) -> Path:
    dst = tmp_path / "report"
    shutil.copytree(built["paired"], dst)
    return dst


def _key(report_dir: Path) -> dict:
    (key,) = report_dir.glob(f"{KEY_PREFIX}*.json")
    return json.loads(key.read_text(encoding="utf-8"))


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict], encoding: str = "utf-8", delimiter: str = ",") -> Path:
    with open(path, "w", encoding=encoding, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def _fill(rows: list[dict], key: dict, judge) -> list[dict]:
    """A clinician's sheet: ``judge(model, case_index, judgement)`` -> 'y' / 'n' / '' for each answer shown."""
    out = []
    for i, r in enumerate(rows):
        pair = key["pairs"][r["pair_id"]]
        r = dict(r)
        for side in ("A", "B"):
            if f"{side}_diagnosis_correct" in r:
                for j in JUDGEMENTS:
                    r[f"{side}_{j}"] = judge(pair[side], i, j)
        if "preference" in r:
            r["preference"] = "tie" if i == 0 else ("A" if pair["A"] == "tuned" else "b")  # 'b': any case is accepted
        r["comment"] = "鉴别诊断, \"引号\"" if i == 1 else ""
        out.append(r)
    return out


def _judge(model: str, i: int, j: str) -> str:
    if j == "treatment_feasible" and i == 7:
        return ""  # not judged
    if model == "tuned":
        return "n" if (j == "diagnosis_correct" and i == 3) else "Yes"
    return "y" if i < 3 else "n"


def test_export_is_blinded(report, built):
    run = medtui("review", "export", str(report), "--seed", "11", env=built["env"])
    assert run.returncode == 0, run.stderr
    pack = report / "review"
    assert sorted(p.name for p in pack.iterdir()) == ["review.csv", "review.html"]
    assert "never send it to reviewers" in run.stdout
    page = (pack / "review.html").read_text(encoding="utf-8")
    sheet = (pack / "review.csv").read_text(encoding="utf-8-sig")
    for text in (page, sheet):
        for secret in (BASE_LABEL, TUNED_LABEL, "answers-base", "answers-tuned", "Sentinel"):
            assert secret not in text, secret
        assert not re.search(r"\b(base|tuned)\b", text, re.I)
    # self-contained, every answer escaped, the disclaimer once
    assert page.count(DISCLAIMER) == 1
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert not re.search(r"(src|href)\s*=|@import|url\(|https?:", page)
    rows = _rows(pack / "review.csv")
    assert [r["case_id"] for r in rows] == [f"eval-00{i}" for i in range(1, 9)]  # the exam question is not reviewed
    assert list(rows[0]) == ["pair_id", "case_id", *(f"{s}_{j}" for s in "AB" for j in JUDGEMENTS), "preference",
                             "comment"]
    key = _key(report)
    assert key["seed"] == 11 and key["models"] == ["base", "tuned"]
    assert {p["A"] for p in key["pairs"].values()} == {"base", "tuned"}  # the order differs across cases
    # the key maps each pair to the model whose answer the page shows as A
    models = json.loads((report / "report.json").read_text(encoding="utf-8"))["models"]
    for pid, pair in key["pairs"].items():
        block = page.split(f'id="{pid}"', 1)[1].split("</article>", 1)[0]
        shown_a = block.split("<h3>Answer A</h3>", 1)[1].split("<h3>Answer B</h3>", 1)[0]
        tuned_answer = next(c for c in models["tuned"]["cases"] if c["id"] == pair["case_id"])["output"]
        visible = html.escape(tuned_answer.split("</think>", 1)[1].strip())
        assert (visible in shown_a) == (pair["A"] == "tuned"), pid
    # the same seed gives the same pack
    assert medtui("review", "export", str(report), "--seed", "11", "--out", str(report.parent / "again"),
                  env=built["env"]).returncode == 0
    assert (report.parent / "again" / "review.csv").read_bytes() == (pack / "review.csv").read_bytes()
    assert len(list(report.glob(f"{KEY_PREFIX}*.json"))) == 1


def test_filled_csv_imported(report, built, tmp_path):
    assert medtui("review", "export", str(report), "--seed", "3", env=built["env"]).returncode == 0
    key = _key(report)
    filled = _write(tmp_path / "dr-li.csv", _fill(_rows(report / "review" / "review.csv"), key, _judge))
    before = (filled.read_bytes(), filled.stat().st_mtime_ns)
    run = medtui("review", "import", str(report), str(filled), env=built["env"])
    assert run.returncode == 0, run.stderr
    assert "imported reviewer 'dr-li'" in run.stdout and "| clinician: diagnosis correct |" in run.stdout
    assert (filled.read_bytes(), filled.stat().st_mtime_ns) == before  # the user's file is only read
    cl = json.loads((report / "report.json").read_text(encoding="utf-8"))["clinician"]
    li = cl["reviewers"]["dr-li"]
    assert cl["pooled"]["models"] == li["models"]  # one reviewer: pooled is theirs
    base_dx, tuned_dx = li["models"]["base"]["diagnosis_correct"], li["models"]["tuned"]["diagnosis_correct"]
    assert (base_dx["k"], base_dx["n"], tuned_dx["k"], tuned_dx["n"]) == (3, 8, 7, 8)
    assert base_dx["ci_method"] == "wilson"
    assert base_dx["ci95"] == pytest.approx([0.1368, 0.6943], abs=5e-4)  # Wilson 3/8
    assert li["models"]["tuned"]["treatment_feasible"]["n"] == 7  # one left blank: not judged
    d = li["paired"]["measures"]["diagnosis_correct"]
    assert (d["n"], d["b"], d["c"]) == (8, 0, 4) and d["diff"] == pytest.approx(0.5)
    assert d["p_mcnemar"] == pytest.approx(0.125) and 0 < d["ci95"][0] < 0.5 < d["ci95"][1] <= 1
    assert li["paired"]["measures"]["treatment_feasible"]["n"] == 7
    assert li["preference"]["counts"] == {"base": 0, "tuned": 7, "tie": 1}
    assert li["cases"]["eval-002"]["comment"] == "鉴别诊断, \"引号\""
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "## Clinician review" in md and md.count(DISCLAIMER) == 1
    assert "| clinician: diagnosis correct | 37.5% (3/8; 95% CI 14-69%) | 87.5% (7/8;" in md
    assert "preferred: base 0, tuned 7, tie 1 (n = 8; sign test p = 0.0156)" in md
    # the same file again changes nothing; another file under the same name needs --replace or another name
    assert medtui("review", "import", str(report), str(filled), env=built["env"]).returncode == 0
    other = tmp_path / "other" / "dr-li.csv"
    other.parent.mkdir()
    # as a spreadsheet in a Chinese locale saves it: GB18030, ';' between cells, 是 for yes
    _write(other, _fill(_rows(report / "review" / "review.csv"), key, lambda m, i, j: "是"), "gb18030", ";")
    with pytest.raises(UserError, match="already imported from another file"):
        import_review(report, other)
    r = import_review(report, other, reviewer="dr-wang")
    assert r.reviewers == ["dr-li", "dr-wang"]
    cl = r.report["clinician"]
    pooled = cl["pooled"]["models"]["base"]["diagnosis_correct"]
    assert (pooled["n"], pooled["value"], pooled["ci_method"]) == (8, pytest.approx((3 + 8) / 16), "bootstrap")
    assert cl["reviewers"]["dr-li"]["models"]["base"]["diagnosis_correct"]["k"] == 3  # kept per reviewer
    assert cl["pooled"]["preference"]["counts"]["tuned"] == 14
    assert "Reviewer dr-wang:" in (report / "report.md").read_text(encoding="utf-8")
    # scoring the same answers again into the report keeps the review
    run = medtui("eval", "score", str(report / "answers-tuned.jsonl"), "--base", str(report / "answers-base.jsonl"),
                 "--out", str(report), env=built["env"])
    assert run.returncode == 0, run.stderr
    assert json.loads((report / "report.json").read_text(encoding="utf-8"))["clinician"] == cl
    assert "Reviewer dr-wang:" in (report / "report.md").read_text(encoding="utf-8")


def test_bad_rows_name_row_and_column(report, built, tmp_path):
    assert medtui("review", "export", str(report), "--seed", "5", env=built["env"]).returncode == 0
    rows = _rows(report / "review" / "review.csv")
    before = (report / "report.json").read_bytes()

    def fails(mutate, *expected, where=None):
        bad = [dict(r) for r in rows]
        mutate(bad)
        path = _write(where or tmp_path / "bad.csv", bad)
        with pytest.raises(UserError) as exc:
            import_review(report, path)
        for phrase in (str(path), *expected):
            assert phrase in str(exc.value), (phrase, str(exc.value))

    fails(lambda b: b[1].update(B_basis_complete="maybe"), "row 3, column 'B_basis_complete'", "'maybe'",
          "y or n (also yes/no, 1/0, 是/否), or blank")
    fails(lambda b: b[0].update(preference="C"), "row 2, column 'preference'", "A, B or tie")
    fails(lambda b: b[4].update(pair_id=b[4]["pair_id"][:-3] + "999"), "row 6, column 'pair_id'", "unknown pair id")
    fails(lambda b: b[2].update(pair_id=b[1]["pair_id"]), "row 4, column 'pair_id'", "also on row 3")
    fails(lambda b: b[3].update(case_id="eval-999"), "row 5, column 'case_id'", "('eval-004')")
    fails(lambda b: [r.update(reviewer="Li") for r in b], "column 13 'reviewer' is not a review column")
    fails(lambda b: None, "no judgement")
    # rows are numbered as a spreadsheet shows them: a blank line counts
    gap = _write(tmp_path / "gap.csv", [dict(r, A_diagnosis_correct="y") for r in rows[:2]] + [dict(rows[2], A_basis_complete="x")])
    lines = gap.read_bytes().decode("utf-8").split("\r\n")
    gap.write_text("\r\n".join(lines[:2] + [""] + lines[2:]), encoding="utf-8", newline="")
    with pytest.raises(UserError, match="row 5, column 'A_basis_complete'"):
        import_review(report, gap)
    assert (report / "report.json").read_bytes() == before  # nothing half-imported
    # a CSV from another report's pack, through the CLI: one line, exit 2, no traceback
    other = [dict(r, pair_id="abcdef-" + r["pair_id"][-3:], A_diagnosis_correct="y") for r in rows]
    run = medtui("review", "import", str(report), str(_write(tmp_path / "elsewhere.csv", other)), env=built["env"])
    assert run.returncode == 2 and "review pack abcdef" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_one_model_report(built, tmp_path):
    report = tmp_path / "single"
    shutil.copytree(built["single"], report)
    run = medtui("review", "export", str(report), "--out", str(tmp_path / "pack"), "--json", env=built["env"])
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert (out["n_cases"], out["n_pairs"], out["n_single"]) == (8, 0, 8)
    assert not list((tmp_path / "pack").glob(f"{KEY_PREFIX}*")) and list(report.glob(f"{KEY_PREFIX}*"))
    rows = _rows(tmp_path / "pack" / "review.csv")
    assert list(rows[0]) == ["pair_id", "case_id", *(f"A_{j}" for j in JUDGEMENTS), "comment"]
    page = (tmp_path / "pack" / "review.html").read_text(encoding="utf-8")
    assert "Answer B" not in page and TUNED_LABEL not in page
    filled = _write(tmp_path / "dr-li.csv", _fill(rows, _key(report), lambda m, i, j: "y" if i else "n"))
    r = import_review(report, filled)
    rate = r.report["clinician"]["pooled"]["models"]["model"]["basis_complete"]
    assert (rate["k"], rate["n"]) == (7, 8) and r.report["clinician"]["pooled"]["paired"] is None


def test_judge_verdicts_are_read_strictly():
    assert parse_verdicts("diagnosis_correct: yes\nbasis_complete: no\n**differential_adequate**: Yes\n"
                          "treatment_feasible：否") == {"diagnosis_correct": True, "basis_complete": False,
                                                      "differential_adequate": True, "treatment_feasible": False}
    # the format echoed back is no verdict; inside the think block nothing counts; the last verdict wins
    assert parse_verdicts("diagnosis_correct: yes or no (Is the ...)\nbasis_complete: yes/no") == {}
    assert parse_verdicts("<think>diagnosis_correct: yes</think>\ndiagnosis_correct: no\ndiagnosis_correct: yes") == {
        "diagnosis_correct": True}


def test_judge_model_columns_are_the_judges(built, tmp_path, demo_model):
    report = tmp_path / "report"
    shutil.copytree(built["paired"], report)
    t0 = time.perf_counter()
    result = run_judge(report, str(demo_model), max_new_tokens=6, limit=2)
    print(f"judge: {result['answers']} answers in {time.perf_counter() - t0:.1f} s (demo model, CPU, load included)")
    saved = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert "clinician" not in saved
    (label,) = saved["judge"]["judges"]
    j = saved["judge"]["judges"][label]
    assert result["answers"] == j["answers"] == 4 and "random weights" in label  # 2 cases x 2 answers
    assert sum(len(v) for v in j["raw"].values()) == 4
    assert {e["label"] for m in j["models"].values() for e in m.values()} == {f"judge: {k.replace('_', ' ')}"
                                                                            for k in JUDGEMENTS}
    judged = sum(e["n"] for m in j["models"].values() for e in m.values())
    assert judged + j["verdicts_missing"] == 4 * 4  # every verdict is either read or counted missing
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "## Judge model (a model's opinion, not a clinician's)" in md and "| judge: diagnosis correct |" in md
    assert "## Clinician review" not in md and "random weights: its verdicts mean nothing" in md
