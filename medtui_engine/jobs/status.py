"""A job's status: what its events say, corrected by whether its process still lives."""

from __future__ import annotations

import time
from enum import StrEnum

# A job alive but silent for this long is shown as stalled (heartbeats keep a training job talking).
STALL_AFTER_S = 120.0


class JobStatus(StrEnum):
    """The states a job (of any kind) can be in. A ``str``: it compares, prints and serializes as
    its value, so ``status == "finished"`` and JSON output keep working."""

    NEW = "new"              # nothing written yet
    STARTING = "starting"    # the process is up, the work has not begun
    RUNNING = "running"
    STALLED = "stalled"      # alive, but nothing written for STALL_AFTER_S
    FINISHED = "finished"
    STOPPED = "stopped"      # on request; a checkpoint was saved
    FAILED = "failed"        # the job reported an error
    CRASHED = "crashed"      # the process died without a terminal event (kill -9, OOM killer, power cut)

    @property
    def terminal(self) -> bool:
        """The job ended with its own terminal event (finished, stopped, failed)."""
        return self in _TERMINAL

    @property
    def ended(self) -> bool:
        """No process is at work any more: a terminal event, or a crash."""
        return self in _TERMINAL or self is JobStatus.CRASHED

    @property
    def active(self) -> bool:
        """A process is (or should be) at work."""
        return self in _ACTIVE


_TERMINAL = frozenset({JobStatus.FINISHED, JobStatus.STOPPED, JobStatus.FAILED})
_ACTIVE = frozenset({JobStatus.STARTING, JobStatus.RUNNING, JobStatus.STALLED})


def resolve_job_status(events_status: str, *, alive: bool, started: bool, last_event_t: float | None,
                       own_terminal: bool = True, now: float | None = None,
                       stall_after: float | None = STALL_AFTER_S) -> JobStatus:
    """The status a user should see (pure: the caller reads the process and the files).

    ``events_status`` is what the reducer folded; ``started``: the job was launched or wrote events;
    ``own_terminal`` is False when the terminal event belongs to an earlier job of the same directory
    (a resume: the new job has not written its own events yet). The caller must have read the events
    *after* it saw the process dead, so that a terminal event written just before the exit is not
    missed.
    """
    status = JobStatus(events_status)
    if status.terminal and own_terminal:
        return status
    if alive:
        if stall_after is not None and last_event_t is not None:
            now = time.time() if now is None else now
            if now - last_event_t > stall_after:
                return JobStatus.STALLED
        return status if status.active else JobStatus.STARTING
    if not started:
        return JobStatus.NEW
    return JobStatus.CRASHED
