"""MEDTUI_TORCH_PROFILE=DIR: the job profiles a few optimizer steps into DIR and trains exactly as
without it; a profiler that cannot write never breaks the run. And the bench's step-by-step loss
comparison is fair: a micro-batch of 4 (padding-free) and 4 micro-batches of 1 (padded) train the
same samples in the same order per optimizer step, so they give the same losses.

Real detached jobs of the demo model on the CPU (hf backend), started together, on a small data file
of varied lengths cut from the demo cases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medtui_engine.runs.events import read_events
from medtui_engine.runs.jobs import wait_job
from medtui_engine.runs.store import load_run
from medtui_engine.train.job import PROFILE_ENV
from medtui_engine.train.profile import CPU_TABLE, DEVICE_TABLE, NOTE_FILE, SUMMARY_FILE

# one worker runs the module, so its four jobs (one module fixture) start once per test run, not once per worker
pytestmark = pytest.mark.xdist_group("train-profile")
ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
COMMON = ["--model", "demo", "--backend", "hf", "--max-seq-length", "96", "--max-steps", str(STEPS),
          "--lr", "1e-2", "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--warmup-ratio", "0",
          "--eval-fraction", "0", "--heartbeat", "0.5", "--seed", "7"]
PADDING_FREE = ["--micro-batch", "4", "--grad-accum", "1"]   # the auto recipe's padding-free batches (hf)
PADDED = ["--micro-batch", "1", "--grad-accum", "4"]         # one sample per micro-batch, as the seed recipe


def _data(path: Path) -> Path:
    """12 demo cases cut to varied lengths (about 25 to 100 tokens), so padding and packing differ."""
    rows = [json.loads(line) for line in (ROOT / "data" / "demo_train.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()][:12]
    with open(path, "w", encoding="utf-8") as fh:
        for i, r in enumerate(rows):
            n = 6 + 6 * i
            fh.write(json.dumps({"Question": r["Question"][:n], "Complex_CoT": r["Complex_CoT"][: n // 2],
                                 "Response": r["Response"][:n]}, ensure_ascii=False) + "\n")
    return path


def _start(ws: Path, data: Path, batch: list[str], **env: str) -> Path:
    r = subprocess.run([sys.executable, "-m", "medtui_engine.cli", "train", "--data", str(data), *COMMON, *batch,
                        "--detach", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       # on the CPU on any machine: four jobs at once, and the padded/padding-free losses compared
                       # at float32 (a GPU box would run them one GPU job at a time, in bf16)
                       env={**os.environ, "MEDTUI_WORKSPACE": str(ws), "CUDA_VISIBLE_DEVICES": "", **env})
    assert r.returncode == 0, r.stdout + r.stderr
    return Path(json.loads(r.stdout)["run_dir"])


def _curve(run: Path) -> dict[int, tuple[float, float]]:
    return {e["step"]: (e["loss"], e["grad_norm"]) for e in read_events(run / "events.jsonl") if e["type"] == "log"}


@pytest.fixture(scope="module")
def runs(demo_model, tmp_path_factory) -> dict:
    """Four runs started together: padding-free plain, padding-free profiled, padded plain, and
    padding-free with a profile DIR that cannot be made (a file stands in its way)."""
    base = tmp_path_factory.mktemp("profile")
    data = _data(base / "cases.jsonl")
    blocker = base / "not-a-dir"
    blocker.write_text("a file where the profile directory should go\n")
    started = {
        "plain": _start(base / "ws-plain", data, PADDING_FREE),
        "profiled": _start(base / "ws-profiled", data, PADDING_FREE, **{PROFILE_ENV: str(base / "prof")}),
        "padded": _start(base / "ws-padded", data, PADDED),
        "unwritable": _start(base / "ws-unwritable", data, PADDING_FREE, **{PROFILE_ENV: str(blocker / "prof")}),
    }
    for name, run in started.items():
        assert wait_job(run, timeout=400), f"{name} still running"
        status = load_run(run)[1]
        assert status.status == "finished", (name, status.error, (run / "stdout.log").read_text()[-3000:])
    return {"dir": base / "prof", **started}


def test_the_profile_switch_writes_its_files_and_trains_as_without_it(runs):
    plain, profiled = _curve(runs["plain"]), _curve(runs["profiled"])
    assert sorted(plain) == list(range(1, STEPS + 1))
    assert profiled == plain   # the same losses and gradient norms, to the last digit
    out: Path = runs["dir"]
    assert not (out / NOTE_FILE).exists(), (out / NOTE_FILE).read_text()
    cpu = (out / CPU_TABLE).read_text()
    assert "# of Calls" in cpu and "aten::mm" in cpu
    assert (out / DEVICE_TABLE).read_text().strip()   # on the CPU: a line saying there is no device
    s = json.loads((out / SUMMARY_FILE).read_text())
    assert s["window"] == [2, 3] and s["activities"] == ["cpu"]   # a 3-step run: steps 2-3, step 1 warms up
    p = s["profile"]
    assert p["steps"] == [2, 3] and len(p["wall_ms"]) == 2 and all(w > 0 for w in p["wall_ms"])
    assert len(p["optimizer_step"]["host_ms"]) == 2 and all(x > 0 for x in p["optimizer_step"]["host_ms"])
    assert p["device_busy_ms"] is None   # no CUDA here: no device timeline
    walls = s["steps_perf_counter"]["wall_ms"]
    assert sorted(int(k) for k in walls) == list(range(1, STEPS + 1))
    calls = s["job_overhead"]["by_call"]
    for label in ("callback EventsCallback.on_log", "callback EventsCallback.on_step_end"):
        assert calls[label]["calls"] >= STEPS, calls.keys()
    assert any(k.startswith("event writing") for k in calls) and any(k.startswith("heartbeat") for k in calls)
    notices = [e["message"] for e in read_events(runs["profiled"] / "events.jsonl") if e["type"] == "notice"]
    assert any("profiling optimizer steps 2-3" in m for m in notices)
    print(f"\nprofiled steps wall ms {p['wall_ms']}, optimizer host ms {p['optimizer_step']['host_ms']}; "
          f"steps by perf_counter {walls}")


def test_a_profiler_that_cannot_write_says_so_and_the_run_goes_on(runs):
    assert _curve(runs["unwritable"]) == _curve(runs["plain"])
    notices = [e for e in read_events(runs["unwritable"] / "events.jsonl") if e["type"] == "notice"]
    assert any(PROFILE_ENV in e["message"] and "the run goes on" in e["message"] for e in notices)


def test_padding_free_micro_batches_and_one_sample_micro_batches_train_the_same_steps(runs):
    """What makes the bench's auto-vs-seed loss table fair: per optimizer step the same samples."""
    plain, padded = _curve(runs["plain"]), _curve(runs["padded"])
    assert sorted(padded) == sorted(plain)
    for step in plain:
        (l1, g1), (l2, g2) = plain[step], padded[step]
        assert l1 == pytest.approx(l2, abs=2e-5), step
        assert g1 == pytest.approx(g2, rel=2e-4), step
    print("\nstep: loss, grad norm (padding-free 4 x 1 | padded 1 x 4): "
          + "; ".join(f"{s}: {plain[s][0]} {plain[s][1]:.5f} | {padded[s][0]} {padded[s][1]:.5f}" for s in plain))


