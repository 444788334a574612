"""Following a run from a terminal: one readable line per event, until the run ends.

Used by ``medtui train`` (attached mode), ``medtui runs tail`` and ``medtui runs resume``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from .jobs import job_alive
from .state import RunState, apply_event
from .store import EVENTS_FILE, resolve_status
from .tailer import EventTailer


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_event(ev: dict, state: RunState | None = None) -> str | None:
    """A one-line, human description of an event (None for events not worth a line)."""
    t = ev.get("type")
    total = state.total_steps if state and state.total_steps else None
    if t == "job_start":
        how = f"resumed from step {ev.get('resumed_from')}" if ev.get("resumed_from") is not None else "started"
        return f"job {ev.get('pid')} {how} (backend {ev.get('backend')})"
    if t == "train_begin":
        return (f"training {ev.get('model_label') or ev.get('model')} on {ev.get('device')}: "
                f"{ev.get('num_examples')} cases, {ev.get('train_tokens'):,} tokens, steps {ev.get('start_step')}->{ev.get('total_steps')} "
                f"(batch {ev.get('micro_batch')} x accumulation {ev.get('grad_accum')}, max length {ev.get('max_seq_length')})")
    if t == "log":
        step = f"{ev.get('step')}/{total}" if total else str(ev.get("step"))
        tps = ev.get("tokens_per_s")
        return (f"step {step}  epoch {_f(ev.get('epoch'), '.2f')}  loss {_f(ev.get('loss'), '.4f')}  "
                f"lr {_f(ev.get('lr'), '.2e')}  grad {_f(ev.get('grad_norm'), '.3f')}  "
                f"{'-' if tps is None else f'{tps:,.0f}'} tok/s  ETA {fmt_duration(ev.get('eta_s'))}")
    if t == "eval":
        return f"eval at step {ev.get('step')}: loss {_f(ev.get('eval_loss'), '.4f')}"
    if t == "checkpoint":
        return f"checkpoint saved at step {ev.get('step')}"
    if t == "notice":
        return f"note: {ev.get('message')}"
    if t == "finished":
        return f"finished at step {ev.get('step')} in {fmt_duration(ev.get('runtime_s'))}; adapter: {ev.get('adapter')}"
    if t == "stopped":
        return f"stopped at step {ev.get('step')} ({ev.get('reason')}); checkpoint: {ev.get('checkpoint') or 'none'}"
    if t == "failed":
        return f"FAILED at step {ev.get('step')}: {ev.get('error')}"
    return None


def follow(run_dir: Path, emit: Callable[[str], None] = print, poll: float = 0.5, raw: bool = False,
           follow_live: bool = True, timeout: float | None = None, past_seq: int = -1) -> RunState:
    """Print the run's events from the start; with ``follow_live`` keep going until it ends.

    Returns the folded state, with ``status`` resolved (``crashed`` when the job died silently).
    ``raw`` prints each event as its JSON line. ``past_seq``: a terminal event at or before this
    sequence number belongs to an earlier job of the run (a resume follows the new job to its end).
    """
    run_dir = Path(run_dir)
    tailer = EventTailer(run_dir / EVENTS_FILE)
    state = RunState(run_id=run_dir.name)
    deadline = None if timeout is None else time.monotonic() + timeout
    dead_reads = 0
    while True:
        events = tailer.read_all_new()
        if tailer.reset:
            state = RunState(run_id=run_dir.name)
        for ev in events:
            apply_event(state, ev)
            line = json.dumps(ev, ensure_ascii=False) if raw else format_event(ev, state)
            if line:
                emit(line)
        if (state.terminal and state.last_seq > past_seq) or not follow_live:
            break
        if not events:
            if not job_alive(run_dir):
                dead_reads += 1
                if dead_reads >= 2:  # one more read after death: the last lines may have just landed
                    break
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(poll)
    state.status = resolve_status(state, run_dir)
    return state
