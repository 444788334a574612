"""Run directories, detached jobs and liveness, the GPU guard, the spec: real files and processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for

from medtui_engine.gpu import GpuProcess, GpuSnapshot, NvmlInfo, process_argv
from medtui_engine.runs.events import EventWriter
from medtui_engine.runs.guard import busy_gpus
from medtui_engine.runs.jobs import job_alive, launch_job, proc_start_time, read_job, request_stop, wait_job
from medtui_engine.runs.store import find_run, list_runs, load_run, new_run_dir, resolve_status
from medtui_engine.train.spec import SpecError, TrainSpec

ROOT = Path(__file__).resolve().parent.parent

SLEEPER = '''
import os, signal, sys, time
job_dir = sys.argv[1]
print("sleeper up", os.getpid(), "sid", os.getsid(0), "args", sys.argv[2:], flush=True)
print("offline", os.environ.get("HF_HUB_OFFLINE"), flush=True)
stop = {"sig": None}
signal.signal(signal.SIGTERM, lambda s, f: stop.update(sig="TERM"))
for _ in range(600):
    if stop["sig"] or os.path.exists(os.path.join(job_dir, "STOP")):
        print("stopping", stop["sig"], flush=True)
        break
    time.sleep(0.05)
'''


@pytest.fixture
def sleeper_env(tmp_path):
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "medtui_test_sleeper.py").write_text(SLEEPER)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(mod_dir)
    return env


def test_new_run_dir_is_unique_and_owner_only(tmp_path):
    runs = tmp_path / "runs"
    a = new_run_dir(runs, "demo model/../x")
    b = new_run_dir(runs, "demo model/../x")
    assert a != b and a.parent == runs and b.name.startswith(a.name)
    assert "/" not in a.name and ".." not in a.name
    assert oct(a.stat().st_mode & 0o777) == "0o700"


def test_launch_job_detached_alive_and_stoppable(tmp_path, sleeper_env):
    job = tmp_path / "job"
    pid = launch_job("medtui_test_sleeper", job, ["a", "b"], env=sleeper_env)
    info = read_job(job)
    assert info["pid"] == pid and info["module"] == "medtui_test_sleeper" and info["start_time"] == proc_start_time(pid)
    assert job_alive(job)
    def printed() -> str | None:
        text = (job / "stdout.log").read_text()
        return text if "offline" in text else None

    log = wait_for(printed, "the child's first lines", 120)
    assert f"sleeper up {pid} sid {pid}" in log          # its own session: an SSH drop cannot reach it
    assert "args ['a', 'b']" in log and "offline 1" in log
    request_stop(job)
    assert wait_job(job, timeout=60)
    assert "stopping" in (job / "stdout.log").read_text()
    assert not job_alive(job)


def test_a_reused_pid_is_not_the_job(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    me = os.getpid()
    (job / "job.json").write_text(json.dumps({"pid": me, "start_time": proc_start_time(me) + 1, "module": "x"}))
    assert not job_alive(job)  # our pid is alive, but it is not the process that job.json recorded
    (job / "job.json").write_text(json.dumps({"pid": me, "start_time": proc_start_time(me), "module": "x"}))
    assert job_alive(job)


def _write_events(run: Path, *events: tuple[str, dict]) -> None:
    with EventWriter(run / "events.jsonl") as w:
        for etype, fields in events:
            w.emit(etype, **fields)


def test_status_crashed_stalled_and_listing(tmp_path):
    runs = tmp_path / "runs"
    dead = new_run_dir(runs, "dead")
    TrainSpec(model="m", data="d.jsonl", model_label="m (demo)").write(dead)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (dead / "job.json").write_text(json.dumps({"pid": p.pid, "start_time": 1, "module": "medtui_engine.train.job"}))
    _write_events(dead, ("job_start", dict(pid=p.pid, start_time=1, backend="hf", resumed_from=None, versions={})),
                  ("log", dict(step=3, epoch=0.1, loss=2.0, lr=1e-4, grad_norm=1.0, tokens_per_s=1.0, elapsed_s=1.0, eta_s=9.0)))
    spec, st = load_run(dead)
    assert st.status == "crashed" and st.step == 3 and spec["model_label"] == "m (demo)"

    alive = new_run_dir(runs, "alive")
    me = os.getpid()
    (alive / "job.json").write_text(json.dumps({"pid": me, "start_time": proc_start_time(me), "module": "x"}))
    _write_events(alive, ("job_start", dict(pid=me, start_time=None, backend="hf", resumed_from=None, versions={})))
    _, st = load_run(alive)
    assert st.status == "starting"
    assert resolve_status(st, alive, now=st.last_event_t + 121) == "stalled"

    summaries = list_runs(runs)
    assert [s.run_id for s in summaries] == sorted([dead.name, alive.name], reverse=True)
    assert find_run(runs, "last") == runs / summaries[0].run_id
    assert find_run(runs, dead.name[:-2]) == dead
    with pytest.raises(LookupError, match="no run"):
        find_run(runs, "zzz")


def _gpu(index: int, procs=()) -> GpuSnapshot:
    return GpuSnapshot(index=index, name="H100", uuid=f"GPU-{index}", memory_total_mib=81000.0, memory_used_mib=1.0,
                       memory_free_mib=80999.0, utilization_pct=0.0, temperature_c=30.0, power_w=60.0,
                       power_limit_w=700.0, compute_capability=(9, 0), processes=tuple(procs))


def test_gpu_guard_finds_a_medtui_job_on_our_gpu(tmp_path):
    # the hardware edge is faked: an NVML reading with a medtui training job on GPU 1
    job = GpuProcess(4242, 20000.0, f"{sys.executable} -m medtui_engine.train.job /ws/runs/20261124-1-demo")
    other = GpuProcess(77, 1000.0, "python serve.py")
    info = NvmlInfo(True, "580", "13.0", None, (_gpu(0, [other]), _gpu(1, [job])))
    busy = busy_gpus(None, nvml=info, visible=None)
    assert len(busy) == 1 and busy[0].index == 1 and busy[0].pid == 4242
    assert "GPU 1 is in use by run 20261124-1-demo (pid 4242)" == busy[0].describe()
    assert busy_gpus(None, nvml=info, visible=[0]) == []
    assert busy_gpus(None, nvml=NvmlInfo(False, error="no driver")) == []


def test_gpu_guard_ignores_a_job_that_already_finished(tmp_path):
    # Seen on the H100: a run wrote `finished` while its process was still exiting; a second
    # training started right after it must not be refused.
    runs = tmp_path / "runs"
    done = new_run_dir(runs, "done")
    _write_events(done, ("job_start", dict(pid=4242, start_time=None, backend="hf", resumed_from=None, versions={})),
                  ("finished", dict(step=3, adapter=str(done / "adapter"), runtime_s=1.0, final_loss=1.0)))
    job = GpuProcess(4242, 20000.0, f"{sys.executable} -m medtui_engine.train.job {done}")
    info = NvmlInfo(True, "580", "13.0", None, (_gpu(0, [job]),))
    assert busy_gpus(runs, nvml=info, visible=None) == []


def test_gpu_guard_reads_the_whole_command_line_of_a_finished_job(tmp_path):
    # Seen on the H200: the process name NVML's reading carries is cut at 120 characters, so a long
    # run path was cut too, never read as finished, and the next training was refused.
    runs = tmp_path / ("deep-" * 20) / "runs"
    done = new_run_dir(runs, "a-long-run-name")
    _write_events(done, ("job_start", dict(pid=1, start_time=None, backend="hf", resumed_from=None, versions={})),
                  ("finished", dict(step=3, adapter=str(done / "adapter"), runtime_s=1.0, final_loss=1.0)))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "medtui_engine.train.job", str(done)])
    try:
        # until the child has exec'd, /proc shows the parent's command line (NVML lists only processes
        # that hold a CUDA context: those have long exec'd)
        deadline = time.monotonic() + 30
        while "medtui_engine.train.job" not in process_argv(proc.pid):
            assert time.monotonic() < deadline, "the stand-in job never showed its command line"
            time.sleep(0.02)
        name = " ".join([sys.executable, "-c", "import time; time.sleep(60)", "medtui_engine.train.job", str(done)])[:120]
        assert str(done) not in name  # the display name really is cut
        info = NvmlInfo(True, "580", "13.0", None, (_gpu(0, [GpuProcess(proc.pid, 20000.0, name)]),))
        assert busy_gpus(runs, nvml=info, visible=None) == []
    finally:
        proc.kill()
        proc.wait()


def test_train_picks_a_free_gpu_and_refuses_a_busy_one_unless_forced(tmp_path, monkeypatch):
    from medtui_engine.commands.train import check_gpu_free
    from medtui_engine.errors import UserError

    job = GpuProcess(4242, 20000.0, "python -m medtui_engine.train.job /ws/runs/r1")
    reading = {"info": NvmlInfo(True, "580", "13.0", None, (_gpu(0, [job]), _gpu(1)))}
    monkeypatch.setattr("medtui_engine.gpu.read_nvml", lambda with_processes=True: reading["info"])  # the hardware edge
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env, warnings = check_gpu_free(tmp_path, force=False)   # GPU 0 is taken: the job gets GPU 1
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}
    assert warnings == ["GPU 0 is in use by run r1 (pid 4242); this job uses GPU 1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")       # the user asks for the busy one
    with pytest.raises(UserError, match=r"GPU 0 is in use by run r1.*medtui runs stop r1.*--force"):
        check_gpu_free(tmp_path, force=False)
    env, warnings = check_gpu_free(tmp_path, force=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and warnings[0].startswith("warning: GPU 0 is in use")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")        # every GPU hidden: a CPU job, pinned to no GPU, refused by none
    assert check_gpu_free(tmp_path, force=False) == ({}, [])
    reading["info"] = NvmlInfo(False, error="no driver")    # no GPU: nothing to guard, nothing to pin
    assert check_gpu_free(tmp_path, force=False) == ({}, [])


def test_spec_defaults_are_the_seeds_and_bad_values_are_refused(tmp_path):
    s = TrainSpec()
    assert (s.lora_r, s.lora_alpha, s.lora_dropout, s.lora_bias) == (32, 32, 0.05, "none")
    assert s.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (s.micro_batch, s.grad_accum, s.epochs, s.learning_rate, s.max_seq_length) == (1, 8, 3.0, 1e-4, 8192)
    assert s.load_in_4bit and s.gradient_checkpointing and s.precision == "auto"
    bad = TrainSpec(data=str(tmp_path / "missing.jsonl"), model=str(tmp_path), lora_r=0, learning_rate=2.0,
                    template="alpaca", backend="tpu", micro_batch=0, eval_steps=5)
    with pytest.raises(SpecError) as err:
        bad.validate()
    text = str(err.value)
    for needle in ("LoRA rank", "Learning rate", "template 'alpaca'", "Backend 'tpu'", "Micro batch",
                   "Eval fraction", "missing.jsonl does not exist", "no config.json"):
        assert needle in text, needle
    assert "--" not in text  # settings are named by their labels; the CLI adds its flags
    assert {p.field for p in err.value.problems} == {"data", "model", "lora_r", "learning_rate", "template",
                                                     "backend", "micro_batch", "eval_steps"}
    assert "Eval steps (--eval-steps)" in err.value.render(flags=True)
    s.data = str(tmp_path / "d.jsonl")
    Path(s.data).write_text("{}\n")
    s.validate()
    s.write(tmp_path)
    assert TrainSpec.read(tmp_path) == s


def test_cli_refuses_bad_settings_before_starting(tmp_path, workspace):
    data = tmp_path / "d.jsonl"
    data.write_text('{"Question": "q", "Complex_CoT": "c", "Response": "r"}\n')
    r = subprocess.run([sys.executable, "-m", "medtui_engine.cli", "train", "--data", str(data), "--lora-r", "0",
                        "--epochs", "-1", "--detach"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "LoRA rank (--lora-r)" in r.stderr and "Epochs (--epochs)" in r.stderr and "Traceback" not in r.stderr
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
    r = subprocess.run([sys.executable, "-m", "medtui_engine.cli", "runs", "show", "nope"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "no run 'nope'" in r.stderr
