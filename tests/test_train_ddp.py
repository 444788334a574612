"""Several processes for one run (DDP through torchrun), on the CPU with gloo: the demo model, two ranks.

The real job through the real CLI: one job (job.json), torchrun as its child, two ranks. Runs are tiny
(8 cases, 48 tokens, a few steps) so that two CPU cores manage them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TRAIN_JOBS

from medtui_engine.runs.events import read_events, validate_event
from medtui_engine.runs.jobs import job_alive, read_job
from medtui_engine.runs.store import load_run
from medtui_engine.train.ddp import Plan, parse_gpus, plan_for, resolve_gpus, split_batch, torchrun_argv
from medtui_engine.train.spec import SpecError, TrainSpec

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "demo_train.jsonl"
TWO = ["--backend", "hf", "--nproc", "2", "--model", "demo", "--limit-rows", "8", "--max-seq-length", "48",
       "--micro-batch", "1", "--grad-accum", "2", "--lr", "1e-2", "--lora-r", "8", "--lora-alpha", "16",
       "--warmup-ratio", "0", "--heartbeat", "1"]


def medtui(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def wait_for(predicate, what: str, limit: float = 420.0, poll: float = 0.2):
    """Poll until ``predicate()`` is truthy (a guard against a hang, not a timing assertion)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"gave up waiting for {what}")


def events_of(run: Path) -> list[dict]:
    return read_events(run / "events.jsonl")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:].split()[0] not in (b"Z", b"X")


def job_pids(run: Path) -> list[int]:
    """The job and its descendants: torchrun and every rank (torchrun gives its ranks sessions of
    their own, so the process group alone would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = open(f"/proc/{entry}/stat", "rb").read()
                children.setdefault(int(data[data.rindex(b")") + 2:].split()[1]), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    todo, out = [read_job(run)["pid"]], []
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return sorted(out)


def start_detached(*extra: str) -> Path:
    r = medtui("train", "--data", str(DATA), *TWO, *extra, "--detach", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return Path(json.loads(r.stdout)["run_dir"])


def assert_one_stream(events: list[dict]) -> None:
    for ev in events:
        assert validate_event(ev) == [], ev
    assert [e["seq"] for e in events] == list(range(len(events)))  # one writer: no gap, no repeat


def rank_steps(run: Path, rank: int) -> list[int]:
    """The optimizer steps this rank's own log says it took."""
    text = (run / f"rank-{rank}.log").read_text()
    return [int(line.split()[3].split("/")[0]) for line in text.splitlines() if line.startswith(f"rank {rank}: step ")]


# ------------------------------------------------------------------ settings and arithmetic (fast)

