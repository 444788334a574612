"""Real training jobs on the CPU: the demo model on data/demo_train.jsonl, both backends.

Each test starts real detached jobs through the real CLI and reads the run directory, the way the
TUI does. Runs are tiny (a handful of cases, short sequences, a few steps) to keep CI fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
from medtui_engine.runs.jobs import job_alive, kill_job, read_job
from medtui_engine.runs.state import fold
from medtui_engine.runs.store import load_run

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "demo_train.jsonl"
# slow; and one training at a time under pytest-xdist (the GPU guard refuses a second job on a GPU)
pytestmark = [pytest.mark.slow, TRAIN_JOBS]

# Small enough for two CPU cores; lr high enough that a few steps visibly lower the loss.
QUICK = ["--model", "demo", "--limit-rows", "8", "--max-seq-length", "96", "--micro-batch", "1", "--grad-accum", "1",
         "--lr", "1e-2", "--lora-r", "8", "--lora-alpha", "16", "--warmup-ratio", "0", "--heartbeat", "1"]

REFUSE_SOCKETS = '''
import socket, os
_log = os.environ.get("MEDTUI_TEST_SOCKET_LOG")
_real_connect = socket.socket.connect
def _refuse(self, address, *a, **k):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        if _log:
            with open(_log, "a") as fh:
                fh.write(f"{os.getpid()} {address!r}\\n")
        raise ConnectionRefusedError(111, "medtui test: network refused")
    return _real_connect(self, address, *a, **k)
socket.socket.connect = _refuse
socket.socket.connect_ex = lambda self, address: 111 if self.family in (socket.AF_INET, socket.AF_INET6) else 0
print("sitecustomize: sockets refused", flush=True)
'''


def medtui(*args: str, env: dict | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout, **kw)


def wait_for(predicate, what: str, limit: float = 420.0, poll: float = 0.3):
    """Poll until ``predicate()`` is truthy (a guard against a hang, not a timing assertion)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"gave up waiting for {what}")


