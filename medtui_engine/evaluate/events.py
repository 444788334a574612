"""The evaluation job's events and the reducer that folds them into an :class:`EvalState`.

Evaluation jobs write the same schema-v1 ``events.jsonl`` as training and merging (same writer, same
tailer), with their own event types (``EVAL_EVENT_TYPES``, added to the shared schema here, so the
writer and the validator know them once this module is imported: :mod:`medtui_engine.jobs.kinds`
imports it). Terminal events are the shared ``finished`` / ``stopped`` / ``failed``. A resumed job
appends to the same file: its ``eval_begin`` carries how many answers were already on file, so the
fold of the whole file ends with the right count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..jobs.status import JobStatus
from ..runs.events import _NUM, _OPT_NUM, EVENT_TYPES

JOB_MODULE = "medtui_engine.evaluate.job"

EVAL_EVENT_TYPES: dict[str, dict[str, tuple]] = {
    # the job (or its resume) began: the sides it answers with, and how many answers are already on file
    "eval_begin": {"pid": (int,), "cases": (int,), "samples": (int,), "sides": (list,), "total": (int,),
                   "done": (int,)},
    # one side's model: phase "loading" (label given) or "loaded" (seconds given)
    "eval_model": {"side": (str,), "phase": (str,), "label": (str,), "seconds": _OPT_NUM},
    # one answer written to answers-<side>.jsonl: which case and sample, and how long it took
    "eval_answer": {"side": (str,), "id": (str,), "sample": (int,), "index": (int,), "seconds": _NUM},
    # every answer is in and the report was written (temp dir, then rename) to report_dir
    "eval_written": {"report_dir": (str,)},
}
EVENT_TYPES.update(EVAL_EVENT_TYPES)


@dataclass
class EvalState:
    status: JobStatus = JobStatus.NEW    # new | running | finished | stopped | failed (crashed: by the follower)
    phase: str = ""                      # loading | answering | scoring | done
    sides: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    cases: int = 0
    samples: int = 1
    total: int = 0                       # answers the job gives in all (sides x cases x samples)
    done: int = 0                        # answers on file
    done_by_side: dict[str, int] = field(default_factory=dict)
    side: str = ""                       # the side at work now
    last_id: str | None = None
    last_seconds: float | None = None
    resumed: int = 0                     # how many times the job was resumed
    skipped: int = 0                     # answers already on file when the latest (re)start began
    report_dir: str | None = None
    stop_reason: str | None = None
    error: str | None = None
    error_type: str | None = None
    runtime_s: float | None = None
    last_event_t: float | None = None

    @property
    def terminal(self) -> bool:
        return JobStatus(self.status).terminal

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


def apply_eval_event(state: EvalState, ev: dict) -> EvalState:
    """Fold one event (pure: no I/O). Unknown types are ignored."""
    kind = ev.get("type")
    if isinstance(ev.get("t"), (int, float)):
        state.last_event_t = float(ev["t"])
    if kind == "eval_begin":
        if state.status is not JobStatus.NEW:
            state.resumed += 1
        state.status = JobStatus.RUNNING
        state.phase = "loading"
        state.sides = [str(s) for s in ev.get("sides") or []]
        state.cases = int(ev.get("cases") or 0)
        state.samples = int(ev.get("samples") or 1)
        state.total = int(ev.get("total") or 0)
        state.done = state.skipped = int(ev.get("done") or 0)
        state.done_by_side = {str(k): int(v) for k, v in (ev.get("done_by_side") or {}).items()}
        state.labels = {str(k): str(v) for k, v in (ev.get("labels") or {}).items()}
        state.report_dir = state.stop_reason = state.error = state.error_type = None
    elif kind == "eval_model":
        state.side = str(ev.get("side") or "")
        state.labels[state.side] = str(ev.get("label") or state.labels.get(state.side, ""))
        state.phase = "loading" if ev.get("phase") == "loading" else "answering"
    elif kind == "eval_answer":
        side = str(ev.get("side") or "")
        state.side = side
        state.phase = "answering"
        state.done += 1
        state.done_by_side[side] = state.done_by_side.get(side, 0) + 1
        state.last_id = str(ev.get("id"))
        state.last_seconds = ev.get("seconds")
        if state.total and state.done >= state.total:
            state.phase = "scoring"
    elif kind == "eval_written":
        state.report_dir = str(ev.get("report_dir") or "") or None
        state.phase = "done"
    elif kind == "finished":
        state.status = JobStatus.FINISHED
        state.phase = "done"
        state.report_dir = ev.get("report_dir") or state.report_dir
        state.runtime_s = ev.get("runtime_s")
    elif kind == "stopped":
        state.status = JobStatus.STOPPED
        state.stop_reason = str(ev.get("reason") or "on request")
    elif kind == "failed":
        state.status = JobStatus.FAILED
        state.error = ev.get("error")
        state.error_type = ev.get("error_type")
    return state