def test_gpus_setting_parsing_batch_arithmetic_and_torchrun_passthrough():
    assert parse_gpus("all") == "all" and parse_gpus(" ALL ") == "all"
    assert parse_gpus("2") == 2 and parse_gpus("0,1") == [0, 1] and parse_gpus("3,") == [3]
    for bad in ("0", "", "two", "0,0", "-1", "1.5", "0;1"):
        with pytest.raises(ValueError):
            parse_gpus(bad)
    assert resolve_gpus("all", [0, 1, 2]) == [0, 1, 2] and resolve_gpus("2", [4, 5, 6]) == [4, 5]
    assert resolve_gpus("2,0", [0, 1, 2]) == [2, 0]
    with pytest.raises(Exception, match="3 GPUs asked for, this machine has only 2"):
        resolve_gpus("3", [0, 1])
    with pytest.raises(Exception, match="GPU 7 is not on this machine"):
        resolve_gpus("0,7", [0, 1])
    with pytest.raises(Exception, match="use --nproc N"):
        resolve_gpus("all", [])

    # the effective batch stays what was asked: micro x accum x world
    for micro, accum, world in [(1, 8, 2), (2, 8, 4), (4, 6, 3), (1, 8, 8), (3, 5, 1)]:
        per, note = split_batch(micro, accum, world)
        assert micro * per * world == micro * accum
        assert (note is None) == (world == 1)
    per, note = split_batch(2, 8, 4)
    assert per == 2 and "grad accumulation 8 -> 2 per process" in note and "effective batch 16, as asked" in note
    with pytest.raises(Exception, match=r"effective batch \(micro batch 1 x grad accumulation 3 = 3\) cannot be "
                                        r"shared by 2 processes: make --grad-accum a multiple of 2"):
        split_batch(1, 3, 2)

    # declared once: the spec validates it, the plan reads it
    assert plan_for(TrainSpec()) == Plan(1, 1, ())
    assert plan_for(TrainSpec(nproc=2)) == Plan(2, 2, ())
    assert plan_for(TrainSpec(gpus="0,1", grad_accum=8), available=[0, 1, 2]) == Plan(2, 2, (0, 1))
    assert plan_for(TrainSpec(gpus="all"), available=[0, 1, 2, 3]).world == 4
    with pytest.raises(SpecError) as err:
        TrainSpec(gpus="0,x", nproc=3, grad_accum=8, nnodes=2, node_rank=2).validate(check_files=False)
    msgs = err.value.messages(flags=True)
    assert "GPUs (--gpus) must be all, a count of GPUs (e.g. 2) or GPU indices separated by commas (e.g. 0,1)" in msgs
    assert any(m.startswith("CPU processes (--nproc) is for the CPU: leave GPUs (--gpus) at 1") for m in msgs)
    assert any("Rendezvous endpoint (--rdzv-endpoint)" in m for m in msgs)
    assert any(m.startswith("Box rank (--node-rank) must be below Boxes (--nnodes)") for m in msgs)
    with pytest.raises(SpecError, match="Grad accumulation must be a multiple of the 6 training processes"):
        TrainSpec(nproc=3, grad_accum=8, nnodes=2, rdzv_endpoint="box0:29500").validate(check_files=False)

    # several boxes: torchrun's own settings, passed through unchanged
    spec = TrainSpec(gpus="2", nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.5:29500", rdzv_id="ward7")
    argv = torchrun_argv("medtui_engine.train.job", Path("/r"), 2, spec, ["--resume"])
    assert argv[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "2", "--node_rank", "1",
                        "--rdzv_endpoint", "10.0.0.5:29500", "--rdzv_id", "ward7",
                        "-m", "medtui_engine.train.job", "/r", "--worker", "--resume"]
    assert "--standalone" in torchrun_argv("m", Path("/r"), 2, TrainSpec(nproc=2), [])


def test_cli_refuses_what_several_processes_cannot_do(demo_model, workspace):
    r = medtui("train", "--data", str(DATA), *TWO[:-2], "--grad-accum", "3", "--heartbeat", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "Grad accumulation (--grad-accum) must be a multiple of the 2 training processes" in r.stderr
    r = medtui("train", "--data", str(DATA), "--model", "demo", "--gpus", "64", "--grad-accum", "64")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "--gpus 64: 64 GPUs asked for, this machine has" in r.stderr
    r = medtui("train", "--data", str(DATA), *TWO[2:], "--backend", "unsloth")
    assert r.returncode == 2 and "the unsloth backend trains on one GPU in medtui" in r.stderr, r.stdout + r.stderr
    assert "--backend hf (or auto) for 2 processes, or --gpus 1" in r.stderr
    assert not (workspace / "runs").is_dir() or not any((workspace / "runs").iterdir())


# ------------------------------------------------------------------ real two-process runs (slow)

@pytest.mark.slow
@TRAIN_JOBS
def test_two_ranks_train_stop_and_resume_to_one_adapter(demo_model, workspace):
    run = start_detached("--max-steps", "40")
    wait_for(lambda: any(e["type"] == "log" and e["step"] >= 2 for e in events_of(run)), "two steps")
    job = read_job(run)
    assert job["pgid"] == job["pid"]
    pids = job_pids(run)
    assert len(pids) >= 4, pids  # the job, torchrun, two ranks
    r = medtui("runs", "stop", run.name, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: not any(alive(p) for p in pids), "every process of the stopped job to end", limit=60)
    _, state = load_run(run)
    assert state.status == "stopped", state.status
    stop_step = state.step
    assert 2 <= stop_step < 40
    stopped = [e for e in events_of(run) if e["type"] == "stopped"][0]
    assert stopped["checkpoint"].endswith(f"checkpoint-{stop_step}") and Path(stopped["checkpoint"]).is_dir()
    assert not (run / "adapter").exists()
    # both ranks stopped at the same step
    assert rank_steps(run, 0)[-1] == rank_steps(run, 1)[-1] == stop_step

    spec = json.loads((run / "spec.json").read_text())
    spec["max_steps"] = stop_step + 2  # a test shortcut: two more steps
    (run / "spec.json").write_text(json.dumps(spec))
    r = medtui("runs", "resume", run.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resumed from checkpoint checkpoint-{stop_step}" in r.stdout

    events = events_of(run)
    assert_one_stream(events)
    starts = [e for e in events if e["type"] == "job_start"]
    assert [s["world_size"] for s in starts] == [2, 2] and starts[-1]["resumed_from"] == stop_step
    begins = [e for e in events if e["type"] == "train_begin"]
    assert [b["start_step"] for b in begins] == [0, stop_step]
    for b in begins:  # both ranks took part in each job, each its own process
        assert b["world_size"] == 2 and sorted(x["rank"] for x in b["ranks"]) == [0, 1]
        assert len({x["pid"] for x in b["ranks"]}) == 2
        assert b["grad_accum"] == 1  # 2 asked, shared by 2 processes
    assert any("grad accumulation 2 -> 1 per process" in e["message"] for e in events if e["type"] == "notice")
    logs = [e["step"] for e in events if e["type"] == "log"]
    assert logs == list(range(1, stop_step + 3))  # one event per step: rank 0 alone writes
    assert [e["type"] for e in events if e["type"] in ("finished", "stopped", "failed")] == ["stopped", "finished"]
    assert all(e["tokens_per_s"] and e["tokens_per_s"] > 0 for e in events if e["type"] == "log")
    print(f"\n2 gloo processes on the CPU: {[e['tokens_per_s'] for e in events if e['type'] == 'log']} tokens/s "
          "(total over the ranks) per step")
    # per-rank evidence: each rank's own log has every step, before and after the resume
    for rank in (0, 1):
        assert rank_steps(run, rank) == list(range(1, stop_step + 3)), rank
    _, state = load_run(run)
    assert state.status == "finished" and state.step == stop_step + 2
    adapters = [p for p in run.rglob("adapter_model.safetensors") if "checkpoints" not in p.parts]
    assert adapters == [run / "adapter" / "adapter_model.safetensors"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("rank-")) == ["rank-0.log", "rank-1.log"]
    pids = job_pids(run)
    wait_for(lambda: not job_alive(run) and not any(alive(p) for p in pids), "the resumed job's processes to end",
             limit=60)


@pytest.mark.slow
@TRAIN_JOBS
def test_a_killed_rank_ends_the_run_as_failed_with_no_process_left(demo_model, workspace):
    run = start_detached("--max-steps", "200")
    begin = wait_for(lambda: next((e for e in events_of(run) if e["type"] == "train_begin"), None), "training to begin")
    wait_for(lambda: any(e["type"] == "log" for e in events_of(run)), "a step")
    pids = job_pids(run)
    rank1 = next(x["pid"] for x in begin["ranks"] if x["rank"] == 1)
    rank0 = next(x["pid"] for x in begin["ranks"] if x["rank"] == 0)
    assert {rank0, rank1, read_job(run)["pid"]} <= set(pids)
    os.kill(rank1, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in pids), "every process of the job to end", limit=120)
    events = events_of(run)
    assert_one_stream(events)
    _, state = load_run(run)
    assert state.status == "failed", state.status
    failed = events[-1]
    assert failed["type"] == "failed" and failed["rank"] == 1 and failed["error_type"] == "RankDied"
    assert failed["error"].startswith(f"rank 1 (pid {rank1}) died without an error message")
    assert isinstance(failed["step"], int) and failed["step"] >= 1
    shown = medtui("runs", "show", run.name)
    assert "rank 1" in shown.stdout and f"medtui runs resume {run.name}" in shown.stdout, shown.stdout


def test_environment_check_says_how_processes_talk():
    from medtui_engine.envcheck import rule_distributed, run_probe
    from medtui_engine.train.backends import resolve_backend

    # this machine, probed the way `medtui check` does: torch.distributed in a subprocess
    t = run_probe(("torch",))["__torch__"]
    assert t["dist"]["available"] and t["dist"]["gloo"], t
    lines = rule_distributed(t, gpu_count=0 if not t["cuda_available"] else t["device_count"], unsloth_version=None)
    if not t["cuda_available"]:
        assert [(ln.name, ln.value) for ln in lines] == [("several processes (DDP)", "DDP on the CPU uses gloo (available)")]
    # the rules for GPU boxes, on readings such a box gives
    box = {"device_count": 4, "dist": {"available": True, "nccl": True, "gloo": True},
           "peer": [[i, j, not {i, j} == {0, 3}] for i in range(4) for j in range(4) if i != j]}
    by_name = {ln.name: ln for ln in rule_distributed(box, 4, "2025.11.1")}
    assert by_name["several GPUs (DDP)"].verdict == "ok" and "NCCL available: 4 GPUs" in by_name["several GPUs (DDP)"].value
    assert by_name["GPU peer access"].value == "not between 0->3, 3->0"
    assert "Unsloth 2025.11.1: the unsloth backend trains on one GPU in medtui" in by_name["Unsloth on several GPUs"].value
    no_nccl = rule_distributed({**box, "dist": {"available": True, "nccl": False, "gloo": True}}, 4, None)
    assert no_nccl[0].verdict == "problem" and "NCCL is not available" in no_nccl[0].value
    # several processes: auto trains with hf; Unsloth asked for is refused before anything starts
    assert resolve_backend("auto", 2) == ("hf", "auto: 2 processes (DDP) train with hf")
    with pytest.raises(Exception, match="trains on one GPU in medtui"):
        resolve_backend("unsloth", 2)


@pytest.mark.slow
@TRAIN_JOBS
def test_killing_the_job_ends_torchrun_and_every_rank(demo_model, workspace):
    """What a stop that times out, or `kill_job`, does: the whole job goes, no rank is left orphaned."""
    from medtui_engine.runs.jobs import kill_job

    run = start_detached("--max-steps", "200")
    begin = wait_for(lambda: next((e for e in events_of(run) if e["type"] == "train_begin"), None), "training to begin")
    pids = job_pids(run)
    assert {x["pid"] for x in begin["ranks"]} <= set(pids) and len(pids) >= 4, pids
    assert kill_job(run, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in pids), "torchrun and both ranks to end with the job", limit=60)
    _, state = load_run(run)
    assert state.status == "crashed", state.status
