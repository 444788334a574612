"""GPU tier: training steps through the product's own job, both backends, on 4-bit weights (bitsandbytes), and the
merge job with its verification, on a Qwen2.5-0.5B-shape model with random weights (``pytest -m gpu``).

Everything goes through the real ``medtui`` CLI in subprocesses, as a user would run it: ``medtui train`` starts
the detached job (``medtui_engine.train.job``) and follows it; ``medtui merge`` starts the merge job and follows it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medtui_engine.runs.events import read_events, validate_event
from medtui_engine.runs.state import fold

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "demo_train.jsonl"
STEPS = 4


def medtui(*args: str, workspace: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui", *args], capture_output=True, text=True, cwd=str(ROOT),
                          env={**os.environ, "MEDTUI_WORKSPACE": str(workspace)}, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def gpu_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-workspace")


@pytest.fixture(scope="module")
def trained(qwen05_model: Path, gpu_workspace: Path):
    """backend -> its run directory, trained once per module: 4-bit weights, micro-batch 1 with gradient
    accumulation (the seed's way, shortened), a few steps."""
    runs: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in runs:
            p = medtui("train", "--data", str(DATA), "--model", str(qwen05_model), "--backend", backend,
                       "--name", f"gpu-{backend}", "--4bit", "--limit-rows", "8", "--max-steps", str(STEPS), "--epochs", "1",
                       "--max-seq-length", "256", "--micro-batch", "1", "--grad-accum", "2", "--lr", "5e-3",
                       "--warmup-ratio", "0", "--lora-r", "16", "--lora-alpha", "32", "--heartbeat", "1",
                       workspace=gpu_workspace)
            made = [d for d in (gpu_workspace / "runs").iterdir() if d.name.endswith(f"-gpu-{backend}")]
            assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:],
                                       [(d / "stdout.log").read_text()[-3000:] for d in made if (d / "stdout.log").exists()])
            assert len(made) == 1, made
            runs[backend] = made[0]
        return runs[backend]

    return get


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_training_steps_on_4bit_weights_through_the_job(backend: str, trained) -> None:
    run = trained(backend)
    events = read_events(run / "events.jsonl")
    assert all(not validate_event(e) for e in events)
    start = next(e for e in events if e["type"] == "job_start")
    begin = next(e for e in events if e["type"] == "train_begin")
    assert start["backend"] == backend
    assert begin["device"].startswith("cuda:") and begin["load_in_4bit"] is True, begin
    assert begin["precision"] == "bf16" and begin["optim"] == "adamw_8bit", begin
    state = fold(events)
    assert state.status == "finished" and state.step == STEPS, (state.status, state.error)
    losses = [v for v in state.loss_values if v is not None]
    assert len(losses) == STEPS and all(math.isfinite(v) and v > 0 for v in losses), losses
    assert state.torch_peak_mib and state.torch_peak_mib > 0  # the heartbeat and the end read the GPU's memory
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["peft_type"] == "LORA"
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    print(f"\n{backend}: {state.device}, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
          f"{state.tokens_per_s or 0:.0f} tok/s, peak {state.torch_peak_mib:.0f} MiB")


def test_merge_job_merges_and_verifies_on_the_gpu(trained, gpu_workspace: Path) -> None:
    run = trained("unsloth")  # the default backend on a GPU
    # random weights never choose EOS by themselves: stopping is proven by the forced-EOS check instead
    p = medtui("merge", run.name, "--json", "--accept-no-eos", "--verify-tokens", "32", workspace=gpu_workspace)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["status"] == "finished", out
    merged = Path(out["out"])
    assert merged == run / "merged" and (merged / "medtui.json").is_file()
    assert any(merged.glob("*.safetensors")) and (merged / "config.json").is_file()
    v = out["verification"]
    assert v["passed"], v["failed_checks"]
    assert v["device"].startswith("cuda") and v["checks"]["loads_without_peft_unsloth"]
    assert v["max_abs_logit_diff"] <= max(0.05, 0.25 * v["adapter_effect_max_abs_logit"])
    assert v["checks"]["halts_on_eos"] and all(h["halted"] for h in v["forced_eos"])
    prov = json.loads((merged / "medtui.json").read_text())
    assert prov["run_id"] == run.name and prov["trained_with"]["backend"] == "unsloth"
    assert prov["trained_with"]["base_loaded_in_4bit"] is True and prov["adapter"]["step"] == STEPS
    print(f"\nmerge verified on {v['device']}: max |logit diff| {v['max_abs_logit_diff']} against an adapter effect "
          f"of {v['adapter_effect_max_abs_logit']}, {v['decisive_positions']} decisive positions")
