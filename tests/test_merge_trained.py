"""Adapters really trained by both backends (hf and unsloth, the demo model; on the CPU, or on the GPU where there
is one) merge into verified 16-bit models: the training engine's run directories are the input, as in the product.
A backend that cannot train fails its test: Unsloth's CPU fallback trains here, so there is nothing to skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TRAIN_JOBS

from medtui_engine.merge.pipeline import execute
from medtui_engine.merge.plan import make_plan
from medtui_engine.runs.events import EventWriter, read_events, validate_event

ROOT = Path(__file__).resolve().parent.parent


def train(workspace: Path, backend: str) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "medtui_engine.cli", "train", "--data", str(ROOT / "data" / "demo_train.jsonl"),
         "--model", "demo", "--backend", backend, "--limit-rows", "4", "--max-steps", "2", "--max-seq-length", "128",
         "--micro-batch", "2", "--grad-accum", "1", "--lr", "1e-2", "--name", backend, "--json"],
        capture_output=True, text=True, timeout=600, cwd=str(ROOT), env={**os.environ, "MEDTUI_WORKSPACE": str(workspace)})
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    runs = [p for p in (workspace / "runs").iterdir() if p.name.endswith(f"-{backend}")]
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
@TRAIN_JOBS
@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_trained_adapter_merges_verified(backend: str, workspace: Path, demo_model: Path) -> None:
    run = train(workspace, backend)
    plan = make_plan(run.name, runs_dir=workspace / "runs", merged_dir=workspace / "merged")
    assert plan.adapter_dir == str(run / "adapter") and plan.backend == backend and plan.method == "stream"
    assert plan.run_id == run.name and plan.template == "seed" and plan.out_dir == str(run / "merged")
    job = workspace / "jobs" / f"merge-{backend}"
    job.mkdir(parents=True)
    with EventWriter(job / "events.jsonl") as writer:
        prov = execute(plan, job, writer)
    events = read_events(job / "events.jsonl")
    assert {e["type"] for e in events} >= {"merge_progress", "merge_written", "merge_verified"}
    assert all(not validate_event(e) for e in events)

    merged = run / "merged"
    assert json.loads((merged / "medtui.json").read_text()) == {k: v for k, v in prov.items() if k != "gguf"}
    assert prov["run_id"] == run.name and prov["trained_with"]["backend"] == backend and prov["adapter"]["step"] == 2
    assert prov["lora"]["r"] == 32 and prov["template"] == "seed"
    # what was loaded, not what was asked: the 4-bit default trains in 16/32-bit where there is no CUDA
    events_of_run = read_events(run / "events.jsonl")
    device = next(e["device"] for e in events_of_run if e["type"] == "train_begin")
    assert prov["trained_with"]["base_loaded_in_4bit"] is str(device).startswith("cuda")
    v = prov["verification"]
    assert v["passed"], v["failed_checks"]
    assert v["max_abs_logit_diff"] < 0.25 * v["adapter_effect_max_abs_logit"]
    assert v["top1_agreement_decisive"] == 1.0 and v["checks"]["loads_without_peft_unsloth"]
    assert all(h["halted"] for h in v["forced_eos"]) and v["generation_eos_ids"][0] == 151645
