"""Where a training step's time goes: ``torch.profiler`` over a few optimizer steps, for diagnosis.

Switched on by the job's environment (``MEDTUI_TORCH_PROFILE=DIR``, declared in ``train.job``),
never otherwise. The window: optimizer steps 5-7 after a profiler warm-up step 4 (a run shorter than
7 steps: steps 2 to 4 at most, after step 1), on rank 0 only. At the end of training it writes to DIR:

- ``device_table.txt``: ``key_averages`` sorted by self device time (top 40, with call counts);
- ``cpu_table.txt``: the same sorted by self CPU time;
- ``profile_summary.json``: per profiled step the wall time, the device-busy time (the union of the
  kernels' intervals, and their plain sum), the gap between them (the GPU idle: launch-bound or
  waiting for the host), the device time by family (below), the optimizer step's host and device
  time, the host's waits on the GPU; the wall time of every step of the run (perf_counter, so the
  profiler's own overhead shows against the steps around the window); and the time spent in the
  job's own per-step work (the trainer callbacks, event writing, the heartbeat's NVML and memory
  reads), timed with perf_counter around each call.

Kernel families, first match wins, judged on the kernel's name and the ops that launched it (its
CPU op and that op's parents):
  optimizer      under ``Optimizer.step#``/``Optimizer.zero_grad#`` or a ``_foreach_`` op (grad
                 clipping), or an optimizer kernel by name (adam, kOptimizer, multi_tensor);
  loss_lm_head   an op with the vocabulary as one of its input dimensions (the lm_head's matmuls,
                 forward and backward), or cross-entropy/log-softmax/logsumexp by name;
  attention      flash/fmha/attention/attn/sdpa by name, or under scaled_dot_product/flash ops;
  matmul         gemm/cutlass/nvjet/xmma/cublas/matmul/wgmma by name, or under mm/addmm/bmm/linear;
  norm_rope_act  rms/layernorm/rope/rotary/swiglu/silu/gelu kernels (Unsloth's fused ones included);
  dequantize     4-bit dequantization (bitsandbytes);
  memcpy_memset  copies and fills;
  other          the rest (elementwise, reductions, casts).

Profiling must never break a run: any failure writes ``profile_note.txt`` in DIR (and a notice)
and the run goes on.
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from collections import defaultdict
from pathlib import Path

WINDOW = (5, 7)                 # profiled optimizer steps (the one before is the profiler's warm-up)
SHORT_WINDOW = (2, 4)           # a run shorter than WINDOW[1] steps
TOP = 40
SUMMARY_FILE = "profile_summary.json"
DEVICE_TABLE = "device_table.txt"
CPU_TABLE = "cpu_table.txt"
NOTE_FILE = "profile_note.txt"

FAMILIES = ("matmul", "attention", "loss_lm_head", "optimizer", "norm_rope_act", "dequantize", "memcpy_memset", "other")
_OPT_ANCESTOR = re.compile(r"^Optimizer\.(step|zero_grad)#|_foreach_")
_OPT_NAME = re.compile(r"adam|koptimizer|multi_tensor|optimizer", re.I)
_LOSS = re.compile(r"cross_entropy|crossentropy|log_softmax|logsumexp|nll_loss", re.I)
_ATTN = re.compile(r"flash|fmha|attention|attn|sdpa|scaled_dot_product", re.I)
_MATMUL_NAME = re.compile(r"gemm|cutlass|nvjet|xmma|cublas|matmul|wgmma|splitk", re.I)
_MATMUL_OP = re.compile(r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_scaled_mm|addmv|mv)$")
_NORM = re.compile(r"rms|layernorm|layer_norm|rope|rotary|swiglu|_fg_kernel|_dwf|silu|gelu", re.I)
_DEQUANT = re.compile(r"dequant|kgemm_4bit|gemv_4bit", re.I)
_COPY = re.compile(r"^memcpy|^memset|memcpy|memset", re.I)
_SYNC = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
_LAUNCH = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")

CLASSIFICATION = (
    "first match wins, on the kernel's name and the ops that launched it: optimizer (under Optimizer.step#/"
    "zero_grad# or a _foreach_ op, or adam/kOptimizer/multi_tensor kernels); loss_lm_head (an op with the "
    "vocabulary as an input dimension: the lm_head's matmuls forward and backward; or cross-entropy/log-softmax/"
    "logsumexp kernels); attention (flash/fmha/attention/attn/sdpa); matmul (gemm/cutlass/nvjet/xmma/cublas/"
    "matmul/wgmma kernels, or under aten::mm/addmm/bmm/linear); norm_rope_act (rms/layernorm/rope/rotary/swiglu/"
    "silu/gelu); dequantize (4-bit dequantization); memcpy_memset; other")


def window_for(start_step: int, max_steps: int) -> tuple[int, int] | None:
    """The optimizer steps to profile for a run at ``start_step`` of ``max_steps`` (None: none fit)."""
    first, last = WINDOW
    if max_steps < last:
        first, last = SHORT_WINDOW[0], min(SHORT_WINDOW[1], max_steps)
    if first > last or start_step > first - 2:
        return None
    return first, last


class Timings:
    """perf_counter totals of the job's own per-step work, by label."""

    def __init__(self):
        self.data: dict[str, list[float]] = defaultdict(list)

    def add(self, label: str, seconds: float) -> None:
        self.data[label].append(seconds)

    def wrap(self, obj, name: str, label: str) -> None:
        """Time every call of ``obj.name`` (an instance attribute shadows the method: the object and
        its class stay what they are)."""
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - t)

        setattr(obj, name, timed)

    def summary(self, steps: int) -> dict:
        out = {}
        for label, xs in sorted(self.data.items(), key=lambda kv: -sum(kv[1])):
            out[label] = {"calls": len(xs), "total_ms": round(sum(xs) * 1e3, 3), "mean_ms": round(sum(xs) / len(xs) * 1e3, 4),
                          "max_ms": round(max(xs) * 1e3, 3),
                          "per_step_ms": round(sum(xs) * 1e3 / steps, 4) if steps else None}
        return out


