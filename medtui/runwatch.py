"""Watching run directories from the TUI: poll in a thread, fold with the engine, post snapshots.

:class:`RunWatcher` follows one run. Its thread polls the engine's
:class:`~medtui_engine.jobs.follow.JobFollower` (the same follower ``medtui runs tail`` uses: it reads
only the new bytes of ``events.jsonl``, folds them, and resolves the status against the process:
crashed / stalled), reads the tail of ``stdout.log``, and hands an immutable :class:`RunSnapshot`
to ``deliver``. Poll, deliver, sleep, repeat: polls never
overlap. It delivers at most ``MAX_RATE`` times a second and never while the UI has not yet taken
the previous snapshot (:meth:`RunWatcher.ack`), so a fast run can never build a backlog of stale
frames; in between it keeps folding, and the next snapshot carries everything. With nothing new
it polls less and less often (up to ``IDLE_INTERVAL``).

:class:`RunIndex` keeps every run of a workspace folded incrementally for the Runs screen (the
engine's ``list_runs`` re-reads every file from the start, which is fine for a CLI call but not
every two seconds): one follower per run.

The watcher is plain threads and callables (no running app needed), tested on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from medtui_engine.jobs.follow import JobFollower
from medtui_engine.jobs.logtail import LogTailReader
from medtui_engine.jobs.status import JobStatus
from medtui_engine.runs.jobs import STDOUT_FILE
from medtui_engine.runs.state import RunState
from medtui_engine.runs.store import RunSummary, is_run_dir, read_spec, summarize
from medtui_engine.runs.tailer import EventTailer
from medtui_engine.series import Envelope

MAX_RATE = 4.0            # snapshots per second, at most
ACTIVE_INTERVAL = 0.25    # seconds between polls while events arrive
IDLE_INTERVAL = 2.0       # ... and at most this when nothing happens
ACK_TIMEOUT = 2.0         # a UI that never acks still gets a snapshot this often
EMA_WEIGHT = 0.9


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v not in (float("inf"), float("-inf"))


@dataclass
class _Curves:
    """The plotted series, kept in step with a RunState incrementally (finite points only)."""

    loss_x: list[int] = field(default_factory=list)
    loss_y: list[float] = field(default_factory=list)
    ema_y: list[float] = field(default_factory=list)
    lr_x: list[int] = field(default_factory=list)
    lr_y: list[float] = field(default_factory=list)
    gn_x: list[int] = field(default_factory=list)
    gn_y: list[float] = field(default_factory=list)
    n_loss: int = 0
    n_lr: int = 0
    n_gn: int = 0
    _acc: float = 0.0
    _debias: float = 1.0
    # min/max envelopes of each series, for long runs (see Envelope): built here, in the watcher thread
    env_loss: Envelope = field(default_factory=Envelope)
    env_ema: Envelope = field(default_factory=Envelope)
    env_lr: Envelope = field(default_factory=Envelope)
    env_gn: Envelope = field(default_factory=Envelope)

    def update(self, state: RunState) -> None:
        for i in range(self.n_loss, len(state.loss_steps)):
            v = state.loss_values[i]
            if _finite(v):
                x = state.loss_steps[i]
                self.loss_x.append(x)
                self.loss_y.append(v)
                self._acc = EMA_WEIGHT * self._acc + (1 - EMA_WEIGHT) * v
                self._debias *= EMA_WEIGHT
                smooth = self._acc / (1 - self._debias)
                self.ema_y.append(smooth)
                self.env_loss.add(x, v)
                self.env_ema.add(x, smooth)
        self.n_loss = len(state.loss_steps)
        for i in range(self.n_lr, len(state.lr)):
            s, v = state.lr[i]
            if _finite(v):
                self.lr_x.append(s)
                self.lr_y.append(v)
                self.env_lr.add(s, v)
        self.n_lr = len(state.lr)
        for i in range(self.n_gn, len(state.grad_norm)):
            s, v = state.grad_norm[i]
            if _finite(v):
                self.gn_x.append(s)
                self.gn_y.append(v)
                self.env_gn.add(s, v)
        self.n_gn = len(state.grad_norm)


_LIST_FIELDS = tuple(f.name for f in fields(RunState) if f.default_factory is list and f.name != "gpus")


def freeze_state(state: RunState) -> RunState:
    """A copy of ``state`` whose series are tuples: safe to hand to the UI thread, cheap to make
    (a tuple of 100,000 floats is one C-level copy; ``deepcopy`` would visit every element)."""
    return replace(state, **{name: tuple(getattr(state, name)) for name in _LIST_FIELDS},
                   versions=dict(state.versions), gpus=tuple(dict(g) if isinstance(g, dict) else g for g in state.gpus))


@dataclass(frozen=True)
class RunSnapshot:
    run_dir: str
    run_id: str
    status: JobStatus                 # resolved: running / stalled / crashed / finished / ...
    alive: bool
    state: RunState                   # frozen copy (tuples), never mutated
    spec: dict
    loss_x: tuple[int, ...] = ()     # the plotted series: every point, or the envelope of a long run
    loss_y: tuple[float, ...] = ()
    ema_x: tuple[int, ...] = ()
    ema_y: tuple[float, ...] = ()
    lr_x: tuple[int, ...] = ()
    lr_y: tuple[float, ...] = ()
    gn_x: tuple[int, ...] = ()
    gn_y: tuple[float, ...] = ()
    log_lines: tuple[str, ...] = ()
    number: int = 0                   # 1, 2, 3... per watcher
    made_at: float = 0.0              # time.monotonic() when built
    bad_lines: int = 0                # undecodable event lines skipped


# Above this many points a series is handed to the UI as its min/max envelope (at most 4 points per
# envelope bucket); below it, every point.
DECIMATE_ABOVE = 4 * Envelope.MAX_BUCKETS


def _plotted(xs: list, ys: list, env: Envelope) -> tuple[tuple, tuple]:
    if len(xs) <= DECIMATE_ABOVE:
        return tuple(xs), tuple(ys)
    px, py = env.points()
    return tuple(px), tuple(py)


def make_snapshot(run_dir: Path, state: RunState, curves: _Curves, status: JobStatus, alive: bool, spec: dict,
                  log_lines: tuple[str, ...] = (), number: int = 0, bad_lines: int = 0) -> RunSnapshot:
    loss_x, loss_y = _plotted(curves.loss_x, curves.loss_y, curves.env_loss)
    ema_x, ema_y = _plotted(curves.loss_x, curves.ema_y, curves.env_ema)
    lr_x, lr_y = _plotted(curves.lr_x, curves.lr_y, curves.env_lr)
    gn_x, gn_y = _plotted(curves.gn_x, curves.gn_y, curves.env_gn)
    return RunSnapshot(
        run_dir=str(run_dir), run_id=run_dir.name, status=status, alive=alive, state=freeze_state(state),
        spec=spec, loss_x=loss_x, loss_y=loss_y, ema_x=ema_x, ema_y=ema_y, lr_x=lr_x, lr_y=lr_y,
        gn_x=gn_x, gn_y=gn_y, log_lines=log_lines, number=number, made_at=time.monotonic(), bad_lines=bad_lines,
    )


class RunWatcher:
    """Follows one run directory in a background thread; see the module's docstring."""

    def __init__(self, run_dir: str | Path, deliver: Callable[[RunSnapshot], None], *,
                 max_rate: float = MAX_RATE, active_interval: float = ACTIVE_INTERVAL,
                 idle_interval: float = IDLE_INTERVAL) -> None:
        self.run_dir = Path(run_dir)
        self.deliver = deliver
        self.min_gap = 1.0 / max_rate
        self.active_interval = active_interval
        self.idle_interval = idle_interval
        self.follower = JobFollower(self.run_dir, "train")
        self.log = LogTailReader(self.run_dir / STDOUT_FILE)
        self.curves = _Curves()
        self.spec: dict = {}
        self.delivered = 0
        self._status: JobStatus | None = None
        self._dirty = True
        self._pending_since: float | None = None   # a snapshot the UI has not acked yet
        self._last_delivery = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- control (any thread)
    def start(self) -> RunWatcher:
        self._thread = threading.Thread(target=self._loop, name=f"runwatch-{self.run_dir.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def ack(self) -> None:
        """The UI has drawn the last snapshot: the next one may be delivered."""
        self._pending_since = None
        self._wake.set()

    def poke(self) -> None:
        """Poll now (after the user did something: stop, resume)."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # the follower's, read by tests and the benchmark
    @property
    def tailer(self) -> EventTailer:
        return self.follower.tailer

    @property
    def state(self) -> RunState:
        return self.follower.state

    @property
    def polls(self) -> int:
        return self.follower.polls

    @property
    def folded(self) -> int:
        return self.follower.folded

    # ---------------------------------------------------------------- the thread
    def poll_once(self) -> bool:
        """Read and fold what is new; True when anything changed. (Called by the thread; public
        for tests and the benchmark, which drive it directly.)"""
        changed = False
        if not self.spec:
            self.spec = read_spec(self.run_dir)
            changed = bool(self.spec)
        f = self.follower
        # one slice at a time: a huge backlog is folded in steps, delivering in between
        events = f.poll(whole=False)
        if f.rewound:
            self.curves = _Curves()   # the file was replaced, or a resume cut the history back
            changed = True
        if events:
            self.curves.update(f.state)
            changed = True
        if self.log.poll():
            changed = True
        if f.status != self._status:
            self._status = f.status
            changed = True
        self._alive = f.alive
        self._dirty = self._dirty or changed
        return changed

    def more_pending(self) -> bool:
        """Whether the events file has bytes beyond what was folded (a backlog being read in slices)."""
        return self.follower.more_pending()

    def snapshot(self) -> RunSnapshot:
        self.delivered += 1
        return make_snapshot(self.run_dir, self.state, self.curves, self._status or JobStatus(self.state.status),
                             getattr(self, "_alive", False), self.spec, self.log.snapshot(), self.delivered,
                             self.follower.bad_lines)

    def _maybe_deliver(self) -> None:
        if not self._dirty:
            return
        now = time.monotonic()
        if self._pending_since is not None and now - self._pending_since < ACK_TIMEOUT:
            return
        if now - self._last_delivery < self.min_gap:
            return
        snap = self.snapshot()
        self._dirty = False
        self._pending_since = now
        self._last_delivery = now
        try:
            self.deliver(snap)
        except Exception:  # the UI went away (app closing): stop quietly
            self._stop.set()

    def _loop(self) -> None:
        interval = self.active_interval
        while not self._stop.is_set():
            try:
                changed = self.poll_once()
            except OSError:
                changed = False
            self._maybe_deliver()
            if changed and self.more_pending():
                continue  # a backlog: keep folding; deliveries stay rate-limited
            interval = self.active_interval if changed else min(self.idle_interval, interval * 1.5)
            now = time.monotonic()
            if self._pending_since is not None:
                # the UI has not drawn the last snapshot (busy, or this view is hidden): keep polling
                # at the usual pace; ack() wakes us at once
                wait = max(0.02, min(interval, ACK_TIMEOUT - (now - self._pending_since)))
            elif self._dirty:
                # a snapshot waits only for the rate limit
                wait = max(0.02, self.min_gap - (now - self._last_delivery))
            else:
                wait = interval
            self._wake.wait(wait)
            self._wake.clear()


# -------------------------------------------------------------------- every run of a workspace

@dataclass(frozen=True)
class RunRow:
    summary: RunSummary
    loss_x: tuple[int, ...]
    loss_y: tuple[float, ...]
    ema_y: tuple[float, ...]
    version: int          # last folded seq: changes whenever the run does


@dataclass
class _Tracked:
    path: Path
    follower: JobFollower
    curves: _Curves
    spec: dict
    frozen: tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]] = ((), (), ())
    frozen_at: int = -2


class RunIndex:
    """Every run under ``runs_dir``, each followed incrementally. ``refresh()`` does the I/O (call
    it from a worker thread) and returns immutable rows, newest first."""

    def __init__(self, runs_dir: str | Path) -> None:
        self.runs_dir = Path(runs_dir)
        self._runs: dict[str, _Tracked] = {}

    def refresh(self) -> list[RunRow]:
        try:
            names = sorted((p.name for p in self.runs_dir.iterdir() if is_run_dir(p)), reverse=True)
        except OSError:
            names = []
        for gone in set(self._runs) - set(names):
            del self._runs[gone]
        rows = []
        for name in names:
            t = self._runs.get(name)
            path = self.runs_dir / name
            if t is None:
                t = _Tracked(path, JobFollower(path, "train"), _Curves(), {})
                self._runs[name] = t
            if not t.spec:
                t.spec = read_spec(path)
            f = t.follower
            f.poll()
            if f.rewound:
                t.curves = _Curves()
            t.curves.update(f.state)
            state = replace(f.state, status=f.status)  # scalars only are read from this copy
            if t.frozen_at != f.state.last_seq:
                t.frozen = (tuple(t.curves.loss_x), tuple(t.curves.loss_y), tuple(t.curves.ema_y))
                t.frozen_at = f.state.last_seq
            rows.append(RunRow(summarize(path, t.spec, state), *t.frozen, f.state.last_seq))
        return rows
