"""The live view of one run: status lines, loss / lr / grad-norm charts, GPU gauges and the job's log.

A :class:`RunWatcher` thread tails the run directory and posts immutable snapshots; the view draws
each one on the UI thread and acks it, so at most one snapshot is in flight. The Train screen shows
this view; the Runs screen attaches runs to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import var
from textual.widgets import Static

from medtui_engine.fmt import fmt_duration
from medtui_engine.jobs.describe import NextSteps, describe_fit, describe_run_status
from medtui_engine.jobs.status import JobStatus

from ..run_actions import RunActions, run_action_bindings
from ..runwatch import RunSnapshot, RunWatcher
from .curves import ChartData, LineChart, Series, fmt_num
from .gauges import GaugeData, Spark, SparkData, VramGauge
from .logtail import LogTail
from .rows import sentence_text

STATUS_STYLE = {
    "new": "dim", "starting": "bold cyan", "running": "bold green", "stalled": "bold black on yellow",
    "finished": "bold black on green", "stopped": "bold black on yellow", "failed": "bold white on red",
    "crashed": "bold white on red",
}
ACTIVE = tuple(s for s in JobStatus if s.active)


# what the user does next, in this view's keys (the sentences are the engine's)
TUI_STEPS = NextSteps(resume="r resumes", merge="m merges it", console="o opens the console with it",
                      log="see the log below", resume_with="r shows the advised settings and resumes with them")


def status_text(snap: RunSnapshot | None, width: int = 100) -> Text:
    if snap is None:
        return Text("Waiting for the run's first events...", style="dim")
    s = snap.state
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f" {snap.status.upper()} ", style=STATUS_STYLE.get(snap.status, "bold"))
    t.append(f" {snap.run_id}", style="bold")
    label = s.model_label or str(snap.spec.get("model_label") or snap.spec.get("model") or "")
    if label:
        t.append(f"  {label}", style="yellow" if "demo" in label else "")
    if s.backend:
        t.append(f"  {s.backend}", style="dim")
    if s.device:
        t.append(f" on {s.device}", style="dim")
    t.append("\n")
    total = s.total_steps
    frac = s.progress
    bar_w = 16
    filled = int(round(frac * bar_w))
    t.append(f"step {s.step}/{total or '?'} ", style="bold")
    t.append("█" * filled, style="green")
    t.append("░" * (bar_w - filled), style="dim")
    t.append(f" {frac * 100:3.0f}%")
    if s.epochs:
        t.append(f"  epoch {s.epoch:.2f}/{fmt_num(s.epochs)}")
    if s.best_loss is not None:
        t.append(f"  best {fmt_num(s.best_loss)}")
    if s.tokens_per_s is not None:
        t.append(f"  {s.tokens_per_s:,.0f} tok/s")
    elapsed = s.elapsed_s if s.elapsed_s is not None else s.runtime_s
    t.append(f"  elapsed {fmt_duration(elapsed)}")
    if snap.status in ACTIVE:
        t.append(f"  ETA {fmt_duration(s.eta_s)}")
    if s.resumed:
        t.append(f"  resumed x{s.resumed}", style="dim")
    rows = describe_run_status(snap.status, s, run_dir=snap.run_dir, steps=TUI_STEPS)
    if not rows and (fit := describe_fit(s)):   # while it runs: the measured fit beside the estimate
        rows = [fit]
    if rows:
        t.append("\n")
        t.append_text(sentence_text(rows[0]))
    return t


def loss_chart(snap: RunSnapshot, log_y: bool = False) -> ChartData:
    s = snap.state
    x1 = max(s.total_steps, snap.loss_x[-1] if snap.loss_x else 0, 1)
    evals = tuple((st, v) for st, v in s.eval if v is not None and v == v)
    return ChartData(
        "Loss", (Series("raw", snap.loss_x, snap.loss_y, "bright_black"), Series("EMA", snap.ema_x, snap.ema_y, "cyan")),
        points=evals, points_name="eval", vlines=tuple(s.checkpoints), x_range=(0, x1), log_y=log_y,
        empty_text="no loss logged yet" if snap.status in ACTIVE else "no loss was logged",
    )


def small_chart(title: str, xs, ys, color: str, snap: RunSnapshot, log_y: bool = False) -> ChartData:
    s = snap.state
    x1 = max(s.total_steps, xs[-1] if xs else 0, 1)
    return ChartData(title, (Series(title, xs, ys, color, show_last=True),), x_range=(0, x1), log_y=log_y,
                     empty_text="-")


class RunView(RunActions, Vertical, can_focus=True):
    """Everything about one run, kept current by a RunWatcher."""

    BINDINGS = [
        *run_action_bindings("run", "the run"),
        Binding("g", "log_scale", "Log scale", id="run-log", tooltip="Loss on a log scale (toggle)"),
    ]

    DEFAULT_CSS = """
    RunView { height: 1fr; }
    #rv-status { height: auto; max-height: 3; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    #rv-loss { height: 2fr; min-height: 6; }
    #rv-small { height: 1fr; min-height: 4; max-height: 7; }
    #rv-small LineChart { width: 1fr; height: 1fr; }
    #rv-bottom { height: 5; }
    #rv-gpu { width: 1fr; padding: 0 1 0 0; }
    #rv-mem { height: 1; }
    #rv-log { width: 1fr; border-left: vkey $foreground 20%; padding: 0 0 0 1; }
    """

    @dataclass
    class Updated(Message):
        """A new snapshot from the watcher's thread (an immutable copy)."""

        snapshot: RunSnapshot

    log_y: var[bool] = var(False)
    """The loss chart on a log scale (g toggles)."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.run_dir: Path | None = None
        self.snapshot: RunSnapshot | None = None
        self.watcher: RunWatcher | None = None
        self.applied = 0

    def compose(self) -> ComposeResult:
        yield Static(status_text(None), id="rv-status")
        yield LineChart(id="rv-loss")
        with Horizontal(id="rv-small"):
            yield LineChart(id="rv-lr", show_axis=False)
            yield LineChart(id="rv-gn", show_axis=False)
        with Horizontal(id="rv-bottom"):
            with Vertical(id="rv-gpu"):
                yield VramGauge(GaugeData(), id="rv-vram")
                yield Spark(SparkData("util", unit="%", hi=100), id="rv-util")
                yield Spark(SparkData("temp", unit="C", lo=None, color="yellow"), id="rv-temp")
                yield Spark(SparkData("power", unit="W", color="magenta"), id="rv-power")
                yield Static("", id="rv-mem", classes="muted")
            yield LogTail(id="rv-log")

    def attach(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        if self.watcher is not None and self.run_dir == run_dir and self.watcher.running:
            self.watcher.poke()
            return
        self.detach()
        self.run_dir = run_dir
        self.snapshot = None
        self.query_one("#rv-status", Static).update(status_text(None))
        self.watcher = RunWatcher(run_dir, self._deliver).start()

    def detach(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def _deliver(self, snap: RunSnapshot) -> None:
        # runs in the watcher's thread: only a message crosses over
        self.post_message(self.Updated(snap))

    def on_unmount(self) -> None:
        self.detach()

    @on(Updated)
    def _updated(self, message: Updated) -> None:
        message.stop()
        snap = message.snapshot
        if self.run_dir is None or snap.run_dir != str(self.run_dir):
            return  # from a watcher we already left
        self.apply(snap)
        watcher = self.watcher
        if watcher is not None:
            # the next snapshot may come once this one is on the screen
            self.call_after_refresh(watcher.ack)

    def apply(self, snap: RunSnapshot) -> None:
        self.snapshot = snap
        self.applied += 1
        s = snap.state
        self.query_one("#rv-status", Static).update(status_text(snap))
        self.query_one("#rv-loss", LineChart).data = loss_chart(snap, self.log_y)
        self.query_one("#rv-lr", LineChart).data = small_chart("lr", snap.lr_x, snap.lr_y, "green", snap)
        self.query_one("#rv-gn", LineChart).data = small_chart("grad norm", snap.gn_x, snap.gn_y, "magenta", snap)
        gpu = s.gpus[0] if s.gpus else {}
        note = "no GPU readings (a CPU run)" if s.hb_t else "no heartbeat yet"
        self.query_one("#rv-vram", VramGauge).data = GaugeData(
            "VRAM", gpu.get("mem_used_mib"), gpu.get("mem_total_mib"), s.peak_mem_mib, note)
        self.query_one("#rv-util", Spark).data = SparkData("util", s.hb_util, "%", 0, 100)
        self.query_one("#rv-temp", Spark).data = SparkData("temp", s.hb_temp, "C", None, None, "yellow")
        self.query_one("#rv-power", Spark).data = SparkData("power", s.hb_power, "W", 0, None, "magenta")
        mem = []
        if s.torch_peak_mib is not None:
            mem.append(f"torch peak {s.torch_peak_mib / 1024:.1f} GiB")
        if s.rss_mib is not None:
            mem.append(f"RSS {s.rss_mib / 1024:.1f} GiB")
        if s.hb_t:
            mem.append(f"{len(s.hb_t)} heartbeats")
        self.query_one("#rv-mem", Static).update(" · ".join(mem))
        self.query_one("#rv-log", LogTail).lines = snap.log_lines

    # ---- actions
    def chosen_run(self) -> Path | None:
        if self.run_dir is None:
            self.app.notify("No run is shown: start one or attach from Runs (F5)", severity="warning")
        return self.run_dir

    def after_run_action(self) -> None:
        if self.watcher is not None:
            self.watcher.poke()

    def action_log_scale(self) -> None:
        self.log_y = not self.log_y

    def watch_log_y(self, log_y: bool) -> None:
        if self.snapshot is not None:
            self.query_one("#rv-loss", LineChart).data = loss_chart(self.snapshot, log_y)