# ------------------------------------------------------------------ reading the profiler's events

def _ancestors(evt):
    """The event and its CPU parents, innermost first."""
    seen = 0
    while evt is not None and seen < 200:
        yield evt
        evt = getattr(evt, "cpu_parent", None)
        seen += 1


def _has_dim(evt, dim: int | None) -> bool:
    if not dim:
        return False
    for shape in getattr(evt, "input_shapes", None) or ():
        if isinstance(shape, (list, tuple)) and dim in shape:
            return True
    return False


def classify(kernel_name: str, launcher, vocab: int | None) -> str:
    """The family of a kernel (see the module's text): its name and the ops that launched it."""
    chain = list(_ancestors(launcher)) if launcher is not None else []
    names = [e.name for e in chain]
    if _COPY.search(kernel_name):
        return "memcpy_memset"
    if any(_OPT_ANCESTOR.search(n) for n in names) or _OPT_NAME.search(kernel_name):
        return "optimizer"
    if any(_has_dim(e, vocab) for e in chain) or _LOSS.search(kernel_name) or any(_LOSS.search(n) for n in names):
        return "loss_lm_head"
    if _ATTN.search(kernel_name) or any(_ATTN.search(n) for n in names):
        return "attention"
    if _DEQUANT.search(kernel_name) or any(_DEQUANT.search(n) for n in names):
        return "dequantize"
    if _MATMUL_NAME.search(kernel_name) or any(_MATMUL_OP.match(n) for n in names):
        return "matmul"
    if _NORM.search(kernel_name):
        return "norm_rope_act"
    return "other"


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def summarize_events(events, steps: list[int], vocab: int | None) -> dict:
    """The summary of the profiled steps from the profiler's events (``prof.events()``): each step's
    range is its ``ProfilerStep#`` annotation, matched in order to ``steps``."""
    from torch.autograd import DeviceType

    step_ranges = sorted((e.time_range.start, e.time_range.end) for e in events
                         if e.name.startswith("ProfilerStep") and e.device_type == DeviceType.CPU)
    step_ranges = step_ranges[-len(steps):] if steps else step_ranges
    n = len(step_ranges)
    cpu_by_id = {}
    kernels = []   # (start, end, name, launcher)
    opt_cpu = [0.0] * n
    sync_cpu = [0.0] * n
    launches = [0] * n

    def step_of(t: float) -> int | None:
        for i, (a, b) in enumerate(step_ranges):
            if a <= t < b:
                return i
        return None

    annotations = {e.name for e in events if e.device_type == DeviceType.CPU and getattr(e, "is_user_annotation", False)}
    for e in events:
        if e.device_type == DeviceType.CPU:
            if not getattr(e, "is_async", False) and not getattr(e, "linked_correlation_id", 0):
                cpu_by_id[e.id] = e   # the ops and ranges kernels link to (runtime calls link to them too)
            i = step_of(e.time_range.start)
            if i is None:
                continue
            dur = e.time_range.end - e.time_range.start
            if e.name.startswith("Optimizer.step#"):
                opt_cpu[i] += dur
            elif e.name in _SYNC:
                sync_cpu[i] += dur
            elif e.name in _LAUNCH:
                launches[i] += 1
        elif not (getattr(e, "is_user_annotation", False) or e.name.startswith("ProfilerStep")
                  or e.name.startswith("Optimizer.") or e.name in annotations):
            kernels.append(e)   # a kernel, copy or fill (not a range annotation drawn on the GPU timeline)
    per_step = [{"intervals": [], "sum": 0.0, "count": 0} for _ in range(n)]
    by_name: dict[str, list] = {}
    fam_total: dict[str, float] = defaultdict(float)
    opt_dev = [0.0] * n
    # which op launched each kernel: the kernel's linked correlation id (newer torch), else the ops'
    # own kernel lists (every torch), attributed to the step where the op ran
    linked = any(getattr(k, "linked_correlation_id", 0) for k in kernels)

    def under_optimizer(op) -> bool:
        return op is not None and any(a.name.startswith("Optimizer.step#") for a in _ancestors(op))

    for k in kernels:
        s, t = k.time_range.start, k.time_range.end
        i = step_of(s)
        launcher = cpu_by_id.get(getattr(k, "linked_correlation_id", 0) or -1) if linked else None
        fam = classify(k.name, launcher, vocab)
        row = by_name.setdefault(k.name, [0, 0.0, defaultdict(float)])
        row[0] += 1
        row[1] += t - s
        row[2][fam] += t - s
        if i is None:
            continue
        p = per_step[i]
        p["intervals"].append((s, t))
        p["sum"] += t - s
        p["count"] += 1
        if linked:
            fam_total[fam] += t - s
            if under_optimizer(launcher):
                opt_dev[i] += t - s
    if kernels and not linked:
        for op in cpu_by_id.values():
            i = step_of(op.time_range.start) if op.kernels else None
            if i is None:
                continue
            for kk in op.kernels:
                fam_total[classify(kk.name, op, vocab)] += kk.duration
                if under_optimizer(op):
                    opt_dev[i] += kk.duration
        fam_total["unattributed"] = max(0.0, sum(p["sum"] for p in per_step) - sum(fam_total.values()))

    def ms(x: float) -> float:
        return round(x / 1e3, 3)

    wall = [b - a for a, b in step_ranges]
    busy = [_union_us(p["intervals"]) for p in per_step]
    out = {
        "steps": steps[-n:] if steps else list(range(n)),
        "wall_ms": [ms(w) for w in wall],
        "device_busy_ms": [ms(b) for b in busy] if kernels else None,
        "kernel_sum_ms": [ms(p["sum"]) for p in per_step] if kernels else None,
        "gap_ms": [ms(w - b) for w, b in zip(wall, busy, strict=True)] if kernels else None,
        "gap_share": [round((w - b) / w, 3) if w else None for w, b in zip(wall, busy, strict=True)] if kernels else None,
        "kernels_per_step": [p["count"] for p in per_step] if kernels else None,
        "kernel_launches_per_step": launches,
        "device_ms_per_step_by_family": ({f: ms(fam_total.get(f, 0.0) / n) for f in (*FAMILIES, "unattributed")
                                          if f in FAMILIES or f in fam_total} if kernels and n else None),
        "families_from": ("each kernel's launching op (linked correlation id)" if linked else
                          "the ops' kernel lists (this torch links no correlation id to kernels)") if kernels else None,
        "optimizer_step": {"host_ms": [ms(x) for x in opt_cpu], "device_ms": [ms(x) for x in opt_dev] if kernels else None},
        "host_sync_wait_ms": [ms(x) for x in sync_cpu],
        "top_kernels": [
            {"name": name[:160], "calls": c, "device_ms_per_step": ms(total / n) if n else None,
             "family": max(fams.items(), key=lambda kv: kv[1])[0]}
            for name, (c, total, fams) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:15]
        ] if kernels else [],
        "classification": CLASSIFICATION,
    }
    if n:
        out["mean"] = {"wall_ms": ms(sum(wall) / n), "device_busy_ms": ms(sum(busy) / n) if kernels else None,
                       "gap_ms": ms((sum(wall) - sum(busy)) / n) if kernels else None,
                       "optimizer_host_ms": ms(sum(opt_cpu) / n), "host_sync_wait_ms": ms(sum(sync_cpu) / n)}
    return out


