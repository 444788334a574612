"""The training job: ``python -m medtui_engine.train.job RUN_DIR [--resume]``.

Started detached by :func:`medtui_engine.runs.jobs.launch_job`; reads ``spec.json``, writes
``events.jsonl`` (it is the only writer), checkpoints under ``checkpoints/`` and the final LoRA
adapter under ``adapter/`` (written to a temp dir and renamed when complete).

Stop: SIGTERM (or SIGINT) or a ``STOP`` file in the run directory -> the trainer callback asks
the trainer to save a checkpoint and stop at the end of the current step -> ``stopped``.
Exit status: 0 finished or stopped, 1 failed.

Out of GPU memory: the job ends ``failed`` with the reason and the next setting to try (a smaller
micro-batch with the effective batch kept, gradient checkpointing, a shorter max sequence length:
:func:`medtui_engine.train.resume.oom_advice`), in the failed event's ``error`` and, as settings,
its ``advice``. No checkpoint is written at the failure: an OOM can strike inside the optimizer
step, after some LoRA weights and Adam moments were updated and others not, and the step's
gradients are half accumulated; a checkpoint of that state would look complete and be wrong. The
newest checkpoint (periodic, each epoch, or at a stop) is what a resume continues from.

``--resume --set JSON`` continues with other settings (``runs resume --micro-batch ...``): the job
records them as a ``resume_settings`` event; spec.json keeps the run's first settings.

Test switch: ``MEDTUI_FAULT=oom@K`` in the job's environment raises a CUDA-style out-of-memory
error (torch.OutOfMemoryError) as optimizer step K begins, on the CPU too. Never active unless set.

Diagnosis switch: ``MEDTUI_TORCH_PROFILE=DIR`` in the job's environment runs torch.profiler over
optimizer steps 5-7 (step 4 warms it up; a run shorter than 7 steps: steps 2-4 at most) and writes
device and CPU key_averages tables and ``profile_summary.json`` (wall vs device-busy time per step,
device time by kernel family, the job's own per-step overhead) to DIR (relative: inside the run
directory); :mod:`medtui_engine.train.profile` says what each number is. Rank 0 only. A failure of
the profiler writes ``profile_note.txt`` there and a notice; the run goes on. Never active unless set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections import deque
from importlib import metadata
from pathlib import Path

# Before anything that could import transformers & co: offline, and Unsloth's compile cache out
# of the working directory.
from ..offline import apply_offline, skip_cuda_only_packages
from ..paths import ADAPTER_META, home_dir
from ..runs.events import EventWriter
from ..runs.jobs import STOP_FILE, proc_start_time
from ..runs.store import ADAPTER_DIR, CHECKPOINTS_DIR, EVENTS_FILE, newest_checkpoint
from .resume import RESUME_EVENT, effective_spec, is_oom, oom_advice, oom_message, parse_set
from .spec import TrainSpec

FAULT_ENV = "MEDTUI_FAULT"
PROFILE_ENV = "MEDTUI_TORCH_PROFILE"


def _versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("medtui", "torch", "transformers", "trl", "peft", "datasets", "unsloth", "bitsandbytes", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class StopFlag:
    """Set by SIGTERM/SIGINT or by a STOP file; checked by the trainer callback each step."""

    def __init__(self, run_dir: Path):
        self.stop_file = run_dir / STOP_FILE
        self.reason: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # an SSH drop must never end a run (the job has no terminal anyway: belt and braces)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _on_signal(self, signum, frame) -> None:
        if self.reason is None:
            self.reason = f"signal {signal.Signals(signum).name}"

    def requested(self) -> bool:
        if self.reason is None and os.path.exists(self.stop_file):
            self.reason = "stop file"
        return self.reason is not None


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Heartbeat(threading.Thread):
    """Every few seconds: GPU memory/utilisation/temperature/power (NVML), torch memory, RSS."""

    def __init__(self, writer: EventWriter, interval: float):
        super().__init__(name="medtui-heartbeat", daemon=True)
        self.writer = writer
        self.interval = interval
        self._stop_event = threading.Event()
        self.gpu_indices: list[int] | None = None   # NVML indices in use, once the model is on a GPU

    def beat(self) -> None:
        from ..gpu import read_nvml, visible_gpu_indices

        info = read_nvml(with_processes=False)
        visible = visible_gpu_indices()
        gpus = []
        for g in info.gpus:
            if self.gpu_indices is not None and g.index not in self.gpu_indices:
                continue
            if visible is not None and g.index not in visible:
                continue
            gpus.append({"index": g.index, "mem_used_mib": g.memory_used_mib, "mem_total_mib": g.memory_total_mib,
                         "util_pct": g.utilization_pct, "temp_c": g.temperature_c, "power_w": g.power_w})
        alloc = peak = None
        torch = sys.modules.get("torch")  # never import torch here: it may still be loading
        try:
            if torch is not None and torch.cuda.is_initialized():
                alloc = round(torch.cuda.memory_allocated() / 2**20, 1)
                peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        except Exception:  # a heartbeat must never kill the run
            pass
        self.writer.emit("heartbeat", gpus=gpus, torch_allocated_mib=alloc, torch_peak_mib=peak, rss_mib=_rss_mib())

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            if self._stop_event.is_set():
                break
            try:
                self.beat()
            except Exception as exc:  # keep beating; say why once in stdout.log
                print(f"heartbeat: {type(exc).__name__}: {exc}", flush=True)

    def stop(self) -> None:
        self._stop_event.set()

    def halt(self) -> None:
        """Stop and wait for a beat in progress: the terminal event must be the file's last line."""
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)