def test_the_bench_prints_the_two_arms_losses_side_by_side_and_the_profile(runs):
    """The bench's report pieces on these real runs: padding-free as the auto arm, padded as the seed arm."""
    from benchmarks.bench_train import loss_lines, profile_lines

    def losses(run: Path) -> list[float]:
        c = _curve(run)
        return [c[s][0] for s in sorted(c)]

    arms = {"product auto": {"losses": losses(runs["plain"]), "batching": "padding_free"},
            "product seed": {"losses": losses(runs["padded"])},
            "product auto seed 1": {"losses": losses(runs["profiled"])}}
    lines = loss_lines(arms)
    text = "\n".join(lines)
    assert len([ln for ln in lines if ln.split() and ln.split()[0].isdigit()]) == STEPS
    assert "auto - seed over 3 steps: mean" in text and "yardstick, auto's step-to-step change" in text
    assert "yardstick, product auto seed 1 - auto" in text and "CAUTION" not in text
    assert loss_lines({"product auto": arms["product auto"]}) == []   # one arm: no table
    summary = json.loads((runs["dir"] / SUMMARY_FILE).read_text())
    shown = "\n".join(profile_lines(summary, str(runs["dir"])))
    assert "steps [2, 3]: wall ms" in shown and "the job's own work per step" in shown
    print("\n" + text + shown)


