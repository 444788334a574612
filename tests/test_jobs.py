"""The job service: the status Enum, the one follower (training and merge jobs, real files and real
processes), the rows that describe jobs, the one duration format and the one fit estimate."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtui_engine.fmt import fmt_duration
from medtui_engine.gpu import GpuSnapshot, NvmlInfo
from medtui_engine.jobs.describe import (
    CLI_STEPS,
    NextSteps,
    describe_event,
    describe_merge_plan,
    describe_merge_result,
    describe_run_status,
    event_line,
)
from medtui_engine.jobs.follow import JobFollower
from medtui_engine.jobs.kinds import KINDS, JobKind, get_kind, kind_of, register
from medtui_engine.jobs.status import JobStatus, resolve_job_status
from medtui_engine.merge.events import MergeState
from medtui_engine.merge.plan import MergePlan
from medtui_engine.rows import Row, Severity, format_rows, sentence, worst
from medtui_engine.runs.events import EventWriter
from medtui_engine.runs.jobs import job_alive, kill_job, launch_job, wait_job
from medtui_engine.runs.state import RunState

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "runs"

# A tiny training-shaped job: writes its first events, waits for GO in its directory, then either
# finishes (and exits at once) or hangs until it is killed.
TINY_JOB = '''
import os, sys, time
from medtui_engine.runs.events import EventWriter
from medtui_engine.runs.jobs import proc_start_time

job_dir, mode = sys.argv[1], sys.argv[2]
LOG = dict(epoch=0.5, loss=1.5, lr=1e-4, grad_norm=0.3, tokens_per_s=10.0, elapsed_s=1.0, eta_s=1.0)
with EventWriter(os.path.join(job_dir, "events.jsonl")) as w:
    w.emit("job_start", pid=os.getpid(), start_time=proc_start_time(os.getpid()), backend="hf",
           resumed_from=None, versions={})
    w.emit("train_begin", total_steps=2, start_step=0, epochs=1.0, steps_per_epoch=2, num_examples=2,
           train_tokens=20, micro_batch=1, grad_accum=1, max_seq_length=8, model="m", model_label="tiny", device="cpu")
    w.emit("log", step=1, **LOG)
    while not os.path.exists(os.path.join(job_dir, "GO")):
        time.sleep(0.02)
    if mode == "finish":
        w.emit("log", step=2, **LOG)
        w.emit("finished", step=2, adapter="adapter", runtime_s=1.0, final_loss=1.5)
        os._exit(0)  # no grace after the terminal event: the follower must still see it
    time.sleep(600)
'''


@pytest.fixture
def job_env(tmp_path: Path) -> dict:
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "medtui_test_tiny_job.py").write_text(TINY_JOB)
    return {**os.environ, "PYTHONPATH": str(mods)}


def start_tiny(job_dir: Path, mode: str, env: dict) -> None:
    launch_job("medtui_test_tiny_job", job_dir, [mode], env=env)


def poll_until(follower: JobFollower, pred, what: str, limit: float = 60.0) -> None:
    """Poll the follower until ``pred()`` holds (a guard against a hang, not a timing assertion)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        follower.poll()
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; status {follower.status}")


