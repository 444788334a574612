"""One follower for every job kind: tail ``events.jsonl``, fold with the kind's reducer, resolve
the status against the process.

:class:`JobFollower` reads only the new bytes (the engine's :class:`EventTailer`), folds them with
the kind's reducer (:mod:`.kinds`), starts over when the file is replaced or truncated, and tells
``crashed`` from ``running`` by looking at the process *before* each read: once the process is
seen dead, the read that follows holds every line it wrote, so a terminal event written just
before the exit is never mistaken for a crash. ``past_seq`` ignores the terminal event of an
earlier job in the same directory (a resume follows the new job to its end).

:meth:`JobFollower.poll` is for views that poll on their own schedule (the TUI's watcher threads);
:meth:`JobFollower.follow` is the blocking iterator of the CLI (``medtui runs tail``, ``medtui
train``, ``medtui merge``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..runs.jobs import job_alive, read_job
from ..runs.tailer import DEFAULT_MAX_BYTES, EventTailer
from .kinds import JobKind, get_kind
from .status import JobStatus, resolve_job_status

EVENTS_FILE = "events.jsonl"


class JobFollower:
    """Follows one job directory. Not thread-safe: one thread polls it (others get copies)."""

    def __init__(self, job_dir: str | Path, kind: str | JobKind = "train", *, past_seq: int = -1,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.job_dir = Path(job_dir)
        self.kind = get_kind(kind)
        self.past_seq = past_seq
        self.tailer = EventTailer(self.job_dir / EVENTS_FILE, max_bytes)
        self.state: Any = self.kind.new_state(self.job_dir.name)
        self.status = JobStatus.NEW
        self.alive = False
        self.events = 0            # events in the current state (since the last reset)
        self.folded = 0            # events folded in all
        self.last_seq = -1
        self.last_event_t: float | None = None
        self.rewound = False       # the last read started the state over, or a resume cut it back
        self.polls = 0

    @property
    def job_id(self) -> str:
        return self.job_dir.name

    @property
    def done(self) -> bool:
        """The job has ended (its own terminal event, or its process died without one)."""
        return self.status.ended

    @property
    def bad_lines(self) -> int:
        return self.tailer.bad_lines

    # ---------------------------------------------------------------- reading and folding
    def _read(self, whole: bool) -> list[dict]:
        events = self.tailer.read_all_new() if whole else self.tailer.read_new()
        if self.tailer.reset:
            self.state = self.kind.new_state(self.job_id)
            self.events = 0
            self.last_seq = -1
            self.last_event_t = None
            self.rewound = True
        return events

    def _fold(self, ev: dict) -> None:
        self.kind.apply(self.state, ev)
        self.events += 1
        self.folded += 1
        seq = ev.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            self.last_seq = seq
        t = ev.get("t")
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            self.last_event_t = float(t)
        if ev.get("type") in self.kind.rewind_on:
            self.rewound = True

    def _resolve(self, alive: bool, now: float | None = None) -> JobStatus:
        self.alive = alive
        # dead, but a backlog is still being read in slices: not yet a verdict on how it ended
        caught_up = alive or self.tailer.at_end
        started = self.events > 0 or read_job(self.job_dir) is not None
        self.status = resolve_job_status(
            getattr(self.state, "status", JobStatus.NEW), alive=alive or not caught_up, started=started,
            last_event_t=self.last_event_t, own_terminal=self.last_seq > self.past_seq, now=now,
            stall_after=self.kind.stall_after)
        return self.status

    def poll(self, *, whole: bool = True, now: float | None = None) -> list[dict]:
        """Read and fold what is new (``whole``: to the end of the file; else one slice of at most
        ``max_bytes``, so a huge backlog is folded in steps); resolve the status. Returns the new
        events (after a reset, the file's events from the start)."""
        self.polls += 1
        self.rewound = False
        alive = job_alive(self.job_dir)   # first: see the module's docstring
        events = self._read(whole)
        for ev in events:
            self._fold(ev)
        self._resolve(alive, now)
        return events

    def more_pending(self, threshold: int = 65536) -> bool:
        """Whether the file has more than ``threshold`` bytes beyond what was folded (a backlog)."""
        try:
            return self.tailer.path.stat().st_size - self.tailer.offset > threshold
        except OSError:
            return False

    def follow(self, *, live: bool = True, poll_s: float = 0.5, timeout: float | None = None) -> Iterator[dict]:
        """Yield each event once folded (``self.state`` is the state right after it), until the job
        ends; without ``live``, only what is there now. ``timeout`` (seconds) stops waiting.
        Afterwards ``status`` says how it ended (or where it stands)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.polls += 1
            self.rewound = False
            alive = job_alive(self.job_dir)
            events = self._read(True)
            for ev in events:
                self._fold(ev)
                yield ev
            self._resolve(alive)
            if self.done or not live:
                return
            if deadline is not None and time.monotonic() > deadline:
                return
            if not events:
                time.sleep(poll_s)
