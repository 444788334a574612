"""One training job per GPU: find the GPUs a medtui job is already training on.

Two sources, either is enough: NVML's process list (catches jobs from any workspace, when the
process namespace lets us see them) and the live runs of this workspace (their heartbeats name the
GPUs they use). On a machine without a GPU there is nothing to guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

JOB_MODULE = "medtui_engine.train.job"


@dataclass(frozen=True)
class BusyGpu:
    index: int
    pid: int | None
    run: str          # run directory (or "" when only NVML knows the process)

    def describe(self) -> str:
        who = f"run {Path(self.run).name}" if self.run else "a medtui training job"
        return f"GPU {self.index} is in use by {who}" + (f" (pid {self.pid})" if self.pid else "")


def busy_gpus(runs_dir: Path | None, nvml=None, visible: list[int] | None = None) -> list[BusyGpu]:
    """The GPUs we would train on that a medtui training job already uses.

    ``nvml`` is a :class:`medtui_engine.gpu.NvmlInfo` (read here when None); ``visible`` the GPU
    indices this job would use (default: CUDA_VISIBLE_DEVICES, or all).
    """
    from ..gpu import process_argv, read_nvml, visible_gpu_indices

    info = read_nvml(with_processes=True) if nvml is None else nvml
    if not info.available or not info.gpus:
        return []
    if visible is None:
        visible = visible_gpu_indices()
    ours = [g for g in info.gpus if visible is None or g.index in visible]
    busy: dict[tuple[int, int | None], BusyGpu] = {}
    for g in ours:
        for p in g.processes:
            if JOB_MODULE in (p.name or ""):
                run = ""
                # the whole argv: the display name is cut short, and a cut run path never reads as ended
                argv = process_argv(p.pid)
                parts = argv if JOB_MODULE in argv else p.name.split()
                if JOB_MODULE in parts and parts.index(JOB_MODULE) + 1 < len(parts):
                    run = parts[parts.index(JOB_MODULE) + 1]
                if run and _ended(Path(run)):
                    continue  # it wrote its terminal event and is only exiting
                busy[(g.index, p.pid)] = BusyGpu(g.index, p.pid, run)
    if runs_dir is not None and Path(runs_dir).is_dir():
        from .events import read_events
        from .jobs import job_alive, read_job
        from .state import fold
        from .store import EVENTS_FILE, is_run_dir

        indices = {g.index for g in ours}
        for run in Path(runs_dir).iterdir():
            if not is_run_dir(run) or not job_alive(run):
                continue
            job = read_job(run) or {}
            if str(job.get("module", "")) != JOB_MODULE:
                continue
            state = fold(read_events(run / EVENTS_FILE))
            if state.terminal:
                continue  # finished, stopped or failed: the process is only exiting
            used = {int(g["index"]) for g in state.gpus if isinstance(g, dict) and isinstance(g.get("index"), int)}
            for idx in sorted(used & indices):
                busy.setdefault((idx, job.get("pid")), BusyGpu(idx, job.get("pid"), str(run)))
    return sorted(busy.values(), key=lambda b: (b.index, b.pid or 0))


def _ended(run: Path) -> bool:
    """The run wrote its terminal event (a job process may still be exiting after it)."""
    from .events import read_events
    from .state import fold
    from .store import EVENTS_FILE

    try:
        return fold(read_events(run / EVENTS_FILE)).terminal
    except OSError:
        return False


@dataclass(frozen=True)
class GpuChoice:
    index: int | None          # the NVML/PCI index the job will use (None: CPU, or left to the user's setting)
    busy: tuple[BusyGpu, ...]  # medtui jobs on the candidate GPUs
    all_busy: bool             # every candidate is busy: refuse unless forced


def choose_gpu(runs_dir: Path | None, nvml=None) -> GpuChoice:
    """The GPU a new training job should use: the first candidate no medtui job trains on.

    Candidates are the GPUs CUDA_VISIBLE_DEVICES names (numeric form), or all of them. One job
    trains on one GPU (several GPUs are torchrun's job): the launcher pins the job to the choice.
    """
    import os

    from ..gpu import read_nvml, visible_gpu_indices

    info = read_nvml(with_processes=True) if nvml is None else nvml
    if not info.available or not info.gpus:
        return GpuChoice(None, (), False)
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = visible_gpu_indices()
    if env not in (None, "") and visible is None:  # UUIDs or MIG names: the user's choice stands
        return GpuChoice(None, tuple(busy_gpus(runs_dir, nvml=info, visible=None)), False)
    candidates = [g.index for g in info.gpus if visible is None or g.index in visible]
    if not candidates:
        return GpuChoice(None, (), False)
    busy = busy_gpus(runs_dir, nvml=info, visible=candidates)
    taken = {b.index for b in busy}
    free = [i for i in candidates if i not in taken]
    return GpuChoice(free[0] if free else candidates[0], tuple(busy), not free)
