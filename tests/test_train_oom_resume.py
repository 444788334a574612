"""Out of GPU memory -> `failed` with advice -> `runs resume` with other settings -> `finished`; and a
resume is exact: a run stopped and resumed gives the losses of the same run left alone.

Real detached jobs of the demo model on the CPU; the out-of-memory error is the job's own test switch
(MEDTUI_FAULT=oom@K raises torch.OutOfMemoryError as optimizer step K begins). Two jobs are shared by
the module (the run left alone, the run that fails); each test resumes its own copy of the failed run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TRAIN_JOBS, notified, wait_for, wait_until

from medtui_engine.errors import UserError
from medtui_engine.runs.events import read_events, validate_event
from medtui_engine.runs.jobs import kill_job, wait_job
from medtui_engine.runs.store import load_run
from medtui_engine.train.resume import Advice, oom_advice, resume_settings
from medtui_engine.train.spec import TrainSpec

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "demo_train.jsonl"

# 12 cases in steps of 2 x 2 = 4: three steps an epoch; checkpoints at 2 and 4 (2 is mid-epoch), 5 steps in all.
# LoRA dropout stays on (the seed's 0.05): a resume must restore the random state, not only the weights.
ARGS = ["--data", str(DATA), "--model", "demo", "--backend", "hf", "--limit-rows", "12", "--max-seq-length", "64",
        "--micro-batch", "2", "--grad-accum", "2", "--max-steps", "5", "--save-steps", "2", "--lr", "1e-2",
        "--lora-r", "8", "--lora-alpha", "16", "--warmup-ratio", "0", "--heartbeat", "1"]
ADVICE = "micro-batch 2 -> 1 with accumulation 2 -> 4 keeps 4 samples per step"


def medtui(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def ws_env(ws: Path, **extra: str) -> dict:
    return {**os.environ, "MEDTUI_WORKSPACE": str(ws), **extra}


def only_run(ws: Path) -> Path:
    runs = [d for d in (ws / "runs").iterdir() if d.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def curve(run: Path) -> dict[int, tuple[float, float, float]]:
    """step -> (loss, grad norm, epoch) of the run's final history (a resume replaces what came after its checkpoint)."""
    out = {}
    for ev in read_events(run / "events.jsonl"):
        if ev["type"] == "log":
            out[ev["step"]] = (ev["loss"], ev["grad_norm"], ev["epoch"])
    return out