def the_run(workspace: Path) -> Path:
    runs = [d for d in (workspace / "runs").iterdir() if d.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def events_of(run: Path) -> list[dict]:
    return read_events(run / "events.jsonl")


def assert_valid_events(events: list[dict]) -> None:
    assert events, "no events"
    for ev in events:
        assert validate_event(ev) == [], ev
    assert [e["seq"] for e in events] == list(range(len(events)))


def assert_trained(run: Path, backend: str) -> None:
    events = events_of(run)
    assert_valid_events(events)
    terminal = [e for e in events if e["type"] in ("finished", "stopped", "failed")]
    assert [e["type"] for e in terminal] == ["finished"], terminal
    assert events[-1]["type"] == "finished"  # nothing after the terminal event, not even a heartbeat
    assert any(e["type"] == "heartbeat" for e in events)
    starts = [e for e in events if e["type"] == "job_start"]
    assert starts[0]["backend"] == backend
    state = fold(events)
    losses = [v for v in state.loss_values if v is not None]
    assert len(losses) >= 4
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    print(f"\n{backend}: loss {first:.4f} -> {last:.4f} over {len(losses)} steps")
    assert last < first, losses
    # the data file's hash and the exact split are recorded for the run
    spec = json.loads((run / "spec.json").read_text())
    record = json.loads((run / "data.json").read_text())
    assert record["sha256"] == hashlib.sha256(Path(spec["data"]).read_bytes()).hexdigest()
    assert len(record["train_rows"]) + len(record["eval_rows"]) == record["rows_used"]
    assert record["eval_fraction"] == spec["eval_fraction"] and record["seed"] == spec["seed"]
    adapter = run / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["peft_type"] == "LORA"
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    meta = json.loads((adapter / "medtui_adapter.json").read_text())
    assert meta["template"] == "seed" and meta["backend"] == backend
    assert oct(run.stat().st_mode & 0o777) == "0o700"
    four_bit_notice = any("4-bit loading needs a CUDA GPU" in n for n in state.notices)
    if state.device.startswith("cuda"):
        assert not four_bit_notice, state.notices  # on a GPU the 4-bit load asked for is what ran
    else:
        assert state.device == "cpu" and four_bit_notice, (state.device, state.notices)


@pytest.fixture
def refused_env(tmp_path) -> tuple[dict, Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(REFUSE_SOCKETS)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    log = tmp_path / "socket_attempts.log"
    env["MEDTUI_TEST_SOCKET_LOG"] = str(log)
    # the offline variables are the job's to set: make sure they are not merely inherited
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        env.pop(k, None)
    return env, log


def test_hf_job_survives_sighup_and_trains_with_sockets_refused(demo_model, workspace, refused_env):
    """The launcher's session is hung up (an SSH drop) mid-run: the job carries on to `finished`,
    with every network connection refused."""
    env, socket_log = refused_env
    launcher = subprocess.Popen(
        [sys.executable, "-m", "medtui_engine.cli", "train", "--data", str(DATA), "--backend", "hf",
         "--max-steps", "6", "--eval-fraction", "0.25", "--eval-steps", "3", *QUICK],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group, as an SSH login shell's would be
    )
    run = wait_for(lambda: (workspace / "runs").is_dir() and any((workspace / "runs").iterdir()) and the_run(workspace),
                   "the run directory")
    wait_for(lambda: any(e["type"] == "train_begin" for e in events_of(run)), "training to begin")
    os.killpg(launcher.pid, signal.SIGHUP)
    launcher.wait(timeout=60)
    assert launcher.returncode != 0  # the launcher died of the hang-up ...
    assert job_alive(run)            # ... the job did not
    wait_for(lambda: not job_alive(run), "the job to end")
    assert_trained(run, "hf")
    log = (run / "stdout.log").read_text()
    assert "sitecustomize: sockets refused" in log  # the refusal was in force in the job
    attempts = socket_log.read_text() if socket_log.exists() else ""
    print(f"network connections attempted (all refused): {attempts.count(chr(10))}")
    _, state = load_run(run)
    assert state.status == "finished" and state.step == 6
    assert [s for s, _ in state.eval] == [3, 6] and all(v and v > 0 for _, v in state.eval)
    assert state.num_examples == 6  # 8 cases, 2 held out for the eval loss


def test_unsloth_job_attached_trains_and_exits_with_its_status(demo_model, workspace):
    # a dev dependency: missing, this fails (never skips); not imported here: importing it patches transformers
    assert importlib.util.find_spec("unsloth") is not None, "unsloth is not installed (pip install -e '.[dev]')"
    r = medtui("train", "--data", str(DATA), "--backend", "unsloth", "--max-steps", "5", "--eval-fraction", "0.25",
               "--eval-steps", "5", *QUICK)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "following its progress" in r.stdout and "finished at step 5" in r.stdout
    assert "step 5/5" in r.stdout and "loss" in r.stdout and "eval at step 5: loss" in r.stdout
    run = the_run(workspace)
    assert_trained(run, "unsloth")
    assert not (ROOT / "unsloth_compiled_cache").exists() and not (run / "unsloth_compiled_cache").exists()
    # the CLI reads what the TUI reads
    listing = json.loads(medtui("runs", "list", "--json").stdout)
    assert listing[0]["run_id"] == run.name and listing[0]["status"] == "finished" and listing[0]["step"] == 5
    shown = json.loads(medtui("runs", "show", run.name, "--json").stdout)
    assert shown["state"]["adapter"] == str(run / "adapter") and shown["spec"]["backend"] == "unsloth"


def test_stop_saves_a_checkpoint_and_resume_continues_the_step(demo_model, workspace):
    # attached, then Ctrl-C: the command detaches and says how to re-attach; the job keeps training
    attached = subprocess.Popen([sys.executable, "-m", "medtui_engine.cli", "train", "--data", str(DATA),
                                 "--backend", "hf", "--max-steps", "400", *QUICK],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                # started with SIGINT ignored (as a parent may leave it): Ctrl-C still detaches
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    run = wait_for(lambda: (workspace / "runs").is_dir() and any((workspace / "runs").iterdir()) and the_run(workspace),
                   "the run directory")
    wait_for(lambda: any(e["type"] == "log" and e["step"] >= 2 for e in events_of(run)), "two steps")
    attached.send_signal(signal.SIGINT)
    out, err = attached.communicate(timeout=60)
    assert attached.returncode == 0, out + err
    assert "detached: the job keeps running" in err and f"medtui runs tail {run.name}" in err
    assert job_alive(run)
    r = medtui("runs", "stop", run.name, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    _, state = load_run(run)
    assert state.status == "stopped", state.status
    stop_step = state.step
    assert 2 <= stop_step < 400
    stopped = [e for e in events_of(run) if e["type"] == "stopped"][0]
    assert stopped["checkpoint"].endswith(f"checkpoint-{stop_step}") and Path(stopped["checkpoint"]).is_dir()
    assert stop_step in state.checkpoints and not (run / "adapter").exists()
    assert events_of(run)[-1]["type"] == "stopped"
    assert f"stopped at step {stop_step}" in r.stdout

    # a test shortcut: the resumed job runs 3 more steps, not 40 (spec.json is what the job reads)
    spec = json.loads((run / "spec.json").read_text())
    spec["max_steps"] = stop_step + 3
    (run / "spec.json").write_text(json.dumps(spec))
    r = medtui("runs", "resume", run.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resumed from checkpoint checkpoint-{stop_step}" in r.stdout
    events = events_of(run)
    assert_valid_events(events)
    begins = [e for e in events if e["type"] == "train_begin"]
    assert [b["start_step"] for b in begins] == [0, stop_step]
    starts = [e for e in events if e["type"] == "job_start"]
    assert starts[-1]["resumed_from"] == stop_step
    resumed_logs = [e["step"] for e in events if e["type"] == "log" and e["seq"] > begins[-1]["seq"]]
    assert resumed_logs == [stop_step + 1, stop_step + 2, stop_step + 3]
    _, state = load_run(run)
    assert state.status == "finished" and state.resumed == 1 and state.step == stop_step + 3
    assert state.loss_steps == list(range(1, stop_step + 4))  # one continuous curve
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_kill_9_is_crashed_and_resume_recovers(demo_model, workspace):
    backend = "unsloth" if importlib.util.find_spec("unsloth") else "hf"
    r = medtui("train", "--data", str(DATA), "--backend", backend, "--max-steps", "40", "--save-steps", "2",
               "--detach", "--json", *QUICK)
    assert r.returncode == 0, r.stderr
    run = Path(json.loads(r.stdout)["run_dir"])
    wait_for(lambda: any(e["type"] == "checkpoint" and e["step"] >= 2 for e in events_of(run)), "a checkpoint")
    assert read_job(run)["pid"]
    assert kill_job(run, signal.SIGKILL)
    wait_for(lambda: not job_alive(run), "the killed job to disappear")
    _, state = load_run(run)
    assert state.status == "crashed" and not state.terminal
    shown = medtui("runs", "show", run.name)
    assert "crashed" in shown.stdout and f"medtui runs resume {run.name}" in shown.stdout
    ckpt_steps = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*")
                        if (p / "trainer_state.json").exists())
    newest = ckpt_steps[-1]
    spec = json.loads((run / "spec.json").read_text())
    spec["max_steps"] = newest + 2
    (run / "spec.json").write_text(json.dumps(spec))
    r = medtui("runs", "resume", run.name)
    assert r.returncode == 0, r.stdout + r.stderr
    events = events_of(run)
    assert_valid_events(events)
    assert [e["start_step"] for e in events if e["type"] == "train_begin"][-1] == newest
    _, state = load_run(run)
    assert state.status == "finished" and state.step == newest + 2 and state.resumed == 1
    assert state.loss_steps == sorted(set(state.loss_steps)) and state.loss_steps[-1] == newest + 2


def test_unusable_data_is_refused_before_a_job_starts(demo_model, workspace, tmp_path):
    """The data's mapping is checked before anything starts (it used to be a job that failed seconds later)."""
    bad = tmp_path / "cases.jsonl"
    bad.write_text('{"Question": "q1", "Note": "no answer at all"}\n{"Question": "q2"}\n', encoding="utf-8")
    r = medtui("train", "--data", str(bad), "--backend", "hf", "--max-steps", "2", *QUICK)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr
    assert str(bad) in r.stderr and "no column 'Response' for Response; the columns are: Question, Note" in r.stderr
    assert not (workspace / "runs").is_dir() or not any((workspace / "runs").iterdir())
