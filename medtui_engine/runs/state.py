"""A run's state, folded from its events by a pure reducer (no I/O).

The TUI and the CLI both fold the same events with :func:`apply_event`, so they always agree. The
reducer appends to the state's series lists in place (folding 100,000 log events must stay well
under a second); callers that hand a state to another thread should :meth:`RunState.copy` it.

``status`` here is what the events say: ``new`` (nothing yet), ``starting`` (job_start seen),
``running`` (train_begin seen), or the terminal ``finished`` / ``stopped`` / ``failed``. Whether a
non-terminal run is really ``crashed`` or ``stalled`` depends on the process, which the follower
(:class:`medtui_engine.jobs.follow.JobFollower`) and :func:`medtui_engine.runs.store.load_run` look at.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..jobs.status import JobStatus


@dataclass
class RunState:
    run_id: str = ""
    status: JobStatus = JobStatus.NEW
    # progress
    step: int = 0
    total_steps: int = 0
    start_step: int = 0
    epoch: float = 0.0
    epochs: float = 0.0
    steps_per_epoch: int = 0
    num_examples: int = 0
    train_tokens: int = 0
    micro_batch: int = 0
    grad_accum: int = 0
    max_seq_length: int = 0
    # what runs
    pid: int | None = None
    start_time: float | None = None
    backend: str = ""
    model: str = ""
    model_label: str = ""
    device: str = ""
    versions: dict = field(default_factory=dict)
    # curves: parallel lists, appended in step order
    loss_steps: list[int] = field(default_factory=list)
    loss_values: list[float | None] = field(default_factory=list)
    lr: list[tuple[int, float | None]] = field(default_factory=list)
    grad_norm: list[tuple[int, float | None]] = field(default_factory=list)
    eval: list[tuple[int, float | None]] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    checkpoint_paths: list[str] = field(default_factory=list)
    fit_probe: dict = field(default_factory=dict)   # the fit probe's event (the measured fit), once written
    # speed
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    # heartbeat series (the first GPU the job reports) and the latest readings
    hb_t: list[float] = field(default_factory=list)
    hb_mem_used_mib: list[float | None] = field(default_factory=list)
    hb_mem_total_mib: list[float | None] = field(default_factory=list)
    hb_util: list[float | None] = field(default_factory=list)
    hb_temp: list[float | None] = field(default_factory=list)
    hb_power: list[float | None] = field(default_factory=list)
    gpus: list[dict] = field(default_factory=list)
    peak_mem_mib: float | None = None       # the GPU's highest memory use seen (NVML)
    torch_peak_mib: float | None = None     # torch's own peak allocation
    torch_allocated_mib: float | None = None
    rss_mib: float | None = None
    # times and outcome
    first_event_t: float | None = None
    last_event_t: float | None = None
    last_seq: int = -1
    events: int = 0
    error: str | None = None
    error_type: str | None = None
    traceback_tail: str | None = None
    stop_reason: str | None = None
    adapter: str | None = None
    runtime_s: float | None = None
    final_loss: float | None = None
    resumed: int = 0
    # resumes that changed settings: {"step", "settings", "previous", "change"} each, in order
    setting_changes: list[dict] = field(default_factory=list)
    advice: dict | None = None              # after an OOM: {"settings": {...}, "text": "..."}
    notices: list[str] = field(default_factory=list)
    best_loss: float | None = None
    last_loss: float | None = None

    @property
    def terminal(self) -> bool:
        return JobStatus(self.status).terminal

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def last_checkpoint(self) -> str | None:
        return self.checkpoint_paths[-1] if self.checkpoint_paths else None

    def copy(self) -> RunState:
        """A deep copy, safe to hand to another thread while this one keeps folding."""
        return copy.deepcopy(self)


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _truncate_after(state: RunState, step: int) -> None:
    """A resumed job restarts from a checkpoint at ``step``: drop the points logged after it."""
    def cut_pairs(pairs: list) -> None:
        while pairs and pairs[-1][0] > step:
            pairs.pop()

    while state.loss_steps and state.loss_steps[-1] > step:
        state.loss_steps.pop()
        state.loss_values.pop()
    cut_pairs(state.lr)
    cut_pairs(state.grad_norm)
    cut_pairs(state.eval)
    finite = [v for v in state.loss_values if v is not None and math.isfinite(v)]
    state.best_loss = min(finite) if finite else None
    state.last_loss = finite[-1] if finite else None


def _on_job_start(state: RunState, ev: dict) -> None:
    if ev.get("resumed_from") is not None or state.events > 1:
        state.resumed += 1
    state.status = JobStatus.STARTING
    state.pid = ev.get("pid")
    state.start_time = ev.get("start_time")
    state.backend = ev.get("backend") or state.backend
    state.versions = ev.get("versions") or state.versions
    state.error = state.error_type = state.traceback_tail = state.stop_reason = None
    state.advice = None


def _on_train_begin(state: RunState, ev: dict) -> None:
    state.status = JobStatus.RUNNING
    for name in ("total_steps", "start_step", "epochs", "steps_per_epoch", "num_examples", "train_tokens",
                 "micro_batch", "grad_accum", "max_seq_length", "model", "model_label", "device"):
        if ev.get(name) is not None:
            setattr(state, name, ev[name])
    state.step = state.start_step
    if state.loss_steps and state.loss_steps[-1] > state.start_step:
        _truncate_after(state, state.start_step)


def _on_log(state: RunState, ev: dict) -> None:
    step = ev.get("step")
    if not isinstance(step, int):
        return
    state.step = step
    if state.status == JobStatus.STARTING:
        state.status = JobStatus.RUNNING
    epoch = _num(ev.get("epoch"))
    if epoch is not None:
        state.epoch = epoch
    loss = _num(ev.get("loss"))
    if "loss" in ev:
        state.loss_steps.append(step)
        state.loss_values.append(loss)
        if loss is not None and math.isfinite(loss):
            state.last_loss = loss
            if state.best_loss is None or loss < state.best_loss:
                state.best_loss = loss
    if "lr" in ev:
        state.lr.append((step, _num(ev.get("lr"))))
    if "grad_norm" in ev:
        state.grad_norm.append((step, _num(ev.get("grad_norm"))))
    for name in ("tokens_per_s", "elapsed_s", "eta_s"):
        if name in ev:
            setattr(state, name, _num(ev[name]))


def _on_eval(state: RunState, ev: dict) -> None:
    step = ev.get("step")
    if isinstance(step, int):
        state.eval.append((step, _num(ev.get("eval_loss"))))


def _on_checkpoint(state: RunState, ev: dict) -> None:
    step = ev.get("step")
    if isinstance(step, int):
        state.checkpoints.append(step)
        state.checkpoint_paths.append(str(ev.get("path") or ""))


def _on_heartbeat(state: RunState, ev: dict) -> None:
    gpus = ev.get("gpus") if isinstance(ev.get("gpus"), list) else []
    state.gpus = gpus
    first = gpus[0] if gpus and isinstance(gpus[0], dict) else {}
    state.hb_t.append(ev.get("t") or 0.0)
    used = _num(first.get("mem_used_mib"))
    state.hb_mem_used_mib.append(used)
    state.hb_mem_total_mib.append(_num(first.get("mem_total_mib")))
    state.hb_util.append(_num(first.get("util_pct")))
    state.hb_temp.append(_num(first.get("temp_c")))
    state.hb_power.append(_num(first.get("power_w")))
    if used is not None and (state.peak_mem_mib is None or used > state.peak_mem_mib):
        state.peak_mem_mib = used
    state.torch_allocated_mib = _num(ev.get("torch_allocated_mib"))
    peak = _num(ev.get("torch_peak_mib"))
    if peak is not None and (state.torch_peak_mib is None or peak > state.torch_peak_mib):
        state.torch_peak_mib = peak
    state.rss_mib = _num(ev.get("rss_mib"))


def _on_finished(state: RunState, ev: dict) -> None:
    state.status = JobStatus.FINISHED
    if isinstance(ev.get("step"), int):
        state.step = ev["step"]
    state.adapter = ev.get("adapter")
    state.runtime_s = _num(ev.get("runtime_s"))
    state.final_loss = _num(ev.get("final_loss"))
    state.eta_s = 0.0


def _on_stopped(state: RunState, ev: dict) -> None:
    state.status = JobStatus.STOPPED
    if isinstance(ev.get("step"), int):
        state.step = ev["step"]
    state.stop_reason = ev.get("reason")
    state.eta_s = None


def _on_failed(state: RunState, ev: dict) -> None:
    state.status = JobStatus.FAILED
    if isinstance(ev.get("step"), int):
        state.step = ev["step"]
    state.error = ev.get("error")
    state.error_type = ev.get("error_type")
    state.traceback_tail = ev.get("traceback_tail")
    advice = ev.get("advice")
    if isinstance(advice, dict) and isinstance(advice.get("settings"), dict):
        state.advice = {**advice, "checkpoint": ev.get("checkpoint")}
    state.eta_s = None


def _on_resume_settings(state: RunState, ev: dict) -> None:
    if isinstance(ev.get("settings"), dict):
        state.setting_changes.append({"step": ev.get("step"), "settings": ev["settings"],
                                      "previous": ev.get("previous") or {}, "change": str(ev.get("change") or "")})


def _on_notice(state: RunState, ev: dict) -> None:
    msg = ev.get("message")
    if isinstance(msg, str):
        state.notices.append(msg)


def _on_fit_probe(state: RunState, ev: dict) -> None:
    state.fit_probe = {k: v for k, v in ev.items() if k not in ("v", "seq", "t", "type")}


_HANDLERS = {
    "notice": _on_notice,
    "fit_probe": _on_fit_probe,
    "job_start": _on_job_start,
    "train_begin": _on_train_begin,
    "log": _on_log,
    "eval": _on_eval,
    "checkpoint": _on_checkpoint,
    "heartbeat": _on_heartbeat,
    "finished": _on_finished,
    "stopped": _on_stopped,
    "failed": _on_failed,
    "resume_settings": _on_resume_settings,
}


def apply_event(state: RunState, event: dict) -> RunState:
    """Fold one event into ``state`` (mutated and returned). Unknown types are counted, not fatal."""
    state.events += 1
    t = event.get("t")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        if state.first_event_t is None:
            state.first_event_t = float(t)
        state.last_event_t = float(t)
    seq = event.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool):
        state.last_seq = seq
    handler = _HANDLERS.get(event.get("type"))
    if handler is not None:
        handler(state, event)
    return state


def fold(events: Iterable[dict], state: RunState | None = None) -> RunState:
    """Fold many events, starting from ``state`` (or a new one)."""
    state = RunState() if state is None else state
    for event in events:
        apply_event(state, event)
    return state
