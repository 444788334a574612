"""The evaluation job: a real detached process on the demo model, stopped after some answers and resumed
through the CLI; the answers files show that no (side, case, sample) was answered twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from helpers import TRAIN_JOBS, wait_for

from medtui_engine.jobs.follow import JobFollower
from medtui_engine.jobs.status import JobStatus
from medtui_engine.runs.events import read_events, validate_event
from medtui_engine.runs.jobs import wait_job

ROOT = Path(__file__).resolve().parent.parent
CASES, SAMPLES = 3, 2


def medtui(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui", *args], capture_output=True, text=True, cwd=ROOT,
                          env=os.environ.copy(), timeout=600, stdin=subprocess.DEVNULL)


def answered(job_dir: Path) -> Counter:
    """(side, case id, sample) -> how many lines of the job's answers files hold it."""
    seen: Counter = Counter()
    for path in job_dir.glob("answers-*.jsonl"):
        side = path.stem.removeprefix("answers-")
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            seen[(side, row["id"], row["sample"])] += 1
    return seen


@TRAIN_JOBS
def test_stop_and_resume_without_redone_cases(demo_model, workspace):
    started = medtui("eval", "--model", "demo", "--base", "demo", "--limit", str(CASES), "--samples", str(SAMPLES),
                     "--max-new-tokens", "6", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    job_dir = Path(json.loads(started.stdout)["job_dir"])
    assert job_dir.parent == workspace.resolve() / "jobs"
    spec = json.loads((job_dir / "spec.json").read_text(encoding="utf-8"))
    assert spec["kind"] == "eval" and len(spec["cases"]) == CASES and sorted(spec["sources"]) == ["base", "tuned"]

    follower = JobFollower(job_dir, "eval")

    def first_answer() -> bool:
        follower.poll()
        assert not follower.done, f"the job ended before it was stopped: {follower.status}"
        return follower.state.done >= 1

    wait_for(first_answer, "the first answer", timeout=300)
    stop = medtui("eval", "stop", job_dir.name)
    assert stop.returncode == 0, stop.stderr
    assert wait_job(job_dir, timeout=300)
    follower.poll()
    assert follower.status is JobStatus.STOPPED, follower.status
    before = answered(job_dir)
    total = 2 * CASES * SAMPLES
    assert 0 < sum(before.values()) < total, before
    assert max(before.values()) == 1
    assert follower.state.done == sum(before.values())
    report_dir = Path(spec["report_dir"])
    assert not report_dir.exists(), "a stopped job must not leave anything that looks like a report"

    resumed = medtui("eval", "resume", job_dir.name, "--json")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert Path(result["report_dir"]) == report_dir

    after = answered(job_dir)
    assert max(after.values()) == 1, [k for k, n in after.items() if n > 1]
    expected = {(side, c["id"], j) for side in ("base", "tuned") for c in spec["cases"] for j in range(SAMPLES)}
    assert set(after) == expected
    events = read_events(job_dir / "events.jsonl")
    assert all(validate_event(e) == [] for e in events)
    answers = [e for e in events if e["type"] == "eval_answer"]
    assert len(answers) == total  # every answer given once, over both runs of the job
    begins = [e for e in events if e["type"] == "eval_begin"]
    assert [b["done"] for b in begins] == [0, sum(before.values())]
    assert [e["type"] for e in events if e["type"] in ("stopped", "finished")] == ["stopped", "finished"]

    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert report["n_cases"] == CASES and report["samples_per_case"] == SAMPLES and report["job"] == job_dir.name
    for name in ("base", "tuned"):
        cases = report["models"][name]["cases"]
        assert [c["id"] for c in cases] == [c["id"] for c in spec["cases"]]
        assert all(c["n_samples"] == SAMPLES for c in cases)
    assert report["paired"]["n_pairs"] == CASES
    assert sorted(p.name for p in report_dir.iterdir()) == ["answers-base.jsonl", "answers-tuned.jsonl",
                                                             "report.json", "report.md"]
    # a finished job is not resumed again
    again = medtui("eval", "resume", job_dir.name)
    assert again.returncode == 2 and "has finished" in again.stderr


def test_eval_state_folds_a_stopped_and_resumed_job():
    from medtui_engine.evaluate.events import EvalState, apply_eval_event
    from medtui_engine.jobs.describe import describe_eval_status

    def ev(type_, **fields):
        return {"v": 1, "seq": 0, "t": 1.0, "type": type_, **fields}

    state = EvalState()
    stream = [
        ev("eval_begin", pid=1, cases=2, samples=1, sides=["base", "tuned"], total=4, done=0,
           done_by_side={"base": 0, "tuned": 0}, labels={"base": "b", "tuned": "t"}),
        ev("eval_model", side="base", phase="loading", label="b", seconds=None),
        ev("eval_model", side="base", phase="loaded", label="b", seconds=1.0),
        ev("eval_answer", side="base", id="c1", sample=0, index=0, seconds=0.5),
        ev("stopped", step=1, checkpoint=None, reason="signal SIGTERM"),
    ]
    for e in stream:
        apply_eval_event(state, e)
    assert (state.status, state.done, state.done_by_side, state.stop_reason) == (
        JobStatus.STOPPED, 1, {"base": 1, "tuned": 0}, "signal SIGTERM")
    [row] = describe_eval_status(state.status, state, job_dir="/w/jobs/eval-1")
    assert row.value == "stopped (signal SIGTERM) after 1/4 answers" and "`medtui eval resume eval-1`" in row.hint
    for e in [ev("eval_begin", pid=2, cases=2, samples=1, sides=["base", "tuned"], total=4, done=1,
                 done_by_side={"base": 1, "tuned": 0}),
              *(ev("eval_answer", side=s, id=c, sample=0, index=i, seconds=0.5)
                for s, c, i in (("base", "c2", 1), ("tuned", "c1", 0), ("tuned", "c2", 1))),
              ev("eval_written", report_dir="/w/reports/eval-1"),
              ev("finished", step=4, adapter="", runtime_s=3.0, final_loss=None, report_dir="/w/reports/eval-1")]:
        apply_eval_event(state, e)
    assert (state.status, state.done, state.resumed, state.skipped, state.report_dir) == (
        JobStatus.FINISHED, 4, 1, 1, "/w/reports/eval-1")
    assert state.done_by_side == {"base": 2, "tuned": 2} and state.stop_reason is None


def test_a_torn_last_answer_line_is_dropped(tmp_path):
    from medtui_engine.evaluate.job import AnswerLog, read_answer_rows

    path = tmp_path / "answers-base.jsonl"
    path.write_bytes(b'{"id": "c1", "sample": 0}\n{"id": "c2", "sam')
    assert [r["id"] for r in read_answer_rows(path)] == ["c1"]
    log = AnswerLog(path)
    log.append({"id": "c2", "sample": 0})
    log.close()
    assert [r["id"] for r in read_answer_rows(path)] == ["c1", "c2"]
    assert path.read_bytes().count(b"\n") == 2


@TRAIN_JOBS
def test_batched_job_answers_as_one_at_a_time_and_reports_its_pace(demo_model, workspace):
    """The job's batched path (``--batch``): the same greedy answers as one case at a time, the batch on
    every answer event, and the pace in the report (the equality on varied answers: test_infer_batch)."""
    answers = {}
    for batch in (1, 3):
        p = medtui("eval", "--model", "demo", "--base", "none", "--limit", "3", "--max-new-tokens", "5",
                   "--temperature", "0", "--batch", str(batch), "--json")
        assert p.returncode == 0, p.stderr
        report_dir = Path(json.loads(p.stdout)["report_dir"])
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
        job_dir = workspace.resolve() / "jobs" / report["job"]
        assert {e["batch"] for e in read_events(job_dir / "events.jsonl") if e["type"] == "eval_answer"} == {batch}
        pace = report["pace"]["tuned"]
        assert pace["answers"] == 3 and pace["batch"] == batch and pace["per_minute"] > 0
        assert "answers a minute" in (report_dir / "report.md").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in (job_dir / "answers-tuned.jsonl").read_text("utf-8").splitlines()]
        answers[batch] = sorted((r["id"], r["answer"]) for r in rows)
    assert answers[1] == answers[3]
    bad = medtui("eval", "--model", "demo", "--base", "none", "--limit", "1", "--batch", "0")
    assert bad.returncode == 2 and "--batch must be at least 1" in bad.stderr and "Traceback" not in bad.stderr