def _gpu_step_events(linked: bool):
    """Two profiled steps of 1 ms each with 0.425 ms of kernels, as torch's own FunctionEvent objects: ops
    with their parents and shapes, the kernels, the step annotations. ``linked``: each kernel names the op
    that launched it (newer torch: ``linked_correlation_id``); else the ops list their kernels (every torch)."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    vocab, events, ids = 1000, [], iter(range(100, 10_000))

    def op(name, s, e, parent=None, shapes=(), annotation=False):
        f = FunctionEvent(id=next(ids), name=name, thread=1, start_us=s, end_us=e, input_shapes=list(shapes),
                          is_user_annotation=annotation, use_device="cuda")
        if parent is not None:
            f.set_cpu_parent(parent)
            parent.append_cpu_child(f)
        events.append(f)
        return f

    def kernel(name, s, e, launcher):
        link = {"linked_correlation_id": launcher.id if launcher else 0} if linked else {}
        events.append(FunctionEvent(id=next(ids), name=name, thread=7, start_us=s, end_us=e, device_type=DeviceType.CUDA,
                                    use_device="cuda", **link))
        if not linked and launcher is not None:
            launcher.append_kernel(name, 0, e - s)

    for k in range(2):
        b = k * 1000
        step = op("ProfilerStep*", b, b + 1000, annotation=True)
        layer = op("aten::linear", b + 10, b + 20, step)
        kernel("nvjet_tst_128x64_sm90", b + 20, b + 120, op("aten::mm", b + 11, b + 19, layer, [[8, 64], [64, 64]]))
        kernel("nvjet_tst_256x128", b + 120, b + 320, op("aten::mm", b + 30, b + 40, step, [[8, 64], [64, vocab]]))
        kernel("flash_fwd_kernel", b + 330, b + 380, op("aten::_flash_attention_forward", b + 41, b + 50, step))
        kernel("cunn_SoftMaxForward", b + 380, b + 400, op("aten::_log_softmax", b + 51, b + 60, step))
        opt = op("Optimizer.step#AdamW8bit.step", b + 600, b + 900, step, annotation=True)
        launcher = op("aten::empty", b + 601, b + 602, opt)
        for j in range(5):
            kernel("kOptimizerStatic8bit2StateBlockwise", b + 610 + 20 * j, b + 620 + 20 * j, launcher)
        op("cudaStreamSynchronize", b + 950, b + 990, step)
        kernel("Memcpy DtoH (Device -> Pageable)", b + 960, b + 965, None)
    # the step's range drawn on the GPU timeline is no kernel
    events.append(FunctionEvent(id=1, name="ProfilerStep#1", thread=7, start_us=0, end_us=900,
                                device_type=DeviceType.CUDA, is_user_annotation=True))
    return events, vocab


def _links_kernels() -> bool:
    import inspect

    from torch.autograd.profiler_util import FunctionEvent

    return "linked_correlation_id" in inspect.signature(FunctionEvent.__init__).parameters


def test_the_summary_splits_a_gpu_step_into_busy_idle_and_kernel_families():
    """The GPU half of the summary, from the ops' kernel lists (every torch) and, where the installed torch
    links kernels to their ops, from the links too: the same split either way."""
    from medtui_engine.train.profile import summarize_events

    modes = [False, True] if _links_kernels() else [False]
    for linked in modes:
        events, vocab = _gpu_step_events(linked)
        s = summarize_events(events, [5, 6], vocab)
        assert s["steps"] == [5, 6] and s["wall_ms"] == [1.0, 1.0]
        assert s["device_busy_ms"] == [0.425, 0.425] and s["gap_ms"] == [0.575, 0.575]
        assert s["kernels_per_step"] == [10, 10]
        fam = s["device_ms_per_step_by_family"]
        assert (fam["matmul"], fam["loss_lm_head"], fam["attention"], fam["optimizer"]) == (0.1, 0.22, 0.05, 0.05), fam
        # a copy no op launched: by its name where kernels are linked, else left unattributed (said so)
        assert fam["memcpy_memset" if linked else "unattributed"] == 0.005, fam
        assert s["optimizer_step"] == {"host_ms": [0.3, 0.3], "device_ms": [0.05, 0.05]}
        assert s["host_sync_wait_ms"] == [0.04, 0.04]
        top = s["top_kernels"][0]
        assert (top["name"], top["calls"], top["device_ms_per_step"]) == ("nvjet_tst_256x128", 2, 0.2)
        if linked:
            assert top["family"] == "loss_lm_head"
