"""The Environment screen: is this machine ready to fine-tune, and will my setting fit?

Readings come from the engine's environment check, run in a worker thread (library probes run in
subprocesses, so this process never imports torch). GPU memory, utilisation, temperature and power
refresh every few seconds through NVML: poll, render, then schedule the next poll.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Select, Static

from medtui_engine.envcheck import CheckLine, EnvReport
from medtui_engine.gpu import NvmlInfo

VERDICT_STYLE = {"ok": "green", "info": "dim", "warning": "yellow", "problem": "bold red"}
VERDICT_MARK = {"ok": "ok", "info": "--", "warning": "WARN", "problem": "FAIL"}
GPU_POLL_SECONDS = 3.0


@dataclass(frozen=True)
class FitRequest:
    model: str
    bits: int
    seq: int
    batch: int
    rank: int
    backend: str


class EnvironmentScreen(Screen):
    CSS_PATH = "environment.tcss"
    BINDINGS = [
        Binding("r", "recheck", "Re-check", id="env-recheck", tooltip="Run the environment check again"),
        Binding("w", "fit", "Will it fit", id="env-fit", tooltip="Estimate GPU memory for the setting below"),
        Binding("escape", "leave_field", "Leave field", id="env-leave",
                tooltip="Stop editing the setting: r and w act on the screen again"),
    ]

    report: var[EnvReport | None] = var(None, init=False, always_update=True)  # the last check, drawn by its watcher
    nvml: var[NvmlInfo | None] = var(None, init=False, always_update=True)      # the last GPU reading

    # ---- messages from the workers (the payloads are not touched by the thread once posted)
    @dataclass
    class Checked(Message):
        report: EnvReport

    @dataclass
    class Progress(Message):
        text: str

    @dataclass
    class FitDone(Message):
        line: CheckLine
        info: Mapping[str, Any]  # the estimate's numbers, read only

    @dataclass
    class GpuPolled(Message):
        nvml: NvmlInfo

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="env-body"):
            yield Static("Checking this machine...", id="env-summary")
            yield Static("", id="env-gpus", classes="muted")
            yield DataTable(id="env-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="env-detail")
            yield Label("Will it fit?  model | bits | max seq | batch | LoRA rank | backend   (w; enter in a field)",
                        classes="section-title")
            with Horizontal(id="fit-form"):
                yield Input(self.app.ctx.settings.default_model, placeholder="model dir or demo", id="fit-model")
                yield Select([("4-bit", 4), ("16-bit", 16)], value=4, allow_blank=False, id="fit-bits")
                yield Input("2048", placeholder="seq", id="fit-seq", type="integer")
                yield Input("1", placeholder="batch", id="fit-batch", type="integer")
                yield Input("32", placeholder="rank", id="fit-rank", type="integer")
                yield Select([("unsloth", "unsloth"), ("hf", "hf")], value="unsloth", allow_blank=False, id="fit-backend")
                yield Button("Estimate", id="fit-go")
            yield Static("", id="fit-result")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#env-table", DataTable)
        table.add_columns("", "check", "reading")
        ctx = self.app.ctx
        self.sub_title = f"workspace {ctx.workspace}"
        # Start the readings after the first frame: the probes' subprocesses compete for the CPU.
        self.set_timer(0.05, self.action_recheck)
        self.set_timer(0.05, self._poll_gpus)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "leave_field":
            return isinstance(self.focused, Input)  # shown only while a setting is being edited
        return True

    def action_leave_field(self) -> None:
        self.query_one("#env-table", DataTable).focus()

    def on_unmount(self) -> None:
        from medtui_engine.envcheck import cancel_probes

        cancel_probes()  # quitting must not wait for library probes still importing torch

    # ------------------------------------------------------------ the check

    def action_recheck(self) -> None:
        self.query_one("#env-summary", Static).update("Checking this machine (libraries are probed in subprocesses)...")
        self._run_check()

    @work(thread=True, exclusive=True, exit_on_error=False, group="env-check")
    def _run_check(self) -> None:
        from medtui_engine.envcheck import collect

        ctx = self.app.ctx
        report = collect(ctx.workspace, {**ctx.settings.as_dict(), "config_file": str(ctx.config_file)},
                         ctx.settings.min_free_disk_gib,
                         progress=lambda text: self.post_message(self.Progress(text)))
        self.post_message(self.Checked(report))

    def on_environment_screen_progress(self, message: Progress) -> None:
        self.query_one("#env-summary", Static).update(f"Checking this machine: {message.text}...")

    def on_environment_screen_checked(self, message: Checked) -> None:
        self.report = message.report

    def watch_report(self, report: EnvReport | None) -> None:
        if report is None:
            return
        table = self.query_one("#env-table", DataTable)
        table.clear()
        for ln in report.lines:
            self._add_line(table, ln)
        worst = next((i for i, ln in enumerate(report.lines) if ln.verdict in ("problem", "warning")), 0)
        if report.lines:
            table.move_cursor(row=worst)
            self._show_detail(worst)
        counts = {v: sum(1 for ln in report.lines if ln.verdict == v) for v in ("problem", "warning")}
        words = {"ok": "ready", "info": "ready", "warning": "usable, with warnings", "problem": "NOT ready"}[report.verdict]
        ctx = self.app.ctx
        summary = Text.assemble(
            ("Verdict: ", "bold"), (words, VERDICT_STYLE[report.verdict]),
            f"  ({counts['problem']} problems, {counts['warning']} warnings)\n",
            ("Workspace: ", "bold"), str(ctx.workspace), "\n",
            ("Settings: ", "bold"), str(ctx.config_file),
            ("" if ctx.config_file.exists() else " (not present: defaults in use)", "dim"),
        )
        self.query_one("#env-summary", Static).update(summary)

    def _add_line(self, table: DataTable, ln: CheckLine) -> None:
        style = VERDICT_STYLE[ln.verdict]
        table.add_row(Text(VERDICT_MARK[ln.verdict], style=style), ln.name, ln.value)

    @on(DataTable.RowHighlighted, "#env-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(event.cursor_row)

    def _show_detail(self, index: int) -> None:
        lines = self.report.lines if self.report is not None else ()
        if not 0 <= index < len(lines):
            return
        ln = lines[index]
        text = Text.assemble((f"{VERDICT_MARK[ln.verdict]} ", VERDICT_STYLE[ln.verdict]), (f"{ln.section} / {ln.name}: ", "bold"),
                             ln.value)
        if ln.fix:
            text.append(f"\n-> {ln.fix}", style="italic")
        self.query_one("#env-detail", Static).update(text)

    def on_worker_state_changed(self, event) -> None:
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR:
            self.notify(f"The check failed: {event.worker.error}", severity="error", timeout=10)

    # ------------------------------------------------------------ GPU panel (poll, render, reschedule)

    @work(thread=True, exclusive=True, exit_on_error=False, group="env-gpu")
    def _poll_gpus(self) -> None:
        from medtui_engine.gpu import read_nvml

        self.post_message(self.GpuPolled(read_nvml(with_processes=False)))

    def on_environment_screen_gpu_polled(self, message: GpuPolled) -> None:
        self.nvml = message.nvml
        if message.nvml.gpus:
            self.set_timer(GPU_POLL_SECONDS, self._poll_gpus)  # poll, render, reschedule; no GPU: nothing to refresh

    def watch_nvml(self, nvml: NvmlInfo | None) -> None:
        if nvml is None:
            return
        panel = self.query_one("#env-gpus", Static)
        if not nvml.gpus:
            panel.update("No GPU visible: the CPU trains the demo model only.")
            return
        rows = []
        for g in nvml.gpus:
            util = f"{g.utilization_pct:.0f}%" if g.utilization_pct is not None else "?"
            temp = f"{g.temperature_c:.0f}°C" if g.temperature_c is not None else "?"
            power = f"{g.power_w:.0f} W" if g.power_w is not None else "?"
            rows.append(f"GPU {g.index} {g.name}: {g.memory_used_mib / 1024:.1f}/{g.memory_total_mib / 1024:.1f} GiB, "
                        f"{util} busy, {temp}, {power}")
        panel.update("\n".join(rows))

    # ------------------------------------------------------------ will it fit

    def _fit_request(self) -> FitRequest | None:
        def number(widget_id: str, name: str) -> int | None:
            raw = self.query_one(widget_id, Input).value.strip()
            if not raw.isdigit() or int(raw) < 1:
                self.query_one("#fit-result", Static).update(Text(f"{name} must be a whole number >= 1", style="red"))
                return None
            return int(raw)

        seq, batch, rank = number("#fit-seq", "seq"), number("#fit-batch", "batch"), number("#fit-rank", "rank")
        if seq is None or batch is None or rank is None:
            return None
        return FitRequest(self.query_one("#fit-model", Input).value.strip() or "demo",
                          int(self.query_one("#fit-bits", Select).value), seq, batch, rank,
                          str(self.query_one("#fit-backend", Select).value))

    @on(Button.Pressed, "#fit-go")
    @on(Input.Submitted, "#fit-form Input")
    def action_fit(self) -> None:
        req = self._fit_request()
        if req is None:
            return
        self.query_one("#fit-result", Static).update("Estimating...")
        self._estimate(req)

    @work(thread=True, exclusive=True, exit_on_error=False, group="env-fit")
    def _estimate(self, req: FitRequest) -> None:
        from medtui_engine.fit import estimate_fit
        from medtui_engine.vram import TrainSetting

        est = estimate_fit(req.model, TrainSetting(req.bits, req.seq, req.batch, req.rank, True, req.backend))
        self.post_message(self.FitDone(est.line, est.info))

    def on_environment_screen_fit_done(self, message: FitDone) -> None:
        line, info = message.line, message.info
        text = Text.assemble((VERDICT_MARK[line.verdict] + "  ", VERDICT_STYLE[line.verdict]), line.value)
        parts = info.get("estimate", {}).get("parts_gib", {})
        if parts:
            text.append("\n" + ", ".join(f"{k} {v:.2f} GiB" for k, v in parts.items()), style="dim")
        if line.fix:
            text.append(f"\n-> {line.fix}", style="italic")
        self.query_one("#fit-result", Static).update(text)