def _friendly_error(exc: BaseException, spec: TrainSpec, progress: Progress | None = None) -> tuple[str, dict]:
    """(the failure's sentence, extra fields of the failed event: an OOM's advice)."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if is_oom(exc):
        advice = oom_advice(spec, world=progress.world if progress else 1,
                            longest=progress.longest if progress else None, cuda=not (progress and progress.cpu),
                            loading=not (progress and progress.began))
        return oom_message(exc, advice), {"advice": advice.as_dict()}
    return text[:1000], {}


def parse_fault(value: str | None) -> int | None:
    """The step of ``MEDTUI_FAULT=oom@K`` (None when unset). UserError when it is not understood."""
    if not value:
        return None
    kind, _, step = value.partition("@")
    if kind != "oom" or not step.isdigit() or int(step) < 1:
        from ..errors import UserError

        raise UserError(f"{FAULT_ENV}={value} is not understood: the test switch takes oom@STEP (e.g. oom@3)")
    return int(step)


def _fault_callback(step: int):
    """Raise a CUDA-style out-of-memory error as optimizer step ``step`` begins (MEDTUI_FAULT)."""
    import torch
    from transformers import TrainerCallback

    class FaultCallback(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step + 1 == step:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate 2.00 GiB. (raised by {FAULT_ENV}=oom@{step}, "
                    "medtui's test switch)")

    return FaultCallback()


def _attach_profiler(trainer, out_dir: Path, writer: EventWriter, heartbeat) -> None:
    """MEDTUI_TORCH_PROFILE: profile a few steps into ``out_dir``; never breaks the run."""
    try:
        from .profile import attach

        attach(trainer, out_dir, writer, heartbeat, PROFILE_ENV)
    except Exception as exc:  # noqa: BLE001 - diagnosis only: say why, train on
        print(f"{PROFILE_ENV}: not profiling: {type(exc).__name__}: {exc}", flush=True)


class Progress:
    """What the job knows about its progress, shared by the callback and the failure handler."""

    def __init__(self, step: int = 0):
        self.step = step
        self.t0 = time.monotonic()
        self.last_loss: float | None = None
        self.last_checkpoint: str | None = None
        # for the advice after an OOM
        self.world = 1
        self.longest: int | None = None     # the longest training row, in tokens (after truncation)
        self.cpu = False
        self.prev_examples: int | None = None   # the rows the run trained on before this resume
        self.began = False                      # the weights are loaded (an OOM before: the weights)


def _make_callback(writer: EventWriter, stop: StopFlag, spec: TrainSpec, begin_fields: dict,
                   tokens_per_step: float, progress: Progress):
    from transformers import TrainerCallback

    from .ddp import any_rank, rank_env

    rank, _, world = rank_env()

    class EventsCallback(TrainerCallback):
        """Turns the trainer's progress into events; asks for a checkpoint and a stop when told."""

        def __init__(self):
            self.window: deque = deque(maxlen=20)   # (monotonic time, step) of recent logs

        def on_train_begin(self, args, state, control, **kw):
            progress.began = True
            progress.step = int(state.global_step)
            progress.t0 = time.monotonic()
            self.window.append((progress.t0, state.global_step))
            writer.emit("train_begin", total_steps=int(state.max_steps), start_step=int(state.global_step),
                        epochs=float(args.num_train_epochs), **begin_fields)
            print(f"training: steps {state.global_step}/{state.max_steps}", flush=True)

        def on_step_end(self, args, state, control, **kw):
            progress.step = int(state.global_step)
            if world > 1:  # each rank's own evidence, in its rank-N.log
                print(f"rank {rank}: step {state.global_step}/{state.max_steps} done", flush=True)
            if any_rank(stop.requested()) and state.global_step < state.max_steps:
                control.should_save = True
                control.should_training_stop = True

        def on_epoch_end(self, args, state, control, **kw):
            already = progress.last_checkpoint and Path(progress.last_checkpoint).name == f"checkpoint-{state.global_step}"
            if spec.save_every_epoch and not already:
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" not in logs or "train_runtime" in logs:
                return
            now = time.monotonic()
            step = int(state.global_step)
            self.window.append((now, step))
            t_a, s_a = self.window[0]
            rate = (step - s_a) / (now - t_a) if now > t_a and step > s_a else None  # steps per second
            tps = rate * tokens_per_step if rate else None
            eta = (state.max_steps - step) / rate if rate else None
            loss = logs.get("loss")
            progress.last_loss = float(loss) if isinstance(loss, (int, float)) else None
            ev = writer.emit("log", step=step, epoch=round(float(state.epoch or 0.0), 4), loss=loss,
                             lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                             tokens_per_s=round(tps, 1) if tps else None,
                             elapsed_s=round(now - progress.t0, 3), eta_s=round(eta, 1) if eta is not None else None)
            print(f"step {step}/{state.max_steps} loss {ev['loss']} lr {ev['lr']} tok/s {ev['tokens_per_s']}", flush=True)

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            metrics = metrics or {}
            writer.emit("eval", step=int(state.global_step), epoch=round(float(state.epoch or 0.0), 4),
                        eval_loss=metrics.get("eval_loss"))

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            progress.last_checkpoint = str(path)
            writer.emit("checkpoint", step=int(state.global_step), path=str(path))

    return EventsCallback()


