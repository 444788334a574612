"""Start and resume training runs: the calls the CLI and the TUI share (no heavy imports).

    started = start_run(ctx.runs_dir, spec, force=False)   # validates, picks a GPU, launches
    started.run_dir, started.pid, started.warnings
    resume_run(ctx.runs_dir, run_dir)                        # stopped / failed / crashed runs
    resume_run(ctx.runs_dir, run_dir, {"micro_batch": 2})    # ... with other settings (train/resume.py)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .spec import SpecError, TrainSpec

JOB_MODULE = "medtui_engine.train.job"


@dataclass(frozen=True)
class Started:
    run_dir: Path
    pid: int
    warnings: tuple[str, ...]
    past_seq: int = -1             # events up to this seq belong to earlier jobs of the run
    resumed_from: str | None = None  # the checkpoint directory name, for a resume
    change: str | None = None      # a resume's change of settings, in words
    settings: dict | None = None   # ... and as values


def pick_gpu(runs_dir: Path, force: bool) -> tuple[dict, list[str]]:
    """Pick the GPU for a new job: (environment for the job, warnings).

    Refuses (UserError) when every GPU we may use has a medtui job training on it, unless forced.
    """
    from ..runs.guard import choose_gpu

    choice = choose_gpu(runs_dir)
    env: dict = {}
    warnings: list[str] = []
    if choice.index is not None:
        # NVML numbers GPUs by PCI bus; make CUDA agree, then show the job only its GPU
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(choice.index)}
    if choice.all_busy:
        lines = [b.describe() for b in choice.busy]
        if not force:
            first = next((b for b in choice.busy if b.run), None)
            how = f"stop it with `medtui runs stop {Path(first.run).name}`, " if first else ""
            raise UserError("; ".join(lines) + f". Two trainings on one GPU slow both and may run out of memory: "
                            f"{how}choose another GPU with CUDA_VISIBLE_DEVICES, or pass --force to start anyway")
        warnings = [f"warning: {line}; starting anyway (--force)" for line in lines]
    elif choice.busy and choice.index is not None:
        warnings = [f"{b.describe()}; this job uses GPU {choice.index}" for b in choice.busy]
    return env, warnings


def pick_gpus(runs_dir: Path, spec: TrainSpec, force: bool) -> tuple[dict, list[str], list[str]]:
    """The environment, warnings and job arguments for the spec's processes. One process: the
    single-GPU choice of :func:`pick_gpu`, unchanged. Several (``--gpus``, ``--nproc``): every GPU
    asked for must be free of other medtui jobs (unless forced), and the effective batch must split
    over the processes. UserError otherwise."""
    from .backends import resolve_backend
    from .ddp import plan_for, split_batch

    plan = plan_for(spec)
    if not plan.distributed:
        env, warnings = pick_gpu(runs_dir, force)
        return env, warnings, []
    split_batch(spec.micro_batch, spec.grad_accum, plan.world)   # refuses when it cannot divide
    resolve_backend(spec.backend, plan.world)                    # refuses unsloth for several processes
    warnings: list[str] = []
    if not plan.gpu_indices:  # CPU processes (--nproc): gloo, and no GPU for them even on a GPU box
        env = {"CUDA_VISIBLE_DEVICES": ""}
    else:
        from ..runs.guard import busy_gpus

        busy = busy_gpus(runs_dir, visible=list(plan.gpu_indices))
        if busy and not force:
            raise UserError("; ".join(b.describe() for b in busy) + ". Two trainings on one GPU slow both and may "
                            "run out of memory: stop that run, name other GPUs with --gpus, or pass --force")
        warnings = [f"warning: {b.describe()}; starting anyway (--force)" for b in busy]
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, plan.gpu_indices))}
    return env, warnings, ["--nproc", str(plan.nproc)]


def prepare_spec(spec: TrainSpec) -> TrainSpec:
    """Validate and resolve the spec (model 'demo' -> its directory, absolute paths). UserError if invalid."""
    from ..demo import model_label, resolve_model

    try:
        spec.validate(check_files=True)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    try:
        model_dir = resolve_model(spec.model)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    spec.model = str(model_dir)
    spec.model_label = spec.model_label or model_label(model_dir)
    spec.data = str(Path(spec.data).expanduser().resolve())
    if spec.canaries:  # the job runs in its run directory
        spec.canaries = str(Path(spec.canaries).expanduser().resolve())
    return spec


def start_run(runs_dir: Path, spec: TrainSpec, force: bool = False, name: str | None = None) -> Started:
    """Validate, check the data (its mapping, and the identifier gate), pick a GPU, create the run
    directory, write spec.json (with the data's audit) and launch the job.

    Raises UserError before anything is written when the data does not map to the spec's fields, and
    :class:`medtui_engine.privacy.gate.IdentifierGate` when it holds possible identifiers of kinds
    the spec's ``allow_identifiers`` does not acknowledge."""
    from ..privacy.gate import check_run_data, parse_kinds
    from ..runs.jobs import launch_job
    from ..runs.store import new_run_dir

    spec = prepare_spec(spec)
    spec.allow_identifiers = ",".join(parse_kinds(spec.allow_identifiers))
    audit = check_run_data(spec)
    from .recipe import resolve_recipe

    resolve_recipe(spec)   # the recipe (auto or seed) into the spec's settings and spec.json; kept if resolved
    gpu_env, warnings, job_args = pick_gpus(runs_dir, spec, force)
    run_dir = new_run_dir(runs_dir, name or Path(spec.model).name)
    spec.write(run_dir, extra={"gpu": gpu_env.get("CUDA_VISIBLE_DEVICES"), "data_audit": audit.as_dict()})
    pid = launch_job(JOB_MODULE, run_dir, job_args, env={**os.environ, **gpu_env})
    return Started(run_dir, pid, tuple(warnings))


def resume_run(runs_dir: Path, run_dir: Path, settings: dict | None = None, force: bool = False) -> Started:
    """Continue a stopped, failed or crashed run from its newest checkpoint, in the same directory.

    ``settings``: setting name -> value to change from here on (micro_batch, grad_accum,
    max_seq_length, gradient_checkpointing; see :func:`medtui_engine.train.resume.resume_settings`:
    the effective batch is kept, a micro-batch alone derives the accumulation). UserError when a
    setting cannot change on resume, with what to do instead."""
    import json

    from ..jobs.status import JobStatus
    from ..runs.events import last_seq
    from ..runs.jobs import launch_job
    from ..runs.store import EVENTS_FILE, load_run, newest_checkpoint
    from .ddp import plan_for
    from .resume import describe_change, effective_spec, resume_flags, resume_settings

    run_dir = Path(run_dir)
    spec, state = load_run(run_dir)
    if not spec:
        raise UserError(f"run {run_dir.name} has no readable spec.json: it cannot be resumed")
    if JobStatus(state.status).active:
        raise UserError(f"run {run_dir.name} is still {state.status}; follow it with `medtui runs tail {run_dir.name}`")
    if state.status == JobStatus.FINISHED:
        raise UserError(f"run {run_dir.name} already finished (adapter: {state.adapter}); start a new run to train more")
    try:
        spec_obj = effective_spec(run_dir)   # spec.json and the earlier resumes' changes
    except (TypeError, ValueError, OSError) as exc:
        raise UserError(f"run {run_dir.name}: spec.json cannot be read back ({exc})") from None
    changed, change = resume_settings(spec_obj, dict(settings or {}), plan_for(spec_obj).world)
    warnings: list[str] = []
    advice = (state.advice or {}).get("settings") if state.status == JobStatus.FAILED else None
    if advice and not changed:
        cur = {n: getattr(spec_obj, n) for n in advice}
        warnings.append(f"this run ran out of GPU memory with these settings; the advice was "
                        f"{describe_change(cur, advice)} (`medtui runs resume {run_dir.name} {resume_flags(advice)}`)")
    for name, value in changed.items():
        setattr(spec_obj, name, value)
    gpu_env, gpu_warnings, job_args = pick_gpus(runs_dir, spec_obj, force)
    ckpt = newest_checkpoint(run_dir)
    before = last_seq(run_dir / EVENTS_FILE)
    extra = ["--set", json.dumps(changed)] if changed else []
    pid = launch_job(JOB_MODULE, run_dir, ["--resume", *extra, *job_args], env={**os.environ, **gpu_env})
    return Started(run_dir, pid, tuple(warnings + gpu_warnings), past_seq=before,
                   resumed_from=ckpt.name if ckpt else None, change=change, settings=changed or None)