def copy_run(src: Path, ws: Path) -> Path:
    dst = ws / "runs" / src.name
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def baseline(demo_model, tmp_path_factory) -> dict:
    """The run left alone: its curve."""
    ws = tmp_path_factory.mktemp("baseline") / "workspace"
    r = medtui("train", *ARGS, env=ws_env(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(ws)
    assert load_run(run)[1].status == "finished"
    return curve(run)


@pytest.fixture(scope="module")
def oom_run(demo_model, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The same run, out of memory as step 3 begins (attached: the command exits with the outcome)."""
    ws = tmp_path_factory.mktemp("oom") / "workspace"
    r = medtui("train", *ARGS, env=ws_env(ws, MEDTUI_FAULT="oom@3"))
    return only_run(ws), r


@pytest.mark.slow
@TRAIN_JOBS
def test_oom_fails_with_advice_and_resumes_with_the_new_settings(baseline, oom_run, workspace):
    src, r = oom_run
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    run = copy_run(src, workspace)
    spec_before = (run / "spec.json").read_bytes()
    _, state = load_run(run)
    assert state.status == "failed" and state.step == 2 and state.error_type == "OutOfMemoryError"
    assert state.error.startswith("out of GPU memory (CUDA out of memory. Tried to allocate")
    assert state.error.endswith(f"next try {ADVICE}") and "resume the run" not in state.error
    assert state.advice["settings"] == {"micro_batch": 1, "grad_accum": 4}
    # the newest checkpoint is kept; none is written at the failure
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (run / "adapter").exists()
    # the one sentence, and the command that resumes with the advice, in the attached command's last words
    hint = f"`medtui runs resume {run.name} --micro-batch 1 --grad-accum 4` resumes with it from the checkpoint of step 2"
    assert f"next try {ADVICE}" in r.stderr and hint.replace(run.name, src.name) in r.stderr
    shown = medtui("runs", "show", run.name)
    assert f"next try {ADVICE}" in shown.stdout and hint in shown.stdout

    # what cannot change on resume is refused, saying why; nothing starts
    refused = medtui("runs", "resume", run.name, "--lora-r", "16")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert ("LoRA rank (--lora-r) cannot change when a run resumes: its checkpoint was trained with LoRA rank 8"
            in refused.stderr)
    odd = medtui("runs", "resume", run.name, "--micro-batch", "3")
    assert odd.returncode == 2 and "choose a micro-batch of 1, 2, 4" in odd.stderr
    assert load_run(run)[1].status == "failed"

    # the micro-batch alone: the accumulation follows, and the command says so
    resumed = medtui("runs", "resume", run.name, "--micro-batch", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert ("resumed from checkpoint checkpoint-2 (pid" in resumed.stdout
            and f"with {ADVICE} (accumulation derived to keep the effective batch)" in resumed.stdout)
    events = read_events(run / "events.jsonl")
    assert all(validate_event(e) == [] for e in events)
    change = [e for e in events if e["type"] == "resume_settings"]
    assert [(c["step"], c["settings"], c["previous"]) for c in change] == [
        (2, {"micro_batch": 1, "grad_accum": 4}, {"micro_batch": 2, "grad_accum": 2})]
    begins = [e for e in events if e["type"] == "train_begin"]
    assert [(b["start_step"], b["micro_batch"], b["grad_accum"], b["total_steps"]) for b in begins] == [
        (0, 2, 2, 5), (2, 1, 4, 5)]
    _, state = load_run(run)
    assert state.status == "finished" and state.step == 5 and (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "spec.json").read_bytes() == spec_before   # the first settings; the change is in the events
    shown = medtui("runs", "show", run.name).stdout
    assert "batch 1 x 4, max length 64" in shown and f"resumed  at step 2: {ADVICE}" in shown

    # the continuation: the same samples in the same places (each step's share of the epoch is the
    # uninterrupted run's), and the losses of the uninterrupted run up to the dropout masks, which
    # differ with the micro-batch's shape
    got = curve(run)
    assert sorted(got) == sorted(baseline) == [1, 2, 3, 4, 5]
    for step in (1, 2):
        assert got[step] == baseline[step]
    for step in (3, 4, 5):
        loss, _, epoch = got[step]
        print(f"step {step}: loss {loss:.6f} resumed at micro-batch 1 vs {baseline[step][0]:.6f} left alone")
        assert epoch == baseline[step][2]
        assert math.isclose(loss, baseline[step][0], rel_tol=5e-4), (step, loss, baseline[step])


@pytest.mark.slow
@TRAIN_JOBS
def test_a_stopped_and_resumed_run_has_the_losses_of_one_left_alone(baseline, workspace):
    r = medtui("train", *ARGS, "--detach", "--json")
    assert r.returncode == 0, r.stderr
    run = Path(json.loads(r.stdout)["run_dir"])
    wait_for(lambda: any(e["type"] == "log" for e in read_events(run / "events.jsonl")), "the first step", 420, 0.2)
    stopped = medtui("runs", "stop", run.name, "--wait")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    _, state = load_run(run)
    assert state.status == "stopped" and 1 <= state.step < 5, (state.status, state.step)
    stop_step = state.step
    resumed = medtui("runs", "resume", run.name)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from checkpoint checkpoint-{stop_step}" in resumed.stdout and " with " not in resumed.stdout
    _, state = load_run(run)
    assert state.status == "finished" and state.resumed == 1
    got = curve(run)
    print(f"stopped at step {stop_step}; losses resumed / left alone:",
          [(s, got[s][0], baseline[s][0]) for s in sorted(got)])
    assert sorted(got) == sorted(baseline)
    for step in got:   # step for step, within numerics: the weights, optimizer, schedule, data order and RNG
        for a, b in zip(got[step], baseline[step], strict=True):
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7), (step, got[step], baseline[step])


def test_resume_settings_keep_the_effective_batch_and_refuse_what_cannot_change():
    spec = TrainSpec(micro_batch=4, grad_accum=2, max_seq_length=2048)
    assert resume_settings(spec, {"micro_batch": 2}) == (
        {"micro_batch": 2, "grad_accum": 4},
        "micro-batch 4 -> 2 with accumulation 2 -> 4 keeps 8 samples per step "
        "(accumulation derived to keep the effective batch)")
    assert resume_settings(spec, {"grad_accum": 8})[0] == {"micro_batch": 1, "grad_accum": 8}
    assert resume_settings(spec, {"micro_batch": 4}) == ({}, None)
    assert resume_settings(spec, {"max_seq_length": 1024, "gradient_checkpointing": False})[1] == (
        "max sequence length 2048 -> 1024 with gradient checkpointing on -> off")
    # two processes share the accumulation: micro-batch 4 would leave 2 for 2 processes, 8 would leave 1
    assert resume_settings(spec, {"micro_batch": 4}, world=2) == ({}, None)
    for asked, words in (({"micro_batch": 8}, None), ({"micro_batch": 3}, "choose a micro-batch of 1, 2, 4, 8"),
                         ({"micro_batch": 2, "grad_accum": 2}, "= 4 samples per step, but the run trains with 8"),
                         ({"lora_r": 64}, "LoRA rank (--lora-r) cannot change when a run resumes"),
                         ({"micro_batch": 0}, "Micro batch (--micro-batch) must be a whole number >= 1")):
        if words is None:
            with pytest.raises(UserError, match="choose a micro-batch of 1, 2, 4$"):
                resume_settings(spec, asked, world=2)
            continue
        with pytest.raises(UserError) as exc:
            resume_settings(spec, asked)
        assert words in str(exc.value)


def test_oom_advice_goes_from_the_cheapest_change_to_the_last_resort():
    spec = TrainSpec(micro_batch=8, grad_accum=1, gradient_checkpointing=False, max_seq_length=8192,
                     load_in_4bit=False)
    steps = []
    while (advice := oom_advice(spec, longest=min(1300, spec.max_seq_length))).settings:
        steps.append(advice.text)
        for name, value in advice.settings.items():
            setattr(spec, name, value)
    cut = "longer cases are cut"
    assert steps[:6] == [
        "micro-batch 8 -> 4 with accumulation 1 -> 2 keeps 8 samples per step",
        "micro-batch 4 -> 2 with accumulation 2 -> 4 keeps 8 samples per step",
        "micro-batch 2 -> 1 with accumulation 4 -> 8 keeps 8 samples per step",
        "gradient checkpointing off -> on (slower steps, far less activation memory)",
        f"max sequence length 8192 -> 960 (the longest case has 1300 tokens; {cut})",
        f"max sequence length 960 -> 704 (the longest case has 960 tokens; {cut})",
    ]
    assert steps[-1] == f"max sequence length 96 -> 72 (the longest case has 96 tokens; {cut})"
    assert oom_advice(spec).text == ("even micro-batch 1 with gradient checkpointing and short sequences does not "
                                     "fit: start a new run that loads the base in 4-bit, or use a GPU with more free "
                                     "memory")
    assert oom_advice(spec, cuda=True).settings == {}
    assert oom_advice(TrainSpec(micro_batch=8), loading=True) == Advice(
        {}, "the model's weights do not fit while loading: use a GPU with more free memory")


@pytest.mark.slow
@TRAIN_JOBS
async def test_tui_resume_with_these_settings(oom_run, workspace):
    """r on the run that ran out of memory opens "resume with these settings", pre-filled with the
    advice; the engine's words check each edit; Resume continues the run with them to the end."""
    from textual.widgets import Input

    from medtui.app import MedtuiApp
    from medtui.screens.runs import RunsScreen
    from medtui.widgets.resume_dialog import ResumeDialog

    src, _ = oom_run
    app = MedtuiApp(workspace=str(workspace), start_mode="runs")
    run = app.ctx.runs_dir / src.name
    shutil.copytree(src, run)
    async with app.run_test(size=(110, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.polls > 0, "the first poll")
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, ResumeDialog), "the resume dialog")
        dialog = app.screen
        field = dialog.query_one("#resume-micro-batch", Input)
        assert field.value == "1" and dialog.query_one("#resume-grad-accum", Input).value == "4"
        assert "out of GPU memory" in str(dialog.query_one("#resume-body").render())
        check = dialog.query_one("#resume-check")
        assert ADVICE in str(check.render())
        # an edit the engine refuses says why, and Resume then does nothing
        field.value = "3"
        await wait_until(pilot, lambda: "= 12 samples per step, but the run trains with 4" in str(check.render()),
                         "the refusal", show=lambda: str(check.render()))
        field.focus()
        await pilot.press("enter")   # enter in a field answers Resume, as the button does
        await pilot.pause()
        assert app.screen is dialog
        field.value = "1"
        await wait_until(pilot, lambda: ADVICE in str(check.render()), "the advice again")
        await pilot.pause()          # the dialog's new layout, before the button is clicked
        await pilot.click("#confirm-yes")
        await wait_until(pilot, lambda: app.screen is not dialog, "the dialog to close")
        await wait_until(pilot, lambda: notified(app, f"Resuming {run.name} from checkpoint-2 with {ADVICE}"),
                         "the notification")
        # the resumed job recorded the settings it trains with from here on (the CLI test trains it to the end)
        changes = wait_for(lambda: [e for e in read_events(run / "events.jsonl") if e["type"] == "resume_settings"],
                           "the job's record of the new settings", 120, 0.2)
    assert [(c["step"], c["settings"]) for c in changes] == [(2, {"micro_batch": 1, "grad_accum": 4})]
    kill_job(run)
    wait_job(run, timeout=60)


# ---------------------------------------------------------------- the GPU tier (pytest -m gpu)

@pytest.mark.gpu
def test_gpu_a_real_cuda_oom_fails_with_advice(qwen05_model, tmp_path):
    """A real CUDA out-of-memory (64 cases of 4,096 tokens in one micro-batch of a 0.5B model: its logits
    alone want ~160 GiB) ends `failed` with the advice, not `crashed`. The fit probe meets it before the
    first step (the user fixed micro-batch and checkpointing, so it may correct nothing) and the run fails
    as an out-of-memory at step 0 does."""
    data = tmp_path / "long.jsonl"
    text = " ".join(["The patient reports chest pain radiating to the left arm."] * 400)
    data.write_text("".join(json.dumps({"Question": f"case {i}: {text}", "Complex_CoT": text, "Response": text}) + "\n"
                            for i in range(64)), encoding="utf-8")
    ws = tmp_path / "workspace"
    r = medtui("train", "--data", str(data), "--model", str(qwen05_model), "--backend", "hf", "--no-4bit",
               "--no-gradient-checkpointing", "--micro-batch", "64", "--grad-accum", "1", "--max-seq-length", "4096",
               "--max-steps", "2", "--heartbeat", "1", env=ws_env(ws))
    run = only_run(ws)
    print(r.stdout[-2000:], r.stderr[-2000:])
    assert r.returncode == 1, (r.stdout[-3000:], r.stderr[-3000:])
    _, state = load_run(run)
    assert state.status == "failed" and state.step == 0 and state.error_type == "OutOfMemoryError"
    probes = [e for e in read_events(run / "events.jsonl") if e["type"] == "fit_probe"]
    assert len(probes) == 1 and probes[0]["oom"] and probes[0]["corrections"] == []
    assert state.error.startswith("out of GPU memory (CUDA out of memory. Tried to allocate")
    assert state.advice["settings"] == {"micro_batch": 32, "grad_accum": 2}
    assert "next try micro-batch 64 -> 32 with accumulation 1 -> 2 keeps 64 samples per step" in state.error
    assert "--micro-batch 32 --grad-accum 2` resumes with it from step 0 (no checkpoint was saved)" in r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_gpu_oom_then_resume_with_a_smaller_micro_batch_finishes(qwen05_model, tmp_path, backend):
    """The test switch on the GPU, both backends: out of memory as step 3 begins, then `runs resume
    --micro-batch 1` continues from checkpoint 2 with accumulation 4, to the end."""
    ws = tmp_path / "workspace"
    args = ["--data", str(DATA), "--model", str(qwen05_model), "--backend", backend, "--limit-rows", "12",
            "--max-seq-length", "256", "--micro-batch", "2", "--grad-accum", "2", "--max-steps", "5", "--save-steps", "2",
            "--lr", "5e-3", "--warmup-ratio", "0", "--lora-r", "16", "--lora-alpha", "32", "--heartbeat", "1"]
    r = medtui("train", *args, env=ws_env(ws, MEDTUI_FAULT="oom@3"))
    run = only_run(ws)
    assert r.returncode == 1, (r.stdout[-3000:], r.stderr[-3000:])
    _, state = load_run(run)
    assert state.status == "failed" and state.step == 2 and state.advice["settings"] == {"micro_batch": 1, "grad_accum": 4}
    resumed = medtui("runs", "resume", run.name, "--micro-batch", "1", env=ws_env(ws))
    print(resumed.stdout[-3000:])
    assert resumed.returncode == 0, (resumed.stdout[-3000:], resumed.stderr[-3000:], (run / "stdout.log").read_text()[-3000:])
    events = read_events(run / "events.jsonl")
    begins = [e for e in events if e["type"] == "train_begin"]
    assert [(b["start_step"], b["micro_batch"], b["grad_accum"]) for b in begins] == [(0, 2, 2), (2, 1, 4)]
    _, state = load_run(run)
    assert state.status == "finished" and state.step == 5 and state.device.startswith("cuda")
    losses = curve(run)
    assert sorted(losses) == [1, 2, 3, 4, 5] and all(math.isfinite(v[0]) for v in losses.values())
    # the same places in the data as micro-batch 2 would have had: steps of 4 samples in epochs of 3 steps
    assert [round(losses[s][2], 4) for s in (3, 4, 5)] == [1.0, 1.3333, 1.6667]
