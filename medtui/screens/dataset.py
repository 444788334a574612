"""The Dataset screen: is this data worth a six-hour run?

Open a file (path with completion), map its columns, validate it in a worker (the UI stays live),
read the findings (enter jumps to the row's preview), see each row exactly as the trainer will
(prompt part vs trained part, both templates), the token-length histogram, and a clear go / no-go.

All the work is the engine's (``medtui_engine.dataset``); this screen only draws its results. The
findings table is capped and previews are rendered one row at a time, so a 20,000-row file never
turns into 20,000 widgets. Possible identifiers are masked in findings and previews alike.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.suggester import Suggester
from textual.widgets import (
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    Select,
    Static,
    TabbedContent,
    TabPane,
)

from medtui.widgets.histogram import HistogramData, TokenHistogram

FINDINGS_SHOWN = 1000   # rows in the findings table; the CLI's --json has every one
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
SEVERITY_MARK = {"error": "ERROR", "warning": "warn", "info": "info"}
NO_COT = "(none)"
STAGES = {"reading": "reading the file", "tokenizer": "loading the tokenizer", "checking": "checking rows",
          "measuring": "measuring tokens"}
DEMO_FILE = "demo_train.jsonl"


def demo_data_path() -> Path | None:
    """The demo data set that comes with medtui, offered while no file is open (None if absent)."""
    from medtui_engine.paths import project_data_dir

    path = project_data_dir() / DEMO_FILE
    return path if path.is_file() else None


class PathSuggester(Suggester):
    """Completes the last part of a path from the directory listing (right arrow accepts)."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        path = Path(os.path.expanduser(value))
        folder, stem = (path, "") if value.endswith(os.sep) else (path.parent, path.name)
        try:
            names = sorted(e.name + (os.sep if e.is_dir() else "") for e in os.scandir(folder)
                           if e.name.startswith(stem) and not e.name.startswith("."))
        except OSError:
            return None
        if not names:
            return None
        return value + names[0][len(stem):]


