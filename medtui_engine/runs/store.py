"""The runs directory: create run directories, list them, load one with its status resolved."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..jobs.status import JobStatus, resolve_job_status
from .events import read_events
from .jobs import job_alive, read_job
from .state import RunState, fold

SPEC_FILE = "spec.json"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    path: str
    status: str
    model_label: str
    data: str
    started: float | None
    step: int
    total_steps: int
    last_loss: float | None
    best_loss: float | None
    backend: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _slug(hint: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", hint or "")
    s = re.sub(r"-{2,}", "-", s).strip("-_")
    return (s or "run")[:40]


def new_run_dir(runs_dir: Path, name_hint: str = "run") -> Path:
    """A new, unique, owner-only run directory: ``YYYYMMDD-HHMMSS-hint`` (``-2``, ``-3`` on clashes)."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = time.strftime("%Y%m%d-%H%M%S") + "-" + _slug(name_hint)
    for n in range(1, 1000):
        path = runs_dir / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        return path
    raise RuntimeError(f"could not create a run directory under {runs_dir}")


def read_spec(run_dir: Path) -> dict:
    try:
        with open(Path(run_dir) / SPEC_FILE, encoding="utf-8") as fh:
            spec = json.load(fh)
        return spec if isinstance(spec, dict) else {}
    except (OSError, ValueError):
        return {}


def resolve_status(state: RunState, run_dir: Path, now: float | None = None, alive: bool | None = None) -> JobStatus:
    """The status the user should see: the events' status, corrected by the process's liveness
    (see :func:`medtui_engine.jobs.status.resolve_job_status`)."""
    if JobStatus(state.status).terminal:
        return JobStatus(state.status)
    if alive is None:
        alive = job_alive(run_dir)
    return resolve_job_status(state.status, alive=alive, started=state.events > 0 or read_job(run_dir) is not None,
                              last_event_t=state.last_event_t, now=now)


def load_run(run_dir: Path) -> tuple[dict, RunState]:
    """The run's spec and its folded state, with ``status`` resolved (crashed / stalled)."""
    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    alive = job_alive(run_dir)  # before reading: a terminal event written just before the exit is then seen
    state = fold(read_events(run_dir / EVENTS_FILE))
    state.run_id = run_dir.name
    state.status = resolve_status(state, run_dir, alive=alive)
    return spec, state


def summarize(run_dir: Path, spec: dict, state: RunState) -> RunSummary:
    data = spec.get("data") or {}
    data_path = data.get("path") if isinstance(data, dict) else str(data)
    model = spec.get("model") or {}
    label = state.model_label or (model.get("label") if isinstance(model, dict) else "") or ""
    return RunSummary(
        run_id=run_dir.name, path=str(run_dir), status=state.status, model_label=label,
        data=str(data_path or ""), started=state.first_event_t or spec.get("created_at"),
        step=state.step, total_steps=state.total_steps, last_loss=state.last_loss,
        best_loss=state.best_loss, backend=state.backend or str(spec.get("backend") or ""),
    )


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / SPEC_FILE).exists() or (path / EVENTS_FILE).exists())


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run under ``runs_dir``, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    out = []
    for path in sorted(runs_dir.iterdir(), key=lambda p: p.name, reverse=True):
        if not is_run_dir(path):
            continue
        spec, state = load_run(path)
        out.append(summarize(path, spec, state))
    return out


def find_run(runs_dir: Path, ref: str) -> Path:
    """A run by id, unique id prefix, path, or ``last`` (the newest). Raises LookupError."""
    p = Path(ref).expanduser()
    if os.sep in ref and is_run_dir(p):
        return p.resolve()
    runs_dir = Path(runs_dir)
    if (runs_dir / ref).is_dir() and is_run_dir(runs_dir / ref):
        return runs_dir / ref
    names = sorted((d.name for d in runs_dir.iterdir() if is_run_dir(d)), reverse=True) if runs_dir.is_dir() else []
    if ref in {"last", "latest"} and names:
        return runs_dir / names[0]
    matches = [n for n in names if n.startswith(ref)] or [n for n in names if ref in n]
    if len(matches) == 1:
        return runs_dir / matches[0]
    if not matches:
        raise LookupError(f"no run '{ref}' in {runs_dir}" + (f" (the newest is {names[0]})" if names else " (there are no runs yet)"))
    raise LookupError(f"'{ref}' matches {len(matches)} runs ({', '.join(matches[:4])}...): give more of the id")


def checkpoint_step(path: Path) -> int | None:
    """N for a ``checkpoint-N`` directory, else None."""
    m = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    return int(m.group(1)) if m else None


def newest_adapter_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``checkpoints/checkpoint-N`` that holds a PEFT adapter (what merge and the console use)."""
    ckpts = [p for p in (Path(run_dir) / CHECKPOINTS_DIR).glob("checkpoint-*")
             if checkpoint_step(p) is not None and (p / "adapter_config.json").is_file()]
    return max(ckpts, key=checkpoint_step) if ckpts else None


def run_adapter(run_dir: Path) -> Path | None:
    """A run's final adapter (``adapter/``), else its newest checkpoint holding one."""
    final = Path(run_dir) / "adapter"
    if (final / "adapter_config.json").is_file():
        return final
    return newest_adapter_checkpoint(run_dir)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete trainer checkpoint (``checkpoints/checkpoint-N`` with its trainer state)."""
    ckdir = Path(run_dir) / CHECKPOINTS_DIR
    best: tuple[int, Path] | None = None
    if not ckdir.is_dir():
        return None
    for d in ckdir.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and d.is_dir() and (d / "trainer_state.json").exists():
            n = int(m.group(1))
            if best is None or n > best[0]:
                best = (n, d)
    return best[1] if best else None
