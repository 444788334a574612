"""The merge job's events and the reducer that folds them into a :class:`MergeState`.

Merge jobs write the same schema-v1 ``events.jsonl`` as training (same writer, same tailer), with
their own event types (``MERGE_EVENT_TYPES``, defined beside the shared schema in ``runs.events``,
where the validator finds them). Terminal events are the shared ``finished`` / ``failed``. The job
kind ``merge`` (:mod:`medtui_engine.jobs.kinds`) pairs :class:`MergeState` with
:func:`apply_merge_event`; :class:`medtui_engine.jobs.follow.JobFollower` follows a merge job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..jobs.status import JobStatus

JOB_MODULE = "medtui_engine.merge.job"


@dataclass
class MergeState:
    status: JobStatus = JobStatus.NEW    # new | running | finished | failed (crashed: by the follower)
    phase: str = ""
    done: float = 0
    total: float = 0
    bytes_written: float = 0
    base: str = ""
    adapter: str = ""
    out: str = ""
    dtype: str = ""
    method: str = ""
    adapter_only: bool = False
    write_seconds: float | None = None
    verification: dict = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    serve_command: str | None = None
    gguf: dict | None = None             # medtui.json's gguf entry (at the end)
    gguf_files: list = field(default_factory=list)   # gguf_written / gguf_verified as they come
    runtime_s: float | None = None
    last_event_t: float | None = None

    @property
    def terminal(self) -> bool:
        return JobStatus(self.status).terminal

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


def apply_merge_event(state: MergeState, ev: dict) -> MergeState:
    """Fold one event (pure: no I/O). Unknown types are ignored."""
    kind = ev.get("type")
    if isinstance(ev.get("t"), (int, float)):
        state.last_event_t = float(ev["t"])
    if kind == "merge_begin":
        state.status = JobStatus.RUNNING
        for name in ("base", "adapter", "out", "dtype", "method"):
            setattr(state, name, str(ev.get(name) or ""))
        state.adapter_only = bool(ev.get("adapter_only"))
        state.phase = "merge"
    elif kind == "merge_progress":
        state.phase = str(ev.get("phase") or state.phase)
        state.done = ev.get("done") or 0
        state.total = ev.get("total") or 0
        if ev.get("bytes_written") is not None:
            state.bytes_written = ev["bytes_written"]
    elif kind == "merge_written":
        state.write_seconds = ev.get("seconds")
        state.phase = "verify"
    elif kind == "merge_verified":
        state.verification = dict(ev.get("record") or {k: ev.get(k) for k in ("max_abs_logit_diff", "top1_agreement", "failed_checks")})
    elif kind == "gguf_written":
        state.phase = "gguf"
        state.gguf_files.append({k: ev.get(k) for k in ("gguf_type", "file", "bytes", "seconds")})
    elif kind == "gguf_verified":
        for f in state.gguf_files:
            if f.get("gguf_type") == ev.get("gguf_type"):
                f.update(passed=bool(ev.get("passed")), max_abs_logit_diff=ev.get("max_abs_logit_diff"),
                         tolerance=ev.get("tolerance"))
    elif kind == "finished":
        state.status = JobStatus.FINISHED
        state.phase = "done"
        state.out = str(ev.get("out") or state.out)
        state.serve_command = ev.get("serve_command")
        state.gguf = ev.get("gguf") if isinstance(ev.get("gguf"), dict) else None
        state.runtime_s = ev.get("runtime_s")
    elif kind == "failed":
        state.status = JobStatus.FAILED
        state.error = ev.get("error")
        state.error_type = ev.get("error_type")
    return state

