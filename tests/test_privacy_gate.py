"""The identifier gate before training, the data mapping checked before a job starts, devices and
pipes refused, and the audit trail of a run (spec.json, data.json, `runs show`, the Runs screen).

Real files, the real CLI in a subprocess, real detached jobs on the demo model, the real TUI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TRAIN_JOBS, wait_until
from privacy_data import VALUES, write_jsonl

from medtui_engine.runs.jobs import kill_job, wait_job

ROOT = Path(__file__).resolve().parents[1]
# real jobs: one training at a time under pytest-xdist (the GPU guard refuses a second job on a GPU)
pytestmark = TRAIN_JOBS
QUICK = ["--model", "demo", "--backend", "hf", "--max-steps", "1", "--max-seq-length", "64", "--micro-batch", "1",
         "--grad-accum", "1", "--lora-r", "4", "--lora-alpha", "8", "--heartbeat", "1"]
ALL_KINDS = "id_number,phone_number,email,record_number,name_field"


def medtui(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def runs_of(workspace: Path) -> list[Path]:
    runs = workspace / "runs"
    return sorted(d for d in runs.iterdir() if d.is_dir()) if runs.is_dir() else []


def assert_no_values(*texts: str) -> None:
    for text in texts:
        for value in VALUES:
            assert value not in text, value


def test_gate_refuses_names_the_counts_and_starts_nothing(tmp_path: Path, workspace: Path, demo_model: Path):
    data = write_jsonl(tmp_path / "cases.jsonl")
    proc = medtui("train", "--data", str(data), *QUICK, "--detach")
    assert proc.returncode == 2
    err = proc.stderr
    assert "possible patient identifiers" in err
    assert ("1 resident ID number, 1 mobile number, 1 e-mail address, 1 record number, 1 patient name, in 4 rows"
            in err)
    assert "medtui redact" in err and f"--allow-identifiers {ALL_KINDS}" in err
    assert_no_values(proc.stdout, err)
    assert runs_of(workspace) == []

    # acknowledging some kinds is not enough: the message names the ones left
    proc = medtui("train", "--data", str(data), *QUICK, "--detach", "--allow-identifiers", "id_number,email")
    assert proc.returncode == 2
    assert "--allow-identifiers phone_number,record_number,name_field" in proc.stderr
    assert runs_of(workspace) == []

    # an unknown kind is refused as a setting
    proc = medtui("train", "--data", str(data), *QUICK, "--detach", "--allow-identifiers", "everything")
    assert proc.returncode == 2
    assert "Allowed identifiers (--allow-identifiers) must be identifier kinds" in proc.stderr
    assert runs_of(workspace) == []

    # the rows a run uses are what the gate looks at: the first row holds none
    proc = medtui("train", "--data", str(data), *QUICK, "--detach", "--limit-rows", "1")
    assert proc.returncode == 0, proc.stderr
    (run,) = runs_of(workspace)
    audit = json.loads((run / "spec.json").read_text())["data_audit"]
    assert audit["decision"] == "clean" and audit["identifiers"] == {} and audit["rows_used"] == 1
    kill_job(run)
    wait_job(run, timeout=60)


def test_acknowledged_run_records_the_decision_and_counts_never_a_value(tmp_path: Path, workspace: Path,
                                                                       demo_model: Path):
    data = write_jsonl(tmp_path / "cases.jsonl")
    proc = medtui("train", "--data", str(data), *QUICK, "--detach", "--allow-identifiers", ALL_KINDS)
    assert proc.returncode == 0, proc.stderr
    (run,) = runs_of(workspace)
    try:
        spec_text = (run / "spec.json").read_text()
        spec = json.loads(spec_text)
        assert spec["allow_identifiers"] == ALL_KINDS
        audit = spec["data_audit"]
        assert audit["decision"] == "acknowledged"
        assert audit["acknowledged"] == ALL_KINDS.split(",")
        assert audit["identifiers"] == {"id_number": 1, "phone_number": 1, "email": 1, "record_number": 1,
                                        "name_field": 1}
        assert audit["rows_with_identifiers"] == 4
        assert audit["rows_total"] == audit["rows_usable"] == audit["rows_used"] == 8 and audit["rows_skipped"] == 0
        import hashlib

        assert audit["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
        # the job checks again on what it trains, and records it in data.json
        record_file = run / "data.json"
        deadline_ok = wait_job(run, timeout=300)
        assert deadline_ok
        record_text = record_file.read_text()
        record = json.loads(record_text)
        assert record["gate"] == "acknowledged" and record["identifiers"] == audit["identifiers"]
        assert_no_values(spec_text, record_text)

        show = medtui("runs", "show", run.name)
        assert show.returncode == 0, show.stderr
        assert f"sha256   {audit['sha256']}" in show.stdout
        assert "rows     8 in the file, 8 usable, 0 skipped, 8 used by this run" in show.stdout
        assert ("privacy  possible identifiers trained on, acknowledged by the user: 1 resident ID number, "
                "1 mobile number, 1 e-mail address, 1 record number, 1 patient name") in show.stdout
        assert_no_values(show.stdout)
        shown = json.loads(medtui("runs", "show", run.name, "--json").stdout)
        assert shown["spec"]["data_audit"]["decision"] == "acknowledged"
        assert shown["data_record"]["gate"] == "acknowledged"
    finally:
        kill_job(run)


def test_a_redacted_file_passes_the_gate_and_the_run_says_so(tmp_path: Path, workspace: Path, demo_model: Path):
    data = write_jsonl(tmp_path / "cases.jsonl")
    clean = tmp_path / "redacted.jsonl"
    assert medtui("redact", str(data), "--out", str(clean)).returncode == 0
    proc = medtui("train", "--data", str(clean), *QUICK)  # follows the job to its end
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = runs_of(workspace)
    assert json.loads((run / "spec.json").read_text())["data_audit"]["decision"] == "redacted"
    assert json.loads((run / "data.json").read_text())["gate"] == "redacted"
    show = medtui("runs", "show", run.name)
    assert "privacy  redacted: no possible identifiers; placeholders 1 [身份证号], 1 [手机号]" in show.stdout


def test_the_mapping_is_checked_before_a_job_starts(tmp_path: Path, workspace: Path, demo_model: Path):
    data = tmp_path / "no_response.jsonl"
    data.write_text(json.dumps({"Question": "女性，30岁，咳嗽3天。", "Complex_CoT": "考虑感染。"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    proc = medtui("train", "--data", str(data), *QUICK, "--detach")
    assert proc.returncode == 2
    assert "no column 'Response' for Response" in proc.stderr and "Question, Complex_CoT" in proc.stderr
    assert runs_of(workspace) == []
    proc = medtui("train", "--data", str(data), *QUICK, "--detach", "--field-response", "Answer")
    assert proc.returncode == 2 and "no column 'Answer' for Response" in proc.stderr
    assert runs_of(workspace) == []


@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo"])
def test_devices_and_pipes_are_refused_naming_the_file(tmp_path: Path, workspace: Path, kind: str):
    path = tmp_path / "cases.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
        what = "named pipe"
    else:
        path.symlink_to("/dev/zero")
        what = "character device"
    # without the refusal both would read forever (the timeout turns that into a failure, not a skip)
    proc = medtui("validate", str(path), "--no-measure", timeout=60)
    assert proc.returncode == 2
    assert str(path) in proc.stderr and what in proc.stderr and "not a regular file" in proc.stderr
    if kind != "fifo":
        assert "a link to /dev/zero" in proc.stderr
    proc = medtui("train", "--data", str(path), "--model", "demo", "--detach", timeout=60)
    assert proc.returncode == 2
    assert str(path) in proc.stderr and what in proc.stderr
    assert runs_of(workspace) == []


@pytest.mark.slow
async def test_tui_start_asks_names_the_counts_and_records_the_acknowledgement(tmp_path: Path, workspace: Path,
                                                                               demo_model: Path):
    from medtui.app import MedtuiApp
    from medtui.screens.runs import RunsScreen
    from medtui.screens.train import TrainScreen
    from medtui.widgets.confirm import Confirm

    data = write_jsonl(tmp_path / "cases.jsonl")
    app = MedtuiApp(workspace=str(workspace), start_mode="train")
    run = None
    try:
        async with app.run_test(size=(100, 32)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen) and app.screen.ready, "the form", 60)
            screen = app.screen
            for name, value in {"data": str(data), "max_seq_length": "64", "max_steps": "1", "lora_r": "4",
                                "backend": "hf"}.items():
                screen.query_one(f"#f-{name}").value = value
            await pilot.pause(0.2)
            assert not screen.query_one("#train-start").disabled, screen.problems
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: isinstance(app.screen, Confirm), "the identifier question", 60)
            body = " ".join(str(w.render()) for w in app.screen.query("Static"))
            assert "1 resident ID number, 1 mobile number, 1 e-mail address, 1 record number, 1 patient name" in body
            assert_no_values(body)
            await pilot.press("n")  # no: nothing starts
            await wait_until(pilot, lambda: app.screen is screen, "the form again", 10)
            assert runs_of(workspace) == []

            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: isinstance(app.screen, Confirm), "the identifier question again", 60)
            await pilot.press("y")
            await wait_until(pilot, lambda: bool(runs_of(workspace)) and (runs_of(workspace)[0] / "spec.json").exists(),
                             "the run to start", 60)
            run = runs_of(workspace)[0]
            spec = json.loads((run / "spec.json").read_text())
            assert spec["allow_identifiers"] == ALL_KINDS
            assert spec["data_audit"]["decision"] == "acknowledged"

            app.goto("runs")
            await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.rows, "the runs", 30)
            audit = app.screen.query_one("#runs-audit")
            await wait_until(pilot, lambda: "acknowledged by the user" in str(audit.render()), "the audit rows", 10)
            text = str(audit.render())
            assert spec["data_audit"]["sha256"] in text and "8 used by this run" in text
    finally:
        if run is not None:
            kill_job(run)
            wait_job(run, timeout=60)


def test_the_job_checks_again_what_it_trains(tmp_path: Path, workspace: Path, demo_model: Path):
    """The file is swapped for one with identifiers right after the run was started on a clean one:
    the job refuses to train on it (it checks the rows it loads), and says why."""
    from medtui_engine.runs.events import read_events

    data = tmp_path / "cases.jsonl"
    clean = tmp_path / "clean.jsonl"
    write_jsonl(data)
    assert medtui("redact", str(data), "--out", str(clean)).returncode == 0
    swapped = data.read_bytes()
    data.write_bytes(clean.read_bytes())
    proc = medtui("train", "--data", str(data), *QUICK, "--detach")
    assert proc.returncode == 0, proc.stderr
    data.write_bytes(swapped)  # the job is still importing its libraries: it has not read the file yet
    (run,) = runs_of(workspace)
    assert wait_job(run, timeout=300)
    failed = [e for e in read_events(run / "events.jsonl") if e["type"] == "failed"]
    assert failed and "of kinds not acknowledged for this run" in failed[0]["error"]
    assert json.loads((run / "spec.json").read_text())["data_audit"]["decision"] == "redacted"
    assert not (run / "data.json").exists()
    assert_no_values(failed[0]["error"])