# ------------------------------------------------------------------ the trainer callback

class StepProfiler:
    """Runs torch.profiler over the window's steps and keeps the job's own timings; writes at the end."""

    def __init__(self, out_dir: Path, writer, env_name: str, vocab: int | None):
        self.out = Path(out_dir)
        self.writer = writer
        self.env_name = env_name
        self.vocab = vocab
        self.timings = Timings()
        self.window: tuple[int, int] | None = None
        self.prof = None
        self.done = False
        self.failed = False
        self.step_end: dict[int, float] = {}    # optimizer step -> perf_counter at its end
        self.step_begin: dict[int, float] = {}
        self.t_begin: float | None = None
        self.activities: list[str] = []

    # ---- failures: a note, a notice, and the run goes on
    def fail(self, where: str, exc: BaseException) -> None:
        self.failed = True
        msg = f"profiling stopped ({where}): {type(exc).__name__}: {exc}"
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / NOTE_FILE, "a", encoding="utf-8") as fh:
                fh.write(msg + "\n" + traceback.format_exc() + "\n")
        except Exception:  # noqa: BLE001 - nowhere to write: stdout.log has it
            pass
        print(msg, flush=True)
        try:
            self.writer.emit("notice", level="warning", message=f"{self.env_name}: {msg}; the run goes on")
        except Exception:  # noqa: BLE001
            pass
        try:
            if self.prof is not None:
                self.prof.stop()
        except Exception:  # noqa: BLE001
            pass
        self.prof = None

    def _start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU]
        self.activities = ["cpu"]
        if torch.cuda.is_available():
            acts.append(ProfilerActivity.CUDA)
            self.activities.append("cuda")
            torch.cuda.synchronize()
        first, last = self.window
        self.prof = profile(activities=acts, schedule=schedule(wait=0, warmup=1, active=last - first + 1, repeat=1),
                            record_shapes=True, on_trace_ready=self._ready)
        self.prof.start()

    def _ready(self, prof) -> None:
        self.done = True

    def _tick(self, step: int) -> None:
        if self.prof is None or self.failed or self.window is None:
            return
        first, last = self.window
        if step == last:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
        self.prof.step()
        if self.done:
            self.prof.stop()   # the schedule is over: this only detaches it (the results stay)

    # ---- callback events (the job calls these from a TrainerCallback)
    def on_train_begin(self, state) -> None:
        try:
            self.t_begin = time.perf_counter()
            self.window = window_for(int(state.global_step), int(state.max_steps))
            if self.window is None:
                return
            self.writer.emit("notice", level="info", message=(
                f"{self.env_name}: profiling optimizer steps {self.window[0]}-{self.window[1]} (step {self.window[0] - 1} "
                f"warms the profiler up) into {self.out}"))
            if self.window[0] - 2 == int(state.global_step):
                self._start()
        except Exception as exc:  # noqa: BLE001
            self.fail("at the start", exc)

    def on_step_begin(self, state) -> None:
        self.step_begin[int(state.global_step) + 1] = time.perf_counter()

    def on_step_end(self, state) -> None:
        step = int(state.global_step)
        self.step_end[step] = time.perf_counter()
        if self.failed or self.window is None:
            return
        try:
            first, last = self.window
            if step == first - 2 and self.prof is None:
                self._start()
            elif first - 1 <= step <= last:
                self._tick(step)
        except Exception as exc:  # noqa: BLE001
            self.fail(f"at step {step}", exc)

    def on_train_end(self, state) -> None:
        try:
            self.write(int(state.global_step))
        except Exception as exc:  # noqa: BLE001
            self.fail("writing the results", exc)

    # ---- the files
    def step_walls(self) -> dict:
        """Every step's wall time (ms), end to end, and the share of it between the steps (logging,
        the next batch's loading and collation), from perf_counter."""
        walls, between = {}, {}
        prev = self.t_begin
        for step in sorted(self.step_end):
            if prev is not None:
                walls[step] = round((self.step_end[step] - prev) * 1e3, 2)
                if step in self.step_begin:
                    between[step] = round((self.step_begin[step] - prev) * 1e3, 2)
            prev = self.step_end[step]
        return {"wall_ms": walls, "before_step_begin_ms": between}

    def write(self, last_step: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        summary: dict = {"env": self.env_name, "window": list(self.window) if self.window else None,
                         "activities": self.activities}
        if self.prof is not None and not self.done:
            self.prof.stop()
            summary["note"] = f"the run ended at step {last_step}, inside the window: nothing profiled"
        elif self.window is None:
            summary["note"] = "no window fits this run (too short, or resumed past it): nothing profiled"
        elif not self.done or self.prof is None:
            summary["note"] = "the profiler did not finish its window" + (" (see profile_note.txt)" if self.failed else "")
        else:
            prof = self.prof
            cuda = "cuda" in self.activities
            ka = prof.key_averages()
            sort = "self_device_time_total" if cuda else "self_cpu_time_total"
            head = f"steps {self.window[0]}-{self.window[1]}, sorted by {sort}, top {TOP}\n"
            (self.out / DEVICE_TABLE).write_text(
                head + (ka.table(sort_by=sort, row_limit=TOP, max_name_column_width=90) if cuda else
                        "no CUDA device: device times are absent (the CPU table is cpu_table.txt)\n"), encoding="utf-8")
            (self.out / CPU_TABLE).write_text(
                f"steps {self.window[0]}-{self.window[1]}, sorted by self_cpu_time_total, top {TOP}\n"
                + ka.table(sort_by="self_cpu_time_total", row_limit=TOP, max_name_column_width=90), encoding="utf-8")
            try:
                summary["profile"] = summarize_events(prof.events(), list(range(self.window[0], self.window[1] + 1)),
                                                      self.vocab)
            except Exception as exc:  # noqa: BLE001 - the tables are written; say why the summary is short
                summary["profile_error"] = f"{type(exc).__name__}: {exc}"
        walls = self.step_walls()
        summary["steps_perf_counter"] = walls
        n_steps = max(1, len(walls["wall_ms"]))
        summary["job_overhead"] = {"note": ("perf_counter around each call, whole run; callbacks include the event "
                                            "writing they do, so 'event writing' is counted inside them too"),
                                   "steps": n_steps, "by_call": self.timings.summary(n_steps)}
        tmp = self.out / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
        os.replace(tmp, self.out / SUMMARY_FILE)


def attach(trainer, out_dir: Path, writer, heartbeat, env_name: str):
    """Add the profiler to ``trainer`` and time the job's own per-step work; returns the StepProfiler,
    or None when it could not be attached (a note says why; the run goes on)."""
    from transformers import TrainerCallback

    vocab = None
    try:
        vocab = int(getattr(getattr(trainer.model, "config", None), "vocab_size", 0) or 0) or None
    except Exception:  # noqa: BLE001
        vocab = None
    sp = StepProfiler(out_dir, writer, env_name, vocab)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        t = sp.timings
        events = ("on_step_begin", "on_step_end", "on_substep_end", "on_log", "on_save", "on_epoch_end",
                  "on_pre_optimizer_step", "on_optimizer_step")
        for cb in list(trainer.callback_handler.callbacks):
            for ev in events:
                if getattr(type(cb), ev, None) is not getattr(TrainerCallback, ev, None):
                    t.wrap(cb, ev, f"callback {type(cb).__name__}.{ev}")
        t.wrap(writer, "emit", "event writing (EventWriter.emit, also inside the callbacks and heartbeat)")
        if heartbeat is not None:
            t.wrap(heartbeat, "beat", "heartbeat (NVML, torch memory, RSS, its event; own thread)")
        if hasattr(trainer, "_maybe_log_save_evaluate"):
            t.wrap(trainer, "_maybe_log_save_evaluate",
                   "trainer log/save/eval (includes waiting for the step's loss: a GPU sync)")

        class ProfileCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                sp.on_train_begin(state)

            def on_step_begin(self, args, state, control, **kw):
                sp.on_step_begin(state)

            def on_step_end(self, args, state, control, **kw):
                sp.on_step_end(state)

            def on_train_end(self, args, state, control, **kw):
                sp.on_train_end(state)

        trainer.add_callback(ProfileCallback())
    except Exception as exc:  # noqa: BLE001
        sp.fail("attaching", exc)
        return None
    return sp