def _write_adapter(model, tokenizer, run_dir: Path, spec: TrainSpec, backend: str, step: int,
                   loaded_in_4bit: bool) -> Path:
    """Save the LoRA adapter to a temp dir, then rename it to ``adapter/`` (never half-written)."""
    import json

    final = run_dir / ADAPTER_DIR
    tmp = run_dir / f".{ADAPTER_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    meta = {"base_model": spec.model, "base_model_label": spec.model_label, "template": spec.template,
            "mask_prompt": spec.mask_prompt, "backend": backend, "step": step, "lora_r": spec.lora_r,
            "lora_alpha": spec.lora_alpha, "max_seq_length": spec.max_seq_length, "run_id": run_dir.name,
            # what was loaded, not what was asked: on the CPU a 4-bit request trains in 16/32-bit
            "base_loaded_in_4bit": bool(loaded_in_4bit)}
    (tmp / ADAPTER_META).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    if final.exists():
        old = run_dir / f".{ADAPTER_DIR}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def _cpu_trainer_class(base):
    """trl's SFTTrainer computes the loss with a Triton kernel, which has no CPU driver. On the CPU
    (CI, a laptop trial) the loss comes from the model's own forward instead: the same cross-entropy
    over the same labels, with the full logits. Unsloth's CPU fallback does the equivalent itself."""
    from transformers import Trainer

    class CpuSFTTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {k: v for k, v in inputs.items() if k != "fused_lm_head"}
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def _load_optimizer_and_scheduler(self, checkpoint):
            # several CPU processes: the trainer maps the optimizer state to "cpu:<rank>", which torch
            # cannot restore; on the CPU every rank's state belongs on the one CPU device
            if checkpoint is None or self.args.world_size <= 1:
                return super()._load_optimizer_and_scheduler(checkpoint)
            import torch

            optim_file, sched_file = Path(checkpoint) / "optimizer.pt", Path(checkpoint) / "scheduler.pt"
            if optim_file.is_file() and sched_file.is_file():
                self.optimizer.load_state_dict(torch.load(optim_file, map_location="cpu", weights_only=True))
                self.lr_scheduler.load_state_dict(torch.load(sched_file, weights_only=True))

    return CpuSFTTrainer


