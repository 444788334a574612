"""The job kinds: what a kind's events fold into. A new kind is one ``register(...)`` line.

A kind names a state factory (given the job's id) and the pure reducer that folds one event into
that state. The follower, the CLI and the TUI need nothing else to follow a job of that kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluate.events import EvalState, apply_eval_event
from ..merge.events import MergeState, apply_merge_event
from ..runs.state import RunState, apply_event
from .status import STALL_AFTER_S


@dataclass(frozen=True)
class JobKind:
    name: str
    new_state: Callable[[str], Any]            # job id -> an empty state
    apply: Callable[[Any, dict], Any]          # (state, event) -> state, pure, mutates and returns
    # event types after which a view's derived data (curves) must be rebuilt: a resumed training
    # job cuts its history back to the checkpoint it restarts from
    rewind_on: frozenset[str] = field(default_factory=frozenset)
    stall_after: float | None = STALL_AFTER_S  # None: the kind has silent phases; never "stalled"


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    KINDS[kind.name] = kind
    return kind


register(JobKind("train", lambda job_id: RunState(run_id=job_id), apply_event, frozenset({"train_begin"})))
register(JobKind("merge", lambda _job_id: MergeState(), apply_merge_event, stall_after=None))
# loading a model and answering one case write nothing for a while: never "stalled"
register(JobKind("eval", lambda _job_id: EvalState(), apply_eval_event, stall_after=None))


def get_kind(name: str | JobKind) -> JobKind:
    if isinstance(name, JobKind):
        return name
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r} (known: {', '.join(sorted(KINDS))})") from None


def kind_of(job_dir: Path) -> str:
    """The kind a job directory holds, from its ``spec.json`` (training specs carry no kind)."""
    try:
        spec = json.loads((Path(job_dir) / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "train"
    kind = spec.get("kind") if isinstance(spec, dict) else None
    return kind if isinstance(kind, str) and kind in KINDS else "train"