class DatasetScreen(Screen):
    CSS_PATH = "dataset.tcss"
    BINDINGS = [
        Binding("o", "open", "Open", id="dataset-open", tooltip="Type the path of a data file"),
        Binding("d", "open_demo", "Demo data", id="dataset-demo",
                tooltip=f"Open the demo data set that comes with medtui (data/{DEMO_FILE})"),
        Binding("v", "validate", "Validate", id="dataset-validate", tooltip="Load, check and measure the file"),
        Binding("t", "toggle_template", "Template", id="dataset-template",
                tooltip="Switch the preview and measurement between the seed and chat templates"),
        Binding("f", "show_tab('tab-findings')", "Findings", id="dataset-findings", tooltip="The findings table"),
        Binding("p", "show_tab('tab-preview')", "Preview", id="dataset-preview",
                tooltip="The selected row exactly as the trainer sees it"),
        Binding("h", "show_tab('tab-tokens')", "Tokens", id="dataset-tokens", tooltip="Token-length histogram and estimate"),
        Binding("left_square_bracket", "step_row(-1)", "Prev row", id="dataset-prev", tooltip="Preview the previous row"),
        Binding("right_square_bracket", "step_row(1)", "Next row", id="dataset-next", tooltip="Preview the next row"),
        Binding("g", "goto_row", "Go to row", id="dataset-goto", tooltip="Preview a row by its number"),
        Binding("n", "train_with_file", "Train on it", id="dataset-train",
                tooltip="Open the Train form with this file, template and max length filled in"),
        Binding("escape", "leave_field", "Leave field", id="dataset-leave",
                tooltip="Stop typing in this field: the letter keys act on the screen again"),
    ]

    template: reactive[str] = reactive("seed", init=False)

    # -- messages from workers (payloads are not touched again by the thread) --------------------
    # Each carries the request number it answers: a thread worker cannot be stopped mid-way, so a
    # superseded one still reports, and its answer is dropped rather than drawn over a newer one.
    @dataclass
    class Progress(Message):
        request: int
        stage: str
        done: int
        total: int

    @dataclass
    class Validated(Message):
        request: int
        report: Any      # a ValidationReport, no longer touched by the worker
        tokenizer: Any   # the engine's cached tokenizer, only read from here on

    @dataclass
    class Failed(Message):
        request: int
        text: str

    @dataclass
    class Previewed(Message):
        request: int
        preview: Any | None  # a frozen RowPreview, or None with the reason in text
        text: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.report: Any = None        # the last ValidationReport
        self.tokenizer: Any = None     # the model's tokenizer (cached by the engine)
        self.preview_row: int | None = None
        self._finding_rows: list[int] = []  # table row index -> source row
        self._sorted: list[Any] = []         # the findings in table order
        self._populating = False
        self._validation = 0  # request numbers (see the messages above)
        self._preview = 0

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="ds-body"):
            with Horizontal(id="ds-open"):
                yield Label("File", classes="ds-label")
                yield Input(placeholder="JSON/JSONL/CSV/TSV/Parquet file or save_to_disk folder · → completes · enter validates",
                            suggester=PathSuggester(), id="ds-path", compact=True)
            with Horizontal(id="ds-options"):
                yield Label("Q", classes="ds-label")
                yield Select([], prompt="question", id="ds-map-question", compact=True)
                yield Label("CoT", classes="ds-label")
                yield Select([], prompt="reasoning", id="ds-map-cot", compact=True)
                yield Label("A", classes="ds-label")
                yield Select([], prompt="answer", id="ds-map-response", compact=True)
                yield Label("max seq", classes="ds-label")
                yield Input("8192", type="integer", id="ds-max-seq", tooltip="max_seq_length in tokens", compact=True)
            with Horizontal(id="ds-estimate-form"):
                yield Label("batch", classes="ds-label")
                yield Input("1", type="integer", id="ds-batch", compact=True)
                yield Label("accum", classes="ds-label")
                yield Input("8", type="integer", id="ds-accum", compact=True)
                yield Label("tokens/s", classes="ds-label")
                yield Input("", type="number", placeholder="e.g. 2500", id="ds-tps", compact=True)
            with Horizontal(id="ds-status"):
                yield Static("No file yet: press o and type a path.", id="ds-summary")
                yield ProgressBar(total=100, show_eta=False, id="ds-progress")
            with TabbedContent(initial="tab-findings", id="ds-tabs"):
                with TabPane("Findings", id="tab-findings"):
                    yield DataTable(id="ds-findings", cursor_type="row", zebra_stripes=True)
                    yield Static("", id="ds-hint", classes="muted")
                with TabPane("Preview", id="tab-preview"):
                    with Horizontal(id="ds-preview-bar"):
                        yield Static("", id="ds-preview-head")
                        yield Input(placeholder="row", type="integer", id="ds-row", compact=True)
                    with VerticalScroll(id="ds-preview-scroll"):
                        yield Static("Select a finding (enter) or press g for a row.", id="ds-preview")
                with TabPane("Tokens", id="tab-tokens"):
                    yield TokenHistogram(id="ds-histogram")
                    yield Static("", id="ds-stats")
        yield Footer()

    def on_mount(self) -> None:
        self.template = self.app.ctx.settings.template
        self._show_template()
        table = self.query_one("#ds-findings", DataTable)
        table.add_columns("severity", "where", "kind", "message")
        self.query_one("#ds-progress", ProgressBar).display = False
        path = self.query_one("#ds-path", Input)
        demo = demo_data_path()
        if demo is not None:
            path.value = str(demo)  # offered, all selected on focus: enter opens it, typing replaces it
        path.focus()
        self._show_idle_hint()

    def on_screen_resume(self) -> None:
        params = self.app.take_params("dataset")
        if params.get("path"):
            self.query_one("#ds-path", Input).value = str(params["path"])
            self.action_validate()

    # -- focus and hints: while a text field has the focus it takes the letter keys (Textual then
    # leaves them out of the footer), so the hints name the keys that work there ----------------
    def _typing(self) -> bool:
        return isinstance(self.focused, Input)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "leave_field":
            return self._typing()  # shown only while typing
        return True

    def watch_focused(self) -> None:
        self._show_idle_hint()  # (the screen's own watcher refreshes the footer)

    @on(Input.Changed, "#ds-path")
    def _show_idle_hint(self) -> None:
        """Before the first file: say which keys open one, as they work where the focus is now."""
        if self._validation:
            return  # a file was opened (or tried): the status line is about it now
        demo = demo_data_path()
        path = self.query_one("#ds-path", Input)
        in_path = self.focused is path
        if in_path and demo is not None and path.value.strip() == str(demo):
            hint = "enter opens the demo data named above; type over it for a file of your own (→ completes)"
        elif in_path:
            hint = "type the path of a data file (→ completes), then enter"
        elif self._typing():
            hint = "escape leaves this field; then o types the path of a data file" + (", d opens the demo data"
                                                                                       if demo else "")
        elif demo is not None:
            hint = "d opens the demo data; o types the path of a file of your own"
        else:
            hint = "press o and type the path of a data file"
        self._set_summary(Text(f"No file open yet: {hint}."))

    def action_leave_field(self) -> None:
        in_preview = self.focused is not None and self.focused.id == "ds-row"
        self.query_one("#ds-preview-scroll" if in_preview else "#ds-findings").focus()

    # -- actions ---------------------------------------------------------------------------------
    def action_open(self) -> None:
        self.query_one("#ds-path", Input).focus()

    def action_open_demo(self) -> None:
        demo = demo_data_path()
        if demo is None:
            self.notify(f"The demo data ({DEMO_FILE}) is not in this installation.", severity="warning")
            return
        self.query_one("#ds-path", Input).value = str(demo)
        self.action_validate(new_file=True)

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#ds-tabs", TabbedContent).active = tab

    @on(Input.Submitted, "#ds-path")
    def _path_submitted(self) -> None:
        self.action_validate(new_file=True)

    @on(Input.Submitted, "#ds-max-seq")
    @on(Input.Submitted, "#ds-batch")
    @on(Input.Submitted, "#ds-accum")
    @on(Input.Submitted, "#ds-tps")
    def _options_submitted(self) -> None:
        self.action_validate(reuse=True)

    def _int(self, widget_id: str, default: int, low: int) -> int | None:
        raw = self.query_one(widget_id, Input).value.strip()
        try:
            value = int(raw) if raw else default
        except ValueError:
            value = low - 1
        if value < low:
            self.notify(f"{widget_id[4:]}: a whole number from {low}, please", severity="error")
            return None
        return value

    def _mapping(self) -> Any:
        from medtui_engine.dataset.load import FieldMapping

        values = {}
        for name in ("question", "cot", "response"):
            v = self.query_one(f"#ds-map-{name}", Select).value
            values[name] = None if (v is Select.BLANK or v == NO_COT) else str(v)
        if values["question"] is None or values["response"] is None:
            return None
        return FieldMapping(values["question"], values["cot"], values["response"])

    def action_train_with_file(self) -> None:
        if self.report is None:
            self.notify("Validate a file first (v): training starts from a checked file.", severity="warning")
            return
        max_seq = self._int("#ds-max-seq", 8192, 16)
        self.app.goto("train", data=str(self.report.dataset.path), template=self.template, max_seq_length=max_seq)

    def action_validate(self, new_file: bool = False, reuse: bool = False) -> None:
        """Validate the file: from scratch (new_file), re-reading it (v: it may have been fixed), or
        re-measuring the rows already read (reuse: only the template or the numbers changed)."""
        path = self.query_one("#ds-path", Input).value.strip()
        if not path:
            self.notify("Type the path of a data file first (o), or open the demo data (d).", severity="warning")
            self.action_open()
            return
        max_seq = self._int("#ds-max-seq", 8192, 16)
        batch = self._int("#ds-batch", 1, 1)
        accum = self._int("#ds-accum", 8, 1)
        tps_raw = self.query_one("#ds-tps", Input).value.strip()
        try:
            tps = float(tps_raw) if tps_raw else None
        except ValueError:
            tps = None
        if None in (max_seq, batch, accum):
            return
        dataset = None
        if new_file or self.report is None or str(self.report.dataset.path) != str(Path(path).expanduser()):
            mapping = None  # a new file: let the engine find the columns
        else:
            mapping = self._mapping()
            if reuse and mapping == self.report.dataset.mapping:
                dataset = self.report.dataset  # same file, same columns: measure again, do not re-read
        bar = self.query_one("#ds-progress", ProgressBar)
        bar.display = True
        bar.update(total=100, progress=0)
        self._set_summary(Text(f"Validating {path} …", style="bold"))
        self._validation += 1
        self._validate(self._validation, path, mapping, self.template, max_seq, batch, accum, tps, dataset)

    @work(thread=True, exclusive=True, exit_on_error=False, group="dataset-validate")
    def _validate(self, request: int, path: str, mapping: Any, template: str, max_seq: int, batch: int, accum: int,
                  tps: float | None, dataset: Any = None) -> None:
        from medtui_engine.dataset.tokens import load_tokenizer
        from medtui_engine.dataset.validate import validate_file, validate_loaded
        from medtui_engine.demo import model_label, resolve_model
        from medtui_engine.errors import UserError

        last = [-1]

        def progress(stage: str, done: int, total: int) -> None:
            pct = int(100 * done / total) if total else 0
            if pct // 5 != last[0]:  # a few updates per stage, not one per row
                last[0] = pct // 5
                self.post_message(self.Progress(request, stage, done, total))

        try:
            model_dir = resolve_model(self.app.ctx.settings.default_model or "demo")
            if dataset is not None:
                report = validate_loaded(dataset, tokenizer=load_tokenizer(model_dir), model_label=model_label(model_dir),
                                         template=template, max_seq_length=max_seq, batch_size=batch,
                                         grad_accum=accum, tokens_per_second=tps, progress=progress)
            else:
                report = validate_file(path, mapping, model=model_dir, template=template, max_seq_length=max_seq,
                                       batch_size=batch, grad_accum=accum, tokens_per_second=tps, progress=progress)
            tokenizer = load_tokenizer(model_dir)
        except (UserError, FileNotFoundError) as exc:
            self.post_message(self.Failed(request, str(exc)))
            return
        self.post_message(self.Validated(request, report, tokenizer))

    def on_worker_state_changed(self, event: Any) -> None:
        from textual.worker import WorkerState

        if event.state == WorkerState.ERROR:
            self.post_message(self.Failed(self._validation, f"internal error: {event.worker.error!r}"))

    def on_dataset_screen_progress(self, message: Progress) -> None:
        if message.request != self._validation:
            return
        bar = self.query_one("#ds-progress", ProgressBar)
        bar.update(total=message.total or 1, progress=message.done)
        self._set_summary(Text(f"{STAGES.get(message.stage, message.stage)} … {message.done}/{message.total}"))

    def on_dataset_screen_failed(self, message: Failed) -> None:
        if message.request != self._validation:
            return
        self.query_one("#ds-progress", ProgressBar).display = False
        self._set_summary(Text("Cannot read: " + message.text, style="bold red"))

    def on_dataset_screen_validated(self, message: Validated) -> None:
        if message.request != self._validation:
            return
        self.report, self.tokenizer = message.report, message.tokenizer
        self.query_one("#ds-progress", ProgressBar).display = False
        self._show_summary()
        self._fill_mapping()
        self._fill_findings()
        self._fill_tokens()
        if isinstance(self.focused, Input) and self.focused.id == "ds-path":
            self.query_one("#ds-findings", DataTable).focus()  # so the letter keys work at once
        if self.preview_row is None or self.report.dataset.case_by_row(self.preview_row) is None:
            cases = self.report.dataset.cases
            self.preview_row = cases[0].row if cases else None
        self._request_preview()

    # -- drawing the report ----------------------------------------------------------------------
    def _set_summary(self, text: Text) -> None:
        self.query_one("#ds-summary", Static).update(text)

    def _show_summary(self) -> None:
        r = self.report
        ds = r.dataset
        line = Text()
        line.append(r.summary, style="bold green" if r.go else "bold red")
        encoding = "" if ds.encoding == "utf-8" else f" · {ds.encoding}"
        line.append(f"\n{ds.path.name} · {ds.format}{encoding} · {r.template} · {r.model}", style="dim")
        self._set_summary(line)

    def _fill_mapping(self) -> None:
        ds = self.report.dataset
        self._populating = True
        try:
            options = [(c, c) for c in ds.columns]
            for name in ("question", "cot", "response"):
                select = self.query_one(f"#ds-map-{name}", Select)
                opts = options + ([(NO_COT, NO_COT)] if name == "cot" else [])
                select.set_options(opts)
                value = getattr(ds.mapping, name)
                select.value = value if value is not None else NO_COT
        finally:
            self.call_after_refresh(self._done_populating)

    def _done_populating(self) -> None:
        self._populating = False

    @on(Select.Changed)
    def _mapping_changed(self, event: Select.Changed) -> None:
        if self._populating or self.report is None or event.value is Select.BLANK:
            return
        if self._mapping() != self.report.dataset.mapping:
            self.action_validate()

    def _fill_findings(self) -> None:
        table = self.query_one("#ds-findings", DataTable)
        table.clear()
        self._finding_rows = []
        findings = self._sorted = self.report.sorted_findings()
        for f in findings[:FINDINGS_SHOWN]:
            table.add_row(Text(SEVERITY_MARK[f.severity], style=SEVERITY_STYLE[f.severity]), f.where, f.kind,
                          f.message)
            self._finding_rows.append(f.row)
        hint = self.query_one("#ds-hint", Static)
        if not findings:
            hint.update("No findings: every row is clean.")
        else:
            hint.update(self._hint_for(0))
        if len(findings) > FINDINGS_SHOWN:
            self.notify(f"Showing the first {FINDINGS_SHOWN} of {len(findings)} findings, most serious first; "
                        "medtui validate FILE --json lists them all.", timeout=8)

    def _hint_for(self, index: int) -> str:
        if not 0 <= index < len(self._sorted):
            return ""
        f = self._sorted[index]
        return f"{f.where}: {f.message}\n→ {f.hint}" + ("  (enter: preview this row)" if f.row else "")

    @on(DataTable.RowHighlighted, "#ds-findings")
    def _finding_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.query_one("#ds-hint", Static).update(self._hint_for(event.cursor_row))

    @on(DataTable.RowSelected, "#ds-findings")
    def _finding_selected(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self._finding_rows):
            row = self._finding_rows[event.cursor_row]
            if row > 0:
                self.show_row(row)

    def _fill_tokens(self) -> None:
        from medtui_engine.dataset.measure import format_duration
        from medtui_engine.sections import SECTION_LABELS

        r = self.report
        m, est = r.measurement, r.estimate
        hist = self.query_one("#ds-histogram", TokenHistogram)
        stats = Text()
        if m is None:
            hist.data = None
            stats.append("No token measurement (no usable rows).", style="dim")
        else:
            hist.data = HistogramData(m.histogram.edges, m.histogram.counts, m.max_seq_length)
            stats.append(f"{m.rows} rows · {m.total_tokens:,} tokens · p50 {m.p50} · p95 {m.p95} · max {m.max} · "
                         f"trained {m.trained_tokens:,} · max_seq_length {m.max_seq_length}"
                         + (" (┃)" if m.max_seq_length <= m.histogram.edges[-1] else "") + "\n")
            if m.too_long:
                stats.append(f"{m.too_long} row(s) longer than max_seq_length {m.max_seq_length} "
                             f"(by up to {m.too_long_max_over} tokens): truncation cuts their answer's end and EOS\n",
                             style="yellow")
            if est:
                stats.append(f"epoch: {est.steps_per_epoch} steps ({est.train_rows} rows / batch {est.batch_size} × "
                             f"accum {est.grad_accum})")
                stats.append(f" · ~{format_duration(est.epoch_seconds)} at {est.tokens_per_second:,.0f} tokens/s\n"
                             if est.epoch_seconds is not None else " · give tokens/s above for an epoch time\n")
        if r.dataset.cases:
            stats.append("sections: " + "  ".join(f"{SECTION_LABELS[k]} {v:.0%}" for k, v in r.section_rates.items())
                         + f"  · three elements {r.three_elements_rate:.0%}", style="dim")
        self.query_one("#ds-stats", Static).update(stats)

    # -- the preview -----------------------------------------------------------------------------
    def show_row(self, row: int) -> None:
        self.preview_row = row
        self.action_show_tab("tab-preview")
        self._request_preview()

    def action_goto_row(self) -> None:
        self.action_show_tab("tab-preview")
        self.call_after_refresh(self.query_one("#ds-row", Input).focus)  # once the tab is shown

    @on(Input.Submitted, "#ds-row")
    def _row_submitted(self, event: Input.Submitted) -> None:
        try:
            row = int(event.value)
        except ValueError:
            return
        self.show_row(row)
        self.query_one("#ds-preview-scroll").focus()

    def action_step_row(self, delta: int) -> None:
        if self.report is None or not self.report.dataset.cases:
            return
        rows = [c.row for c in self.report.dataset.cases]
        current = self.preview_row or rows[0]
        i = bisect.bisect_left(rows, current)
        if i < len(rows) and rows[i] == current:
            i += delta
        elif delta < 0:
            i -= 1
        self.preview_row = rows[max(0, min(len(rows) - 1, i))]
        self._request_preview()

    def action_toggle_template(self) -> None:
        self.template = "chat" if self.template == "seed" else "seed"

    def watch_template(self) -> None:
        self._show_template()
        if self.report is not None:
            self._request_preview()
            self.action_validate(reuse=True)  # the lengths depend on the template

    def _show_template(self) -> None:
        self.sub_title = f"dataset · template {self.template}"

    def _request_preview(self) -> None:
        if self.report is None or self.tokenizer is None or self.preview_row is None:
            return
        case = self.report.dataset.case_by_row(self.preview_row)
        head = self.query_one("#ds-preview-head", Static)
        if case is None:
            why = [f for f in self.report.findings if f.row == self.preview_row and f.severity == "error"]
            text = (f"Row {self.preview_row} is not used for training: {why[0].message}" if why
                    else f"There is no row {self.preview_row} in this file.")
            head.update(Text(f"row {self.preview_row}", style="bold"))
            self.query_one("#ds-preview", Static).update(Text(text, style="yellow"))
            return
        head.update(Text(f"row {case.row} · template {self.template} · rendering …", style="bold"))
        self._preview += 1
        self._render_preview(self._preview, case, self.template, self.tokenizer)

    @work(thread=True, exclusive=True, exit_on_error=False, group="dataset-preview")
    def _render_preview(self, request: int, case: Any, template: str, tokenizer: Any) -> None:
        from medtui_engine.dataset.preview import render_preview
        from medtui_engine.errors import UserError
        from medtui_engine.templates import TemplateError

        try:
            self.post_message(self.Previewed(request, render_preview(case, template, tokenizer)))
        except (TemplateError, UserError) as exc:
            self.post_message(self.Previewed(request, None, str(exc)))

    def on_dataset_screen_previewed(self, message: Previewed) -> None:
        if message.request != self._preview:
            return
        body = self.query_one("#ds-preview", Static)
        head = self.query_one("#ds-preview-head", Static)
        p = message.preview
        if p is None:
            head.update(Text(f"row {self.preview_row}", style="bold"))
            body.update(Text(message.text, style="bold red"))
            return
        head.update(Text(f"row {p.row} · template {p.template} · prompt {p.prompt_tokens} tokens · "
                         f"trained {p.completion_tokens} tokens", style="bold"))
        text = Text()
        for note in p.notes:
            text.append(f"note: {note}\n", style="yellow")
        text.append("── prompt (what the user gives; masked from the loss) ──\n", style="dim bold")
        text.append(p.prompt, style="dim")
        text.append("\n── trained (think + answer + EOS: what the model learns to write) ──\n", style="bold green")
        text.append(p.completion, style="green")
        body.update(text)
        self.query_one("#ds-preview-scroll", VerticalScroll).scroll_home(animate=False)