def _nvml_index(torch) -> int:
    """The NVML index of torch's current CUDA device (CUDA_VISIBLE_DEVICES renumbers devices)."""
    from ..gpu import visible_gpu_indices

    cur = torch.cuda.current_device()
    visible = visible_gpu_indices()
    return visible[cur] if visible and cur < len(visible) else cur


def _visible_nvml(torch) -> list[int]:
    """The NVML indices of every GPU this box's ranks use (rank 0's heartbeat reports them all)."""
    from ..gpu import visible_gpu_indices

    visible = visible_gpu_indices()
    return list(visible) if visible else list(range(torch.cuda.device_count()))


def _record_data(run_dir: Path, record: dict, writer: EventWriter) -> None:
    """data.json: the data file's hash and the exact split. On resume, a changed file is said plainly."""
    path = run_dir / "data.json"
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = {}
        if before.get("sha256") != record["sha256"] or before.get("train_rows") != record["train_rows"]:
            writer.emit("notice", level="warning", message=(
                f"the data file {record['path']} changed since this run started (sha256 or split differs): "
                "the resumed training continues on the new content"))
        return
    tmp = run_dir / ".data.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def train(run_dir: Path, spec: TrainSpec, backend: str, writer: EventWriter, stop: StopFlag,
          resume_ckpt: Path | None, progress: Progress, heartbeat: Heartbeat | None = None) -> int:
    from .backends import import_backend_first

    import_backend_first(backend)  # unsloth before transformers/trl/peft
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from .backends import batching_args, load_for_training, optimizer_for
    from .data import (
        data_record,
        load_train_cases,
        plant_canaries,
        privacy_record,
        split_train_eval,
        tokenize_cases,
    )
    from .ddp import any_rank, gather_ranks, rank_env, split_batch

    rank, _, world = rank_env()
    progress.world = world
    fault_step = parse_fault(os.environ.get(FAULT_ENV))
    grad_accum, batch_note = split_batch(spec.micro_batch, spec.grad_accum, world)
    if batch_note:
        writer.emit("notice", message=batch_note, level="info")

    # the data first: a bad file should fail in seconds, not after loading a 14B model
    cases, notes = load_train_cases(spec.data, spec.field_question, spec.field_cot, spec.field_response)
    for note in notes:
        writer.emit("notice", message=note, level="warning")
    if spec.limit_rows:
        cases = cases[: spec.limit_rows]
    train_cases, eval_cases = split_train_eval(cases, spec.eval_fraction, spec.seed)
    privacy = privacy_record(cases, spec.allow_identifiers)  # the identifier gate, on what is trained
    canary_cases, canaries = plant_canaries(run_dir, spec.canaries, spec.canary_repeats)  # every rank trains them
    if rank == 0:
        _record_data(run_dir, data_record(spec.data, cases, train_cases, eval_cases, spec.eval_fraction, spec.seed,
                                          privacy, canaries), writer)
    if canary_cases:
        writer.emit("notice", level="info", message=(
            f"{canaries['count']} canaries planted, {canaries['repeats']} times each ({len(canary_cases)} extra "
            f"training cases); probe the model with `medtui probe {run_dir.name}`"))
        train_cases = train_cases + canary_cases

    # the LoRA weights start from the run's seed (the trainer seeds only after the model is built):
    # the same run twice is the same numbers, and a resume can be checked against a run left alone
    from transformers import set_seed

    set_seed(spec.seed)
    loaded = load_for_training(spec, spec.model, backend)
    if heartbeat is not None and torch.cuda.is_available():
        heartbeat.gpu_indices = [_nvml_index(torch)] if world == 1 else _visible_nvml(torch)
    for note in loaded.notices:
        writer.emit("notice", message=note, level="info")
        print("notice:", note, flush=True)
    if any_rank(stop.requested()):
        if heartbeat is not None:
            heartbeat.halt()
        writer.emit("stopped", step=0, checkpoint=None, reason=stop.reason or "stop requested")
        return 0

    train_rows, counts = tokenize_cases(train_cases, spec.template, loaded.tokenizer, spec.max_seq_length, spec.mask_prompt)
    if not train_rows:
        from ..errors import UserError

        raise UserError(f"{spec.data}: no case has anything to learn within max_seq_length {spec.max_seq_length} "
                        "(the prompts alone fill it): raise --max-seq-length")
    if counts["truncated"] or counts["dropped"]:
        msg = (f"{counts['truncated']} of {len(train_cases)} cases are longer than max_seq_length {spec.max_seq_length} "
               f"tokens and were cut" + (f"; {counts['dropped']} left nothing to learn and were skipped" if counts["dropped"] else ""))
        writer.emit("notice", message=msg, level="warning")
    eval_rows, _ = tokenize_cases(eval_cases, spec.template, loaded.tokenizer, spec.max_seq_length, spec.mask_prompt)
    progress.longest = max(len(r["input_ids"]) for r in train_rows)
    if progress.prev_examples is not None and progress.prev_examples != len(train_rows):
        writer.emit("notice", level="warning", message=(
            f"with max sequence length {spec.max_seq_length}, {len(train_rows)} cases have something to learn "
            f"(before this resume: {progress.prev_examples}): the rest of this epoch is drawn from the new set, so a "
            "few cases of this epoch may come twice or not at all"))

    cuda = torch.cuda.is_available()
    progress.cpu = not cuda
    if rank == 0 and resume_ckpt is None and world == 1:   # the fit probe: measure the longest batch, correct
        from .fitprobe import fit_probe

        progress.began = True   # the weights are in: an out-of-memory from here on is the training's, not loading's
        loaded = fit_probe(run_dir, spec, loaded, train_rows, backend, writer,
                           reload=lambda: load_for_training(spec, spec.model, backend))
        grad_accum = spec.grad_accum
    optim, note = optimizer_for(spec, cuda)
    if note:
        writer.emit("notice", message=note, level="info")
    n = len(train_rows)
    batches = math.ceil(math.ceil(n / world) / spec.micro_batch)   # per process (the sampler shares the rows)
    steps_per_epoch = max(1, batches // grad_accum + int(batches % grad_accum > 0))
    begin_fields = {
        "steps_per_epoch": steps_per_epoch, "num_examples": n, "train_tokens": counts["tokens"],
        "micro_batch": spec.micro_batch, "grad_accum": grad_accum, "max_seq_length": spec.max_seq_length,
        "model": spec.model, "model_label": spec.model_label, "device": loaded.device,
        # informational extras
        "backend": backend, "precision": loaded.dtype, "load_in_4bit": loaded.load_in_4bit, "optim": optim,
        "eval_examples": len(eval_rows), "truncated": counts["truncated"],
    }
    if world > 1:  # tokens/s below is the total over the ranks: a step is every rank's batch
        begin_fields.update(world_size=world, ranks=gather_ranks())
    tokens_per_step = counts["tokens"] / steps_per_epoch
    has_eval = bool(eval_rows)
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if spec.eval_steps else "epoch"
    cfg = SFTConfig(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
        per_device_train_batch_size=spec.micro_batch, per_device_eval_batch_size=spec.micro_batch,
        gradient_accumulation_steps=grad_accum, num_train_epochs=spec.epochs,
        max_steps=spec.max_steps if spec.max_steps else -1, learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.scheduler, warmup_steps=spec.warmup_ratio, weight_decay=spec.weight_decay,
        optim=optim, seed=spec.seed, logging_steps=spec.logging_steps,
        save_strategy="steps" if spec.save_steps else "no", save_steps=spec.save_steps or 500,
        save_total_limit=spec.keep_checkpoints,
        eval_strategy=eval_strategy, eval_steps=spec.eval_steps or None,
        bf16=loaded.dtype == "bf16", fp16=loaded.dtype == "fp16", use_cpu=not cuda,
        **{"max_length": spec.max_seq_length, **batching_args(spec)}, packing=False, report_to="none", disable_tqdm=True,
        # hf: the trainer turns checkpointing on; Unsloth did it its own way in get_peft_model
        gradient_checkpointing=spec.gradient_checkpointing and backend == "hf",
        dataloader_num_workers=0, dataset_num_proc=None, save_only_model=False,
        **({"ddp_find_unused_parameters": False} if world > 1 else {}),
    )
    callback = _make_callback(writer, stop, spec, begin_fields, tokens_per_step, progress)
    callbacks = [callback] + ([_fault_callback(fault_step)] if fault_step else [])
    trainer_cls = SFTTrainer if cuda or backend == "unsloth" else _cpu_trainer_class(SFTTrainer)
    trainer = trainer_cls(
        model=loaded.model, processing_class=loaded.tokenizer, args=cfg,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
        callbacks=callbacks,
    )
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir and rank == 0:
        _attach_profiler(trainer, Path(profile_dir), writer, heartbeat)
    if cuda:  # the loading peak goes into train_begin; the peak reported at the end is training's own
        begin_fields["load_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    trainer.train(resume_from_checkpoint=str(resume_ckpt) if resume_ckpt else None)
    state = trainer.state
    step = int(state.global_step)
    if any_rank(stop.requested()) and step < state.max_steps:
        ckpt = progress.last_checkpoint
        if ckpt is None or Path(ckpt).name != f"checkpoint-{step}":
            # the trainer did not save at the stop (it always should): save the full state ourselves
            trainer._save_checkpoint(trainer.model, trial=None)
            ckpt = str(run_dir / CHECKPOINTS_DIR / f"checkpoint-{step}")
            writer.emit("checkpoint", step=step, path=ckpt)
        if heartbeat is not None:
            heartbeat.halt()
        writer.emit("stopped", step=step, checkpoint=ckpt, reason=stop.reason or "stop requested")
        print(f"stopped at step {step}; checkpoint {ckpt}", flush=True)
        return 0
    if rank != 0:  # rank 0 alone writes the adapter and the terminal event
        print(f"rank {rank}: trained to step {step}", flush=True)
        if heartbeat is not None:
            heartbeat.halt()
        return 0
    adapter = _write_adapter(trainer.model, loaded.tokenizer, run_dir, spec, backend, step, loaded.load_in_4bit)
    runtime = time.monotonic() - progress.t0
    peak = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    if heartbeat is not None:
        heartbeat.halt()
    writer.emit("finished", step=step, adapter=str(adapter), runtime_s=round(runtime, 2),
                final_loss=progress.last_loss, torch_peak_mib=peak)
    print(f"finished at step {step}; adapter {adapter}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medtui_engine.train.job")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    ap.add_argument("--nproc", type=int, default=1, help="processes on this box: more than 1 runs them through torchrun")
    ap.add_argument("--worker", action="store_true", help="one rank of a torchrun run (started by the job)")
    ap.add_argument("--set", dest="settings", metavar="JSON",
                    help="with --resume: settings that change from here on (checked by `medtui runs resume`)")
    a = ap.parse_args(argv)
    run_dir = Path(a.run_dir).resolve()

    apply_offline()
    skip_cuda_only_packages()
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(home_dir() / "cache" / "unsloth_compiled_cache"))
    if a.worker:
        return _rank_main(run_dir, a.resume)
    stop = StopFlag(run_dir)
    stop.install()
    writer = EventWriter(run_dir / EVENTS_FILE)
    try:
        spec = effective_spec(run_dir)   # spec.json, with the earlier resumes' changes
        new_settings = parse_set(a.settings) if a.resume else {}
    except (OSError, ValueError, TypeError) as exc:
        writer.emit("failed", step=0, error=f"cannot read {run_dir / 'spec.json'}: {exc}",
                    error_type=type(exc).__name__, traceback_tail="")
        writer.close()
        return 1
    progress = Progress()
    if a.resume:
        from ..runs.events import read_events

        begins = [e for e in read_events(run_dir / EVENTS_FILE) if e.get("type") == "train_begin"]
        progress.prev_examples = begins[-1].get("num_examples") if begins else None
    resume_ckpt = newest_checkpoint(run_dir) if a.resume else None
    resumed_from = None
    if a.resume:
        resumed_from = int(resume_ckpt.name.rsplit("-", 1)[1]) if resume_ckpt else 0
        progress.step = resumed_from
    heartbeat = Heartbeat(writer, spec.heartbeat_s)
    try:
        from .backends import resolve_backend

        world = max(1, a.nproc) * max(1, spec.nnodes)
        backend, why = resolve_backend(spec.backend, world)
        ddp_fields = {"world_size": world, "nproc_per_node": a.nproc, "nnodes": spec.nnodes} if world > 1 else {}
        start = writer.emit("job_start", pid=os.getpid(), start_time=proc_start_time(os.getpid()), backend=backend,
                            resumed_from=resumed_from, versions=_versions(), backend_reason=why, **ddp_fields)
        if new_settings:
            from .resume import RESUMABLE, describe_change

            before = {n: getattr(spec, n) for n in RESUMABLE}
            for name, value in new_settings.items():
                setattr(spec, name, value)
            spec.validate(check_files=False)
            start = writer.emit(RESUME_EVENT, step=resumed_from or 0, settings=new_settings,
                                previous={n: before[n] for n in new_settings},
                                change=describe_change(before, new_settings, world))
        print(f"job {os.getpid()}: backend {backend} ({why})" + (f", resuming from step {resumed_from}" if a.resume else ""), flush=True)
        if world > 1:  # the ranks write from here on (rank 0 alone); this process watches them
            from .ddp import supervise

            writer.close()
            return supervise(run_dir, "medtui_engine.train.job", a.nproc, spec, ["--resume"] if a.resume else [],
                             stop, start["seq"])
        heartbeat.beat()
        heartbeat.start()
        return train(run_dir, spec, backend, writer, stop, resume_ckpt, progress, heartbeat)
    except BaseException as exc:  # every way out must leave exactly one terminal event
        from ..errors import UserError

        tb = traceback.format_exc()
        print(tb, flush=True)
        extra: dict = {}
        if isinstance(exc, UserError):
            message = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        else:
            message, extra = _friendly_error(exc, spec, progress)
        if "advice" in extra:  # the checkpoint a resume would continue from (none is written now: see above)
            ckpt = newest_checkpoint(run_dir)
            extra["checkpoint"] = str(ckpt) if ckpt else None
        try:
            heartbeat.halt()
            writer.emit("failed", step=progress.step, error=message, error_type=type(exc).__name__,
                        traceback_tail=tb[-4000:], **extra)
        except Exception:
            pass
        return 1
    finally:
        heartbeat.halt()
        writer.close()


def _rank_main(run_dir: Path, resume: bool) -> int:
    """One rank of a several-process run (started by torchrun). Rank 0 writes the events (on other
    boxes of a several-box run, their first rank writes that box's); every
    rank says in its rank-N.log that it is done, or why it failed (the job reads those lines)."""
    from . import ddp

    rank, local, world = ddp.init_worker(run_dir)
    stop = StopFlag(run_dir)
    stop.install()
    # the first rank of each box writes that box's events (one box: rank 0 alone); the checkpoints
    # and the adapter are global rank 0's
    writer = EventWriter(run_dir / EVENTS_FILE) if local == 0 else ddp.NullWriter()
    progress = Progress()
    heartbeat = None
    try:
        spec = effective_spec(run_dir)   # the job recorded this resume's changes before starting the ranks
        resume_ckpt = newest_checkpoint(run_dir) if resume else None
        if resume_ckpt is not None:
            progress.step = int(resume_ckpt.name.rsplit("-", 1)[1])
        from .backends import resolve_backend

        backend, _ = resolve_backend(spec.backend, world)
        if local == 0:
            heartbeat = Heartbeat(writer, spec.heartbeat_s)
            heartbeat.beat()
            heartbeat.start()
        code = train(run_dir, spec, backend, writer, stop, resume_ckpt, progress, heartbeat)
        ddp.mark(ddp.DONE_MARK, rank=rank, step=progress.step)
        return code
    except BaseException as exc:
        from ..errors import UserError

        tb = traceback.format_exc()
        print(tb, flush=True)
        if isinstance(exc, UserError):
            message = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        else:
            message = _friendly_error(exc, spec, progress)[0] if "spec" in locals() else str(exc)[:1000]
        if heartbeat is not None:
            heartbeat.halt()
        # the job writes the one failed event, with the first rank's error
        ddp.mark(ddp.ERROR_MARK, rank=rank, step=progress.step, error=message, error_type=type(exc).__name__,
                 traceback_tail=tb[-4000:])
        return 1
    finally:
        if heartbeat is not None:
            heartbeat.halt()
        writer.close()
        ddp.finish_worker()


if __name__ == "__main__":
    sys.exit(main())
