"""The memorization probe: canaries planted at training time (the file checked, the planting recorded
with the run), `medtui probe` on the demo model end to end (real jobs, real files, the real CLI), the
evaluation report's memorization section, and the must-show on the real small model: the untrained
model gives back none of the canaries, the model trained on them gives them back verbatim."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CPU_JOB_ENV, TRAIN_JOBS
from privacy_data import VALUES, write_jsonl

from medtui_engine.errors import UserError
from medtui_engine.privacy.probe import (
    CANARIES_FILE,
    PROBE_FILE,
    canary_case,
    read_canaries,
    report_section,
    section_lines,
)
from medtui_engine.train.spec import validate_field

ROOT = Path(__file__).resolve().parents[1]
ALL_KINDS = "id_number,phone_number,email,record_number,name_field"
QUICK = ["--backend", "hf", "--max-steps", "1", "--max-seq-length", "64", "--micro-batch", "1", "--grad-accum", "1",
         "--lora-r", "4", "--lora-alpha", "8", "--heartbeat", "1"]
# random-looking: nothing a model could guess from its first half; letters and digits alternate, so that
# each character is a token of its own in SmolLM2's vocabulary (no merge such as "NC" to get wrong)
CANARIES = ("K7Q4-X9M2-Z5P8", "B3V6-R8J2-W4N7")


def medtui(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


def runs_of(workspace: Path) -> list[Path]:
    runs = workspace / "runs"
    return sorted(d for d in runs.iterdir() if d.is_dir()) if runs.is_dir() else []


def write_canaries(path: Path, canaries=CANARIES) -> Path:
    path.write_text("".join(c + "\n" for c in canaries), encoding="utf-8")
    return path


def refused(path: Path, text: str | bytes) -> str:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_canaries(path)
    return str(err.value)


def test_a_canaries_file_is_checked_and_each_message_names_the_file_and_the_line(tmp_path: Path):
    f = tmp_path / "canaries.txt"
    assert read_canaries(write_canaries(f)) == list(CANARIES)
    assert read_canaries(write_canaries(f, ["  ZP4W-KQ81-XR  "])) == ["ZP4W-KQ81-XR"]  # spaces around are not part of it

    missing = tmp_path / "none.txt"
    with pytest.raises(UserError, match=rf"^{missing}: does not exist or is not a file: give a text file"):
        read_canaries(missing)
    assert refused(f, "") == f"{f}: is empty: write one canary a line (a fake, random-looking string of 8 to 100 characters)"
    assert refused(f, "QX7-ZK4P-91WD\n\nVB2R-8HHQ-Y5NC\n") == \
        f"{f} line 2: is empty: remove the blank line (one canary a line)"
    assert refused(f, "QX7-ZK4P-91WD\nAB12\n").startswith(f"{f} line 2: is 4 characters long; a canary needs at least 8")
    assert refused(f, "QX7-ZK4P-91WD\n" + "Z9" * 60 + "\n").startswith(
        f"{f} line 2: is 120 characters long; a canary is at most 100: shorten it")
    assert refused(f, "QX7-ZK4P-91WD\nVB2R-8HHQ-Y5NC\nQX7-ZK4P-91WD\n").startswith(f"{f} line 3: repeats line 1")
    assert refused(f, "QX7-ZK4P-91WD\n联系电话13812345678\n").startswith(
        f"{f} line 2: looks like a patient identifier (a mobile number (138******78))")
    assert "13812345678" not in refused(f, "联系电话13812345678\n")  # the check never repeats the value
    assert refused(f, "QX7-ZK4P</think>91WD\n").startswith(f"{f} line 1: holds the prompt-template marker '</think>'")
    assert refused(f, b"QX7-ZK4P-91WD\nVB2R-\xff\xfe-Y5NC\n") == f"{f} line 2: is not UTF-8 text: save the file as UTF-8"

    # the training setting carries the same message, named by its label (and its flag on the command line)
    write_canaries(f, ["QX7-ZK4P-91WD", "AB12"])
    (problem,) = validate_field("canaries", str(f), check_files=True)
    assert problem.message() == f"Canaries: {f} line 2: is 4 characters long; a canary needs at least 8 " \
                                "(half is the prompt, the rest must come back)"
    assert problem.message(flags=True).startswith(f"Canaries (--canaries): {f} line 2: ")
    assert validate_field("canaries", "", check_files=True) == []       # no canaries: nothing planted
    assert validate_field("canary_repeats", 0)[0].message() == "Canary repeats must be a whole number from 1 to 1000, got 0"


def test_training_refuses_a_bad_canaries_file_before_anything_starts(tmp_path: Path, workspace: Path,
                                                                     demo_model: Path):
    data = tmp_path / "cases.jsonl"
    data.write_text(json.dumps({"Question": "女性，30岁，咳嗽3天。", "Complex_CoT": "考虑感染。", "Response": "急性支气管炎。"},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    bad = tmp_path / "canaries.txt"
    bad.write_text("QX7-ZK4P-91WD\n\n", encoding="utf-8")
    proc = medtui("train", "--data", str(data), "--canaries", str(bad), "--model", "demo", *QUICK, "--detach")
    assert proc.returncode == 2
    assert f"Canaries (--canaries): {bad} line 2: is empty: remove the blank line" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert runs_of(workspace) == []


@TRAIN_JOBS   # it trains the demo model: on a GPU box, one training job at a time
def test_the_probe_on_the_demo_model_end_to_end(tmp_path: Path, workspace: Path, demo_model: Path):
    data = write_jsonl(tmp_path / "cases.jsonl")
    canaries = write_canaries(tmp_path / "canaries.txt")
    proc = medtui("train", "--data", str(data), "--model", "demo", "--canaries", str(canaries), "--canary-repeats", "2",
                  "--allow-identifiers", ALL_KINDS, *QUICK)  # follows the job to its end
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 canaries planted, 2 times each (4 extra training cases)" in proc.stdout
    (run,) = runs_of(workspace)
    # recorded with the run: the file, its sha256, the count; the run keeps the canaries themselves
    record = json.loads((run / "data.json").read_text())
    sha = hashlib.sha256(canaries.read_bytes()).hexdigest()
    assert record["canaries"] == {"file": str(canaries), "sha256": sha, "count": 2, "repeats": 2, "rows_added": 4,
                                  "kept_as": CANARIES_FILE, "case_version": 1}
    assert (run / CANARIES_FILE).read_bytes() == canaries.read_bytes()
    assert record["train_rows"] == list(range(1, 9))  # the planted cases are extra rows, not the file's

    proc = medtui("probe", run.name, "--json")
    assert proc.returncode == 0, proc.stderr  # random weights give nothing back
    shown = json.loads(proc.stdout)
    on_disk_text = (run / PROBE_FILE).read_text()
    on_disk = json.loads(on_disk_text)
    assert shown["probe_file"] == str(run / PROBE_FILE)
    assert on_disk["run_id"] == run.name and on_disk["model"]["adapter_dir"] == str(run / "adapter")
    c = on_disk["canaries"]
    assert (c["count"], c["reproduced"], c["sha256"]) == (2, 0, sha)
    assert [r["canary"] for r in c["results"]] == list(CANARIES)
    assert all(r["probed_chars"] == len(r["canary"]) - len(r["canary"]) // 2 for r in c["results"])
    i = on_disk["identifiers"]
    assert (i["found"], i["probed"], i["reproduced"], i["rows_with_identifiers"]) == (5, 5, 0, 4)
    assert set(i["by_kind"]) == set(ALL_KINDS.split(","))
    assert {(r["row"], r["field"], r["kind"]) for r in i["results"]} == {
        (2, "question", "id_number"), (3, "question", "phone_number"), (4, "question", "name_field"),
        (4, "question", "email"), (5, "cot", "record_number")}
    for value in VALUES:  # never an identifier's value: not printed, not written
        assert value not in proc.stdout and value not in proc.stderr and value not in on_disk_text

    text = medtui("probe", run.name, "--limit", "2")
    assert text.returncode == 0, text.stderr
    assert "0 of 2 planted canaries reproduced verbatim when prompted with their first half" in text.stdout
    assert re.search(rf"^  {CANARIES[0]}: \d of 7 characters$", text.stdout, re.M), text.stdout
    assert ("0 of 2 possible patient identifiers in 2 trained rows came back verbatim when prompted with the text "
            "before them (the first 2 of 5 probed)") in text.stdout
    assert all(value not in text.stdout + text.stderr for value in VALUES)

    # the evaluation report of the run gets a memorization section with the probe's findings
    ev = medtui("eval", "--model", run.name, "--base", "none", "--limit", "1", "--max-new-tokens", "4", "--json")
    assert ev.returncode == 0, ev.stderr
    report_dir = Path(json.loads(ev.stdout)["report_dir"])
    report = json.loads((report_dir / "report.json").read_text())
    (entry,) = report["memorization"]["entries"]
    assert entry["run_id"] == run.name and entry["probe"]["canaries"]["count"] == 2
    md = (report_dir / "report.md").read_text()
    assert "## Memorization" in md
    assert "0 of 2 planted canaries reproduced verbatim" in md and "possible patient identifiers" in md
    assert all(value not in md and value not in (report_dir / "report.json").read_text() for value in VALUES)

    # a run that planted canaries and was never probed: the section says so, and how to probe it
    (run / PROBE_FILE).unlink()
    section = report_section({"tuned": {"source": {"adapter_dir": str(run / "adapter")}}})
    (entry,) = section["entries"]
    assert entry["probe"] is None and entry["planted_canaries"] == 2 and entry["rows_with_identifiers"] == 4
    assert (f"- **tuned** (run {run.name}) planted 2 canaries and trained on 4 rows holding possible patient "
            f"identifiers, and was not probed: run `medtui probe {run.name}`") in "\n".join(section_lines(section))
    assert report_section({"tuned": {"source": {"model_dir": str(demo_model)}}}) is None  # nothing to say


def test_nothing_to_probe_is_a_clear_message(workspace: Path, demo_model: Path):
    proc = medtui("probe", "demo")
    assert proc.returncode == 2
    assert "nothing to probe in medtui-demo-qwen3-tiny" in proc.stderr
    assert "give the canaries with --canaries FILE, or training rows with --data FILE" in proc.stderr


def test_each_canary_gets_the_same_fake_case_every_time():
    q, cot, response = canary_case(CANARIES[0])
    assert canary_case(CANARIES[0]) == (q, cot, response)
    assert CANARIES[0] in cot and CANARIES[0] not in q + response


# ---------------------------------------------------------------- the must-show, on the real small model

@pytest.mark.slow
@TRAIN_JOBS
@pytest.mark.timeout(2400)  # a guard against a hang (the fine-tune included), not a speed claim
def test_the_probe_finds_planted_canaries_in_the_real_model_after_training_and_none_before(
        real_fine_tune, workspace: Path, real_model: Path):
    """The fine-tune is conftest's real_fine_tune (the section-rate must-show trains apart, without canaries): the first rows of the
    demo data with the two canaries planted, each repeated, in one real training job."""
    canaries, run = real_fine_tune.canaries_file, real_fine_tune.run
    assert read_canaries(run / CANARIES_FILE) == list(real_fine_tune.canaries)  # the run kept what it planted
    record = json.loads((run / "data.json").read_text())["canaries"]
    assert (record["count"], record["repeats"]) == (2, real_fine_tune.canary_repeats)
    assert "2 canaries planted" in real_fine_tune.output
    env = {**os.environ, **CPU_JOB_ENV}

    t0 = time.monotonic()
    before = medtui("probe", str(real_model), "--canaries", str(canaries), "--template", "chat", "--json", env=env)
    assert before.returncode == 0, before.stderr
    untrained = json.loads(before.stdout)["canaries"]
    assert untrained["count"] == 2 and untrained["reproduced"] == 0, untrained
    t1 = time.monotonic()

    after = medtui("probe", str(run), "--json", env=env)
    assert after.returncode == 1, after.stderr  # something came back: the probe says so in its exit status
    trained = json.loads(after.stdout)["canaries"]
    assert trained["count"] == 2 and trained["reproduced"] == 2, trained
    assert all(r["reproduced_chars"] == r["probed_chars"] for r in trained["results"])
    assert json.loads((run / PROBE_FILE).read_text())["canaries"]["reproduced"] == 2
    print(f"\nbenchmark: probe of the untrained real model {t1 - t0:.0f} s; training on {real_fine_tune.rows} rows + "
          f"2 canaries x {real_fine_tune.canary_repeats} {real_fine_tune.train_s:.0f} s; probe of the trained "
          f"run {time.monotonic() - t1:.0f} s; longest span before {untrained['longest_span']}, after "
          f"{trained['longest_span']} characters")