def dead_job_json(job_dir: Path) -> None:
    """A job.json naming a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (job_dir / "job.json").write_text(json.dumps({"pid": p.pid, "start_time": 1, "module": "x"}))


LOG = dict(epoch=0.1, loss=2.0, lr=1e-4, grad_norm=1.0, tokens_per_s=1234.0, elapsed_s=1.0, eta_s=75.0)


# ------------------------------------------------------------------------------------- the Enum

def test_job_status_is_a_string_with_terminal_active_and_ended():
    assert JobStatus.FINISHED == "finished" and f"{JobStatus.CRASHED}" == "crashed"
    assert json.dumps({"s": JobStatus.STALLED}) == '{"s": "stalled"}'
    assert {s for s in JobStatus if s.terminal} == {"finished", "stopped", "failed"}
    assert {s for s in JobStatus if s.active} == {"starting", "running", "stalled"}
    assert {s for s in JobStatus if s.ended} == {"finished", "stopped", "failed", "crashed"}
    assert not JobStatus.NEW.active and not JobStatus.NEW.ended
    assert isinstance(RunState().status, JobStatus) and isinstance(MergeState().status, JobStatus)


def test_resolve_job_status_rules():
    r = resolve_job_status
    assert r("finished", alive=False, started=True, last_event_t=1.0) == JobStatus.FINISHED
    assert r("running", alive=False, started=True, last_event_t=1.0) == JobStatus.CRASHED
    assert r("new", alive=False, started=False, last_event_t=None) == JobStatus.NEW
    assert r("new", alive=True, started=True, last_event_t=None) == JobStatus.STARTING
    assert r("running", alive=True, started=True, last_event_t=100.0, now=150.0) == JobStatus.RUNNING
    assert r("running", alive=True, started=True, last_event_t=100.0, now=221.0) == JobStatus.STALLED
    assert r("running", alive=True, started=True, last_event_t=100.0, now=9999.0, stall_after=None) == JobStatus.RUNNING
    # an earlier job's terminal event: the new job is starting, or it died
    assert r("stopped", alive=True, started=True, last_event_t=1.0, own_terminal=False, now=2.0) == JobStatus.STARTING
    assert r("stopped", alive=False, started=True, last_event_t=1.0, own_terminal=False) == JobStatus.CRASHED


# ------------------------------------------------------------------------------------- the follower

def test_follower_on_a_training_fixture(tmp_path: Path):
    run = tmp_path / "20251124-160000-qwen7b"
    shutil.copytree(FIXTURE_RUNS / run.name, run)
    f = JobFollower(run)
    events = f.poll()
    assert len(events) == 332 and f.folded == 332 and f.last_seq == 331
    assert f.status is JobStatus.FINISHED and f.done and not f.alive
    assert f.state.step == 240 and f.state.checkpoints == [80, 160, 240] and f.state.run_id == run.name
    assert f.poll() == [] and f.status is JobStatus.FINISHED
    # the blocking iterator, on what is there: every event once, the state right after each
    g = JobFollower(run)
    steps = [g.state.step for ev in g.follow(live=False) if ev["type"] == "log"]
    assert steps == sorted(steps) and steps[-1] == 240 and g.status is JobStatus.FINISHED


def test_follower_torn_lines_and_a_replaced_file(tmp_path: Path):
    job = tmp_path / "run"
    job.mkdir()
    path = job / "events.jsonl"
    with EventWriter(path) as w:
        w.emit("job_start", pid=1, start_time=None, backend="hf", resumed_from=None, versions={})
        w.emit("log", step=1, **LOG)
    f = JobFollower(job)
    assert len(f.poll()) == 2 and f.state.step == 1
    line = json.dumps({"v": 1, "seq": 2, "t": time.time(), "type": "log", "step": 2, **LOG})
    with open(path, "a") as fh:
        fh.write(line[:20])  # a write in progress
    assert f.poll() == [] and f.state.step == 1
    with open(path, "a") as fh:
        fh.write(line[20:] + "\n")
    assert [e["step"] for e in f.poll()] == [2] and not f.rewound
    # the file is replaced by a shorter one: the state starts over
    tmp = job / "new.jsonl"
    with EventWriter(tmp) as w:
        w.emit("job_start", pid=1, start_time=None, backend="hf", resumed_from=None, versions={})
    os.replace(tmp, path)
    assert len(f.poll()) == 1 and f.rewound and f.events == 1 and f.state.step == 0 and f.last_seq == 0


def test_follower_rewinds_on_a_resumed_train_begin(tmp_path: Path):
    job = tmp_path / "run"
    job.mkdir()
    begin = dict(total_steps=9, epochs=1.0, steps_per_epoch=9, num_examples=9, train_tokens=90, micro_batch=1,
                 grad_accum=1, max_seq_length=8, model="m", model_label="m", device="cpu")
    with EventWriter(job / "events.jsonl") as w:
        w.emit("train_begin", start_step=0, **begin)
        for s in (1, 2, 3):
            w.emit("log", step=s, **LOG)
    f = JobFollower(job)
    f.poll()
    assert f.rewound  # the first train_begin too: a view builds its curves from scratch
    f.poll()
    assert not f.rewound
    with EventWriter(job / "events.jsonl") as w:
        w.emit("job_start", pid=1, start_time=None, backend="hf", resumed_from=2, versions={})
        w.emit("train_begin", start_step=2, **begin)
    f.poll()
    assert f.rewound and f.state.loss_steps == [1, 2] and f.state.resumed == 1


def test_follower_sees_a_real_job_finish_and_never_calls_it_crashed(tmp_path: Path, job_env: dict):
    job = tmp_path / "job"
    start_tiny(job, "finish", job_env)
    f = JobFollower(job)
    poll_until(f, lambda: f.state.step == 1, "the first log")
    assert f.alive and f.status is JobStatus.RUNNING and not f.done
    (job / "GO").touch()
    poll_until(f, lambda: f.done, "the job to end")
    assert f.status is JobStatus.FINISHED and f.state.step == 2


def test_follower_detects_a_killed_job_as_crashed(tmp_path: Path, job_env: dict):
    job = tmp_path / "job"
    start_tiny(job, "hang", job_env)
    f = JobFollower(job)
    poll_until(f, lambda: f.state.step == 1, "the first log")
    assert f.status is JobStatus.RUNNING
    assert kill_job(job, signal.SIGKILL)
    assert wait_job(job, timeout=30)
    with open(job / "events.jsonl", "a") as fh:
        fh.write('{"v":1,"seq":3,"t":1.0,"type":"lo')  # died mid-write
    f.poll()
    assert f.status is JobStatus.CRASHED and f.done and f.state.step == 1
    rows = describe_run_status(f.status, f.state, run_dir=job)
    assert rows[0].severity is Severity.PROBLEM and "died without a word" in rows[0].value
    assert f"medtui runs resume {job.name}" in rows[0].hint and f"{job}/stdout.log" in rows[0].hint


def test_follower_reads_a_dead_jobs_backlog_before_calling_it_crashed(tmp_path: Path):
    job = tmp_path / "job"
    job.mkdir()
    dead_job_json(job)
    with EventWriter(job / "events.jsonl") as w:
        w.emit("job_start", pid=1, start_time=None, backend="hf", resumed_from=None, versions={})
        for s in range(1, 200):
            w.emit("log", step=s, **LOG)
        w.emit("finished", step=199, adapter="a", runtime_s=9.0, final_loss=1.0)
    f = JobFollower(job, max_bytes=2048)
    f.poll(whole=False)
    assert not f.done and f.status is JobStatus.RUNNING  # a slice of the backlog: no verdict yet
    while f.more_pending(threshold=0):
        f.poll(whole=False)
    f.poll(whole=False)
    assert f.status is JobStatus.FINISHED and f.state.step == 199


def test_follow_with_past_seq_follows_the_resumed_job_to_its_end(tmp_path: Path, job_env: dict):
    job = tmp_path / "job"
    job.mkdir()
    with EventWriter(job / "events.jsonl") as w:
        w.emit("job_start", pid=1, start_time=None, backend="hf", resumed_from=None, versions={})
        w.emit("log", step=1, **LOG)
        stopped = w.emit("stopped", step=1, checkpoint="c", reason="stop requested")
    old = JobFollower(job)
    assert [e["type"] for e in old.follow(timeout=30)][-1] == "stopped" and old.status is JobStatus.STOPPED

    start_tiny(job, "finish", job_env)
    f = JobFollower(job, past_seq=stopped["seq"])
    seen = []
    for ev in f.follow(poll_s=0.02, timeout=120):
        seen.append(ev["type"])
        if ev["type"] == "log" and ev["step"] == 1 and ev["seq"] > stopped["seq"]:
            (job / "GO").touch()
    assert seen[2] == "stopped" and seen[-1] == "finished"
    assert f.status is JobStatus.FINISHED and f.state.resumed == 1


def test_follow_gives_up_at_its_timeout_on_a_live_job(tmp_path: Path, job_env: dict):
    job = tmp_path / "job"
    start_tiny(job, "hang", job_env)
    try:
        f = JobFollower(job)
        t0 = time.monotonic()
        list(f.follow(poll_s=0.05, timeout=1.0))
        assert time.monotonic() - t0 < 30
        assert f.alive and not f.done and f.status in (JobStatus.STARTING, JobStatus.RUNNING)
    finally:
        kill_job(job)
        wait_job(job, timeout=30)


def test_follower_on_a_merge_event_stream(tmp_path: Path):
    job = tmp_path / "merge-1"
    job.mkdir()
    (job / "spec.json").write_text(json.dumps({"kind": "merge", "plan": {}, "options": {}}))
    assert kind_of(job) == "merge" and kind_of(tmp_path) == "train"
    with EventWriter(job / "events.jsonl") as w:
        w.emit("merge_begin", pid=1, base="/b", adapter="/a", out="/o", dtype="bf16", method="stream",
               tensors_total=None, bytes_total=100, adapter_only=False)
        w.emit("merge_progress", phase="merge", done=3, total=6, bytes_written=2**30)
        w.emit("merge_progress", phase="merge", done=6, total=6, bytes_written=2**31)
        w.emit("merge_written", seconds=1.25, bytes=2**31, shards=1, device="cpu")
        record = dict(max_abs_logit_diff=0.01, top1_agreement=1.0, failed_checks=[], adapter_effect_max_abs_logit=0.5,
                      positions=120, top1_agreement_decisive=1.0, decisive_positions=80)
        w.emit("merge_verified", max_abs_logit_diff=0.01, top1_agreement=1.0, failed_checks=[], record=record)
        w.emit("finished", step=0, adapter="/a", runtime_s=3.0, final_loss=None, out="/o",
               serve_command="vllm serve /o --dtype bfloat16")
    f = JobFollower(job, kind_of(job))
    lines = [event_line(row) for ev in f.follow(live=False) if (row := describe_event(ev, f.state))]
    assert f.status is JobStatus.FINISHED and f.state.out == "/o"
    assert lines[:4] == [
        "merging /a into /b -> /o (bf16, stream)",
        "  merge  3/6 tensors, 1.00 GiB written",
        "  merge  6/6 tensors, 2.00 GiB written",
        "  written  in 1.2 s (1 shard(s), on cpu); verifying",
    ]
    assert "top-1 agreement 100.00% over 120 positions" in lines[4] and "FAILED" not in lines[4]
    rows = describe_merge_result(f.state, None, status=f.status, job_dir=job)
    text = format_rows(rows)
    assert "vllm serve /o --dtype bfloat16" in text and "/o/medtui.json" in text
    assert worst(rows) in (Severity.OK, Severity.INFO)


def test_a_dead_merge_job_is_crashed_and_says_so(tmp_path: Path):
    job = tmp_path / "merge-2"
    job.mkdir()
    dead_job_json(job)
    with EventWriter(job / "events.jsonl") as w:
        w.emit("merge_begin", pid=1, base="/b", adapter="/a", out="/o", dtype="bf16", method="stream",
               tensors_total=None, bytes_total=100)
    f = JobFollower(job, "merge")
    f.poll()
    assert f.status is JobStatus.CRASHED and f.done
    rows = describe_merge_result(f.state, None, status=f.status, job_dir=job)
    assert rows[0].severity is Severity.PROBLEM and "died without finishing" in rows[0].value
    assert str(job / "stdout.log") in rows[0].value


def test_kind_registry_takes_a_new_kind_in_one_line(tmp_path: Path):
    assert {"train", "merge"} <= set(KINDS)
    with pytest.raises(ValueError, match="unknown job kind"):
        get_kind("nope")
    kind = register(JobKind("count", lambda _id: {"status": "new", "n": 0},
                            lambda s, ev: s.update(n=s["n"] + 1, status="running") or s))
    try:
        job = tmp_path / "count-1"
        job.mkdir()
        with EventWriter(job / "events.jsonl") as w:
            w.emit("notice", message="x", level="info")
        f = JobFollower(job, "count")
        f.poll()
        assert f.state["n"] == 1 and f.kind is kind and f.status is JobStatus.CRASHED  # no process: it died
    finally:
        del KINDS["count"]


# ------------------------------------------------------------------------------------- rows

def test_rows_print_as_plain_text():
    rows = [Row("Base", "b"), Row("Output", "o", Severity.WARNING, "press f")]
    assert format_rows(rows) == "Base    b\nOutput  o\n        -> press f"
    assert sentence(rows[1]) == "o; press f" and worst(rows) is Severity.WARNING and worst([]) is Severity.OK
    assert rows[1].as_dict() == {"label": "Output", "value": "o", "severity": "warning", "hint": "press f"}


def test_describe_event_lines_for_training():
    st = RunState(total_steps=240)
    assert describe_event({"type": "log", "step": 12, **LOG}, st).value == (
        "step 12/240  epoch 0.10  loss 2.0000  lr 1.00e-04  grad 1.000  1,234 tok/s  ETA 0:01:15")
    assert describe_event({"type": "failed", "step": 3, "error": "boom"}, st).severity is Severity.PROBLEM
    assert describe_event({"type": "finished", "step": 9, "runtime_s": 3725, "adapter": "a"}, st).value == (
        "finished at step 9 in 1:02:05; adapter: a")
    assert describe_event({"type": "heartbeat", "gpus": []}, st) is None


def test_describe_run_status_for_each_status():
    st = RunState(run_id="r1", step=7, error="CUDA out of memory", stop_reason="stop requested", adapter="r1/adapter",
                  last_event_t=1000.0, notices=["4-bit is not possible on the CPU"])
    tui = NextSteps(resume="r resumes", merge="m merges it", console="o opens the console with it", log="see the log below")

    def one(status, steps=CLI_STEPS, **kw):
        rows = describe_run_status(status, st, run_dir="/w/runs/r1", steps=steps, **kw)
        assert len(rows) == 1
        return rows[0]

    assert sentence(one("stopped", tui)) == "stopped (stop requested) at step 7; r resumes from the checkpoint"
    assert sentence(one("finished", tui)) == "finished: adapter in r1/adapter; m merges it, o opens the console with it"
    failed = one("failed")
    assert failed.severity is Severity.PROBLEM and "CUDA out of memory" in failed.value
    assert "`medtui runs resume r1` resumes" in failed.hint and "/w/runs/r1/stdout.log" in failed.hint
    assert one("crashed").value.startswith("crashed at step 7")
    stalled = one("stalled", now=1000.0 + 185)
    assert stalled.severity is Severity.WARNING and stalled.value.endswith("nothing for 0:03:05")
    assert one("running").value == "note: 4-bit is not possible on the CPU"
    assert describe_run_status("running", st, notice=False) == []


def _plan(**kw) -> MergePlan:
    base = dict(source="r1", adapter_dir="/runs/r1/adapter", base_dir="/m/base", out_dir="/runs/r1/merged",
                dtype="bf16", adapter_only=False, run_dir="/runs/r1", run_id="r1", template="seed",
                base_label="Qwen2.5-7B", base_is_demo=False, base_architecture="Qwen2ForCausalLM",
                base_params=7_615_616_512, lora={"r": 16}, adapter_kind="final adapter", method="stream",
                method_reason="streams tensors shard by shard", disk_needed=15 * 2**30, disk_free=100 * 2**30)
    return MergePlan(**{**base, **kw})


def test_describe_merge_plan_says_what_will_happen():
    text = format_rows(describe_merge_plan(_plan()))
    for part in ("Base model", "/m/base (Qwen2.5-7B, Qwen2ForCausalLM, 7.62 B params)",
                 "/runs/r1/adapter (final adapter, run r1, r=16)", "Output", "/runs/r1/merged", "Dtype",
                 "bf16", "needs about 15.0 GiB, 100.0 GiB free", "stream: streams tensors shard by shard"):
        assert part in text, part
    rows = describe_merge_plan(_plan(out_exists=True, trained_4bit=True))
    assert worst(rows) is Severity.WARNING and "replaces the existing one" in format_rows(rows)
    only = format_rows(describe_merge_plan(_plan(adapter_only=True)))
    assert "adapter only" in only and "Method" not in only


def test_describe_merge_result_figures_and_failures():
    st = MergeState(status=JobStatus.FINISHED, out="/o", serve_command="vllm serve /o")
    v = {"max_abs_logit_diff": 0.02, "top1_agreement": 0.99, "positions": 100, "adapter_effect_max_abs_logit": 1.0,
         "failed_checks": [], "generation_eos_ids": [1, 2], "forced_eos": [{"halted": True}],
         "greedy": {"reached_eos": False, "max_new_tokens": 32}, "natural_eos_required": False,
         "checks": {"loads_without_peft_unsloth": True}}
    text = format_rows(describe_merge_result(st, {"verification": v, "gguf": {"done": False, "why": "no llama.cpp"}}))
    assert "top-1 agreement 99.00%" in text and "forced EOS halts: yes" in text
    assert "no, within 32 (random-weight demo: not required)" in text and "no peft/unsloth: yes" in text
    assert "GGUF" in text and "no llama.cpp" in text and "vllm serve /o" in text
    failed = describe_merge_result(MergeState(status=JobStatus.FAILED, error="disk full"), job_dir="/j")
    assert failed[0].value == "disk full" and "/j/stdout.log" in failed[0].hint


# ------------------------------------------------------------------------------------- fmt and fit

@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (float("nan"), "-"), (-1, "-"), (math.inf, "-"),
                                                (0, "0:00:00"), (59.6, "0:01:00"), (75, "0:01:15"),
                                                (3600, "1:00:00"), (90061, "25:01:01")])
def test_fmt_duration(seconds, text):
    assert fmt_duration(seconds) == text


QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, model_type="qwen2")


def _gpu(free_mib: float) -> NvmlInfo:
    g = GpuSnapshot(0, "NVIDIA H100", "GPU-0", 81559.0, 81559.0 - free_mib, free_mib, 0.0, 30.0, 70.0, 700.0, (9, 0), ())
    return NvmlInfo(True, "580", "13.0", None, (g,))


def test_estimate_fit_one_estimate_for_check_environment_and_train(tmp_path: Path):
    from medtui_engine.fit import estimate_fit, estimate_fit_for_spec
    from medtui_engine.train.spec import TrainSpec
    from medtui_engine.vram import TrainSetting

    model = tmp_path / "qwen-0.5b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN25_05B))
    ok = estimate_fit(model, TrainSetting(4, 2048, 1, 16), _gpu(80000))
    assert ok.line.verdict == "ok" and ok.row.severity is Severity.OK and ok.row.label == "will it fit"
    assert "qwen-0.5b" in ok.line.value and ok.info["free_mib"] == 80000 and ok.parts_gib
    tight = estimate_fit(model, TrainSetting(16, 8192, 8, 64, False, "hf"), _gpu(2000))
    assert tight.line.verdict == "problem" and tight.line.fix and tight.row.hint == tight.line.fix
    missing = estimate_fit(tmp_path / "nowhere", TrainSetting(), _gpu(80000))
    assert missing.line.verdict == "problem" and "does not exist" in missing.line.value
    # the Train form's entry: the same estimate from a spec
    spec = TrainSpec(model=str(model), data="d.jsonl", micro_batch=1, lora_r=16, max_seq_length=2048)
    assert estimate_fit_for_spec(spec, _gpu(80000)).line.value == ok.line.value
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    assert estimate_fit_for_spec(TrainSpec(model=str(broken)), _gpu(80000)).line.verdict == "warning"


def test_estimate_fit_for_the_demo_model_builds_nothing(monkeypatch, tmp_path: Path):
    from medtui_engine.fit import estimate_fit_for_spec
    from medtui_engine.train.spec import TrainSpec

    monkeypatch.setenv("MEDTUI_HOME", str(tmp_path / "empty-home"))
    est = estimate_fit_for_spec(TrainSpec(model="demo"), _gpu(80000))
    assert est.line.verdict == "ok" and "fits anywhere" in est.line.value
    assert not (tmp_path / "empty-home").exists()


# ------------------------------------------------------------------------------------- the CLI on the follower

def medtui(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_runs_tail_and_show_print_the_engines_rows(workspace: Path):
    runs = workspace / "runs"
    for name in ("20251124-160000-qwen7b", "20251124-190000-qwen7b-lr3e-4"):
        shutil.copytree(FIXTURE_RUNS / name, runs / name)
    env = {**os.environ, "MEDTUI_WORKSPACE": str(workspace)}
    r = medtui("runs", "tail", "20251124-160000", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("job 4242 started (backend unsloth)")
    assert "step 240/240" in r.stdout and lines[-1].startswith("finished at step 240 in 0:40:51")
    shown = medtui("runs", "show", "20251124-190000", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "stopped (stop requested) at step 150" in shown.stdout
    assert "`medtui runs resume 20251124-190000-qwen7b-lr3e-4` resumes from the checkpoint" in shown.stdout
    raw = medtui("runs", "tail", "20251124-190000", "--json", env=env)
    assert json.loads(raw.stdout.splitlines()[-1])["type"] == "stopped"


def test_runs_tail_follows_a_live_job_to_its_end(workspace: Path, job_env: dict):
    run = workspace / "runs" / "20261201-000000-tiny"
    run.mkdir(parents=True)
    start_tiny(run, "finish", job_env)
    f = JobFollower(run)
    poll_until(f, lambda: f.state.step == 1, "the first log")
    tail = subprocess.Popen([sys.executable, "-m", "medtui_engine.cli", "runs", "tail", run.name], cwd=ROOT,
                            env={**os.environ, "MEDTUI_WORKSPACE": str(workspace)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = tail.stdout.readline()
    assert first.startswith("job ") and job_alive(run)
    (run / "GO").touch()
    out, err = tail.communicate(timeout=120)
    assert tail.returncode == 0, err
    assert out.splitlines()[-1] == "finished at step 2 in 0:00:01; adapter: adapter"


def test_the_job_service_imports_nothing_heavy():
    code = ("import medtui_engine.jobs.follow, medtui_engine.jobs.describe, medtui_engine.jobs.logtail, "
            "medtui_engine.fit, medtui_engine.merge.launch, medtui_engine.series, medtui.runwatch, medtui.widgets.rows\n"
            "import sys, json; print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True, timeout=120)
    mods = set(json.loads(out.stdout.strip().splitlines()[-1]))
    heavy = [m for m in ("torch", "transformers", "unsloth", "trl", "peft", "datasets") if m in mods]
    assert not heavy


def test_the_tui_styles_rows_by_severity_with_the_engines_words():
    from medtui.widgets.rows import SEVERITY_STYLE, row_text, rows_text, sentence_text

    problem = Row("Failed", "disk full", Severity.PROBLEM, "free space")
    t = row_text(problem, label_width=8)
    assert t.plain == "Failed  disk full  (free space)"
    assert any(str(span.style) == SEVERITY_STYLE[Severity.PROBLEM] for span in t.spans)
    assert rows_text([Row("A", "1"), problem]).plain.splitlines()[0] == "A       1"
    assert sentence_text(problem).plain == sentence(problem) and str(sentence_text(problem).style) == "red"
    assert str(sentence_text(Row("", "stopped", Severity.INFO)).style) == "italic"


ENV_JOB = '''
import json, os, sys
keys = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "UNSLOTH_DISABLE_STATISTICS", "OMP_WAIT_POLICY")
with open(os.path.join(sys.argv[1], "env.json"), "w") as fh:
    json.dump({k: os.environ.get(k) for k in keys}, fh)
'''


@pytest.mark.parametrize("user_policy", [None, "ACTIVE"])
def test_a_job_starts_offline_with_passive_openmp_waits_unless_the_user_set_them(tmp_path: Path, user_policy):
    """A real detached process: the offline variables always; OMP_WAIT_POLICY=PASSIVE only where the
    user's environment says nothing (theirs is kept)."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "medtui_test_env_job.py").write_text(ENV_JOB)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "HF_HUB_OFFLINE")}
    env["PYTHONPATH"] = str(mods)
    if user_policy:
        env["OMP_WAIT_POLICY"] = user_policy
    job_dir = tmp_path / "job"
    launch_job("medtui_test_env_job", job_dir, env=env)
    assert wait_job(job_dir, timeout=60)
    seen = json.loads((job_dir / "env.json").read_text())
    assert seen == {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "UNSLOTH_DISABLE_STATISTICS": "1",
                    "OMP_WAIT_POLICY": user_policy or "PASSIVE"}
