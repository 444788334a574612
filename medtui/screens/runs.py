"""The Runs screen: every run of the workspace, kept current; attach, compare, stop, resume, merge.

A worker thread refreshes a :class:`RunIndex` (each run's events folded incrementally, so a
refresh reads only what was appended) and posts immutable rows; the table is patched in place so
the cursor stays where the user left it. Poll, render, then schedule the next poll: polls never
overlap, and none run while another screen is shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import var
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Static

from medtui_engine.jobs.status import JobStatus

from ..run_actions import RunActions, run_action_bindings
from ..runwatch import RunIndex, RunRow
from ..widgets.curves import PALETTE, ChartData, LineChart, Series, fmt_num
from ..widgets.rows import rows_text
from ..widgets.run_view import STATUS_STYLE

POLL_ACTIVE_S = 2.0     # while some run is training
POLL_IDLE_S = 5.0
# (label, key, width): fixed widths keep the table steady while values change; the columns that
# matter most come first, so an 80-column terminal shows them without scrolling
COLUMNS = (("", "mark", 1), ("state", "state", 8), ("run", "run", 26), ("steps", "steps", 9), ("last", "last", 6),
           ("best", "best", 6), ("started", "started", 11), ("model", "model", 16), ("data", "data", 18))


def short_id(run_id: str) -> str:
    """``20261124-163000-demo`` -> ``163000-demo`` (the date is in the started column)."""
    parts = run_id.split("-", 1)
    return parts[1] if len(parts) == 2 and parts[0].isdigit() and len(parts[0]) == 8 else run_id


def fmt_started(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%m-%d %H:%M", time.localtime(t))


def row_cells(row: RunRow, marked: bool) -> tuple:
    s = row.summary
    steps = f"{s.step}/{s.total_steps}" if s.total_steps else str(s.step)
    model = s.model_label or "-"
    if "random weights" in model:
        model = "demo (random)"
    return (
        Text("✓" if marked else " ", style="bold green"),
        Text(s.status, style=STATUS_STYLE.get(s.status, "")),
        short_id(s.run_id),
        steps,
        fmt_num(s.last_loss),
        fmt_num(s.best_loss),
        fmt_started(s.started),
        model,
        Path(s.data).name if s.data else "-",
    )


def compare_chart(rows: list[RunRow], smooth: bool = True, log_y: bool = False) -> ChartData:
    series = []
    for i, row in enumerate(rows):
        ys = row.ema_y if smooth else row.loss_y
        series.append(Series(short_id(row.summary.run_id)[:18], row.loss_x, ys, PALETTE[i % len(PALETTE)]))
    return ChartData("Loss" + (" (EMA)" if smooth else ""), tuple(series), log_y=log_y,
                     empty_text="these runs have logged no loss yet")


class CompareScreen(ModalScreen[None]):
    """The loss curves of two or more runs on one chart."""

    BINDINGS = [
        Binding("escape,q", "close", "Close", id="compare-close"),
        Binding("x", "smooth", "Raw/smoothed", id="compare-smooth", tooltip="Toggle EMA smoothing"),
        Binding("g", "log_scale", "Log scale", id="compare-log", tooltip="Loss on a log scale (toggle)"),
    ]
    DEFAULT_CSS = """
    CompareScreen { align: center middle; }
    CompareScreen > Vertical {
        width: 100%; height: 100%; border: thick $accent; background: $surface; padding: 0 1;
    }
    CompareScreen LineChart { height: 1fr; }
    CompareScreen #compare-table { height: auto; max-height: 8; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    smooth: var[bool] = var(True, init=False)
    """EMA-smoothed curves (x toggles)."""
    log_y: var[bool] = var(False, init=False)
    """Loss on a log scale (g toggles)."""

    def __init__(self, rows: list[RunRow]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Comparing {len(self.rows)} runs (x: raw/smoothed, g: log scale, escape: close)",
                         classes="section-title")
            yield LineChart(compare_chart(self.rows), id="compare-chart")
            yield Static(self._table(), id="compare-table")

    def _table(self) -> Text:
        t = Text()
        for i, row in enumerate(self.rows):
            s = row.summary
            t.append("━━ ", style=PALETTE[i % len(PALETTE)])
            t.append(f"{s.run_id:<28}", style="bold")
            t.append(f" {s.status:<9} step {s.step}/{s.total_steps or '?'}  last {fmt_num(s.last_loss)}"
                     f"  best {fmt_num(s.best_loss)}\n")
        return t

    def _redraw(self) -> None:
        self.query_one("#compare-chart", LineChart).data = compare_chart(self.rows, self.smooth, self.log_y)

    watch_smooth = watch_log_y = _redraw

    def action_smooth(self) -> None:
        self.smooth = not self.smooth

    def action_log_scale(self) -> None:
        self.log_y = not self.log_y

    def action_close(self) -> None:
        self.dismiss(None)


class RunsScreen(RunActions, Screen):
    CSS_PATH = "runs.tcss"
    BINDINGS = [
        Binding("a", "attach", "Attach", id="runs-attach", tooltip="Open the live view of this run (also enter)"),
        Binding("space", "mark", "Mark", id="runs-mark", tooltip="Mark runs to compare"),
        Binding("c", "compare", "Compare", id="runs-compare", tooltip="Overlay the loss curves of the marked runs"),
        *run_action_bindings("runs", "this run"),
    ]

    @dataclass
    class Polled(Message):
        """One poll's rows (immutable), or why the runs could not be read."""

        rows: tuple[RunRow, ...]
        error: str | None = None

    marked: var[tuple[str, ...]] = var(tuple, init=False)
    """The runs marked to compare, in the order they were marked."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, RunRow] = {}
        self.order: list[str] = []
        self.index: RunIndex | None = None
        self.polls = 0
        self._timer = None
        self._active = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Reading the runs...", id="runs-summary")
        table = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield LineChart(id="runs-preview")
        yield Static("", id="runs-audit")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        self.index = RunIndex(self.app.ctx.runs_dir)

    def on_screen_resume(self) -> None:
        self._active = True
        self.poll_now()
        self.query_one(DataTable).focus()

    def on_screen_suspend(self) -> None:
        self._active = False
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    # ---- polling: one at a time, rescheduled after each result is drawn
    def poll_now(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._poll()

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs-poll")
    def _poll(self) -> None:
        assert self.index is not None
        try:
            rows = self.index.refresh()
        except OSError as exc:
            self.post_message(self.Polled((), f"cannot read {self.index.runs_dir}: {exc.strerror or exc}"))
            return
        self.post_message(self.Polled(tuple(rows)))

    @on(Polled)
    def _polled(self, message: Polled) -> None:
        self.polls += 1
        if message.error:
            self.query_one("#runs-summary", Static).update(Text(message.error, style="red"))
        else:
            self._apply(message.rows)
        if self._active:
            busy = any(JobStatus(r.summary.status).active for r in message.rows)
            self._timer = self.set_timer(POLL_ACTIVE_S if busy else POLL_IDLE_S, self._poll)

    def _apply(self, rows: tuple[RunRow, ...]) -> None:
        table = self.query_one(DataTable)
        new_order = [r.summary.run_id for r in rows]
        old = self.rows
        self.rows = {r.summary.run_id: r for r in rows}
        self.marked = tuple(m for m in self.marked if m in self.rows)
        if new_order != self.order:
            current = self.current_id()
            table.clear()
            for r in rows:
                table.add_row(*row_cells(r, r.summary.run_id in self.marked), key=r.summary.run_id)
            self.order = new_order
            if current in self.rows:
                table.move_cursor(row=new_order.index(current))
        else:
            for r in rows:
                rid = r.summary.run_id
                prev = old.get(rid)
                if prev is None or prev.summary != r.summary:
                    self._update_row(rid)
        active = sum(JobStatus(r.summary.status).active for r in rows)
        if rows:
            summary = (f"{len(rows)} runs in {self.app.ctx.runs_dir}" + (f", {active} training" if active else "")
                       + "   enter: attach · space: mark · c: compare")
        else:
            summary = f"No runs yet in {self.app.ctx.runs_dir}: start one on the Train screen (F4)"
        self.query_one("#runs-summary", Static).update(summary)
        self._preview()

    def _update_row(self, rid: str) -> None:
        table = self.query_one(DataTable)
        cells = row_cells(self.rows[rid], rid in self.marked)
        for (_label, key, _width), value in zip(COLUMNS, cells, strict=True):
            table.update_cell(rid, key, value)

    def current_id(self) -> str | None:
        table = self.query_one(DataTable)
        if not self.order or table.cursor_row is None or not 0 <= table.cursor_row < len(self.order):
            return None
        return self.order[table.cursor_row]

    def _preview(self) -> None:
        chart = self.query_one("#runs-preview", LineChart)
        ids = self.marked or ([self.current_id()] if self.current_id() else [])
        rows = [self.rows[i] for i in ids if i in self.rows]
        self._show_audit(rows[0] if len(rows) == 1 else None)
        if not rows:
            chart.data = ChartData("Loss", empty_text="no run selected")
            return
        if len(rows) == 1:
            r = rows[0]
            s = r.summary
            chart.data = ChartData(
                f"Loss · {short_id(s.run_id)}",
                (Series("raw", r.loss_x, r.loss_y, "bright_black"), Series("EMA", r.loss_x, r.ema_y, "cyan")),
                x_range=(0, max(s.total_steps, r.loss_x[-1] if r.loss_x else 0, 1)),
                empty_text="no loss logged yet")
        else:
            chart.data = compare_chart(rows)

    def _show_audit(self, row: RunRow | None) -> None:
        """The selected run's data audit (sha256, rows, identifiers and the gate's decision): the
        engine's rows, as `medtui runs show` prints them."""
        from medtui_engine.privacy.audit import describe_data_audit, read_data_record
        from medtui_engine.runs.store import read_spec

        box = self.query_one("#runs-audit", Static)
        box.display = row is not None
        if row is None:
            return
        run_dir = Path(row.summary.path)
        box.update(rows_text(describe_data_audit(read_spec(run_dir), read_data_record(run_dir))))

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        if not self.marked:
            self._preview()

    @on(DataTable.RowSelected)
    def _selected(self) -> None:
        self.action_attach()

    def watch_marked(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        for rid in set(old) ^ set(new):
            if rid in self.rows and rid in self.order:
                self._update_row(rid)
        self._preview()

    # ---- actions
    def chosen_run(self) -> Path | None:
        rid = self.current_id()
        if rid is None:
            self.app.notify("No run selected", severity="warning")
            return None
        return Path(self.rows[rid].summary.path)

    def action_attach(self) -> None:
        if (rd := self.chosen_run()) is not None:
            self.app.goto("train", run=str(rd))

    def action_mark(self) -> None:
        rid = self.current_id()
        if rid is None:
            return
        self.marked = tuple(m for m in self.marked if m != rid) if rid in self.marked else (*self.marked, rid)
        table = self.query_one(DataTable)
        if table.cursor_row is not None and table.cursor_row < len(self.order) - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def action_compare(self) -> None:
        rows = [self.rows[i] for i in self.marked if i in self.rows]
        if len(rows) < 2:
            self.app.notify("Mark two or more runs with space, then press c", severity="warning")
            return
        self.app.push_screen(CompareScreen(rows))

    def after_run_action(self) -> None:
        self.poll_now()
