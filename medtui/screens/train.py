"""The Train screen: a form for a new run, and the live view of a run (started here or attached).

The TUI never trains in its own process: Start writes the run's spec and launches a detached job
through the engine; the live view follows the run directory with a :class:`RunWatcher` (a thread
that tails ``events.jsonl`` and posts snapshots a few times a second). Quitting the TUI leaves the
job running; attaching again re-reads the file, so the whole history is back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Checkbox, ContentSwitcher, Footer, Header, Input, Label, Select, Static

from medtui_engine.fmt import fmt_duration
from medtui_engine.jobs.describe import NextSteps, describe_run_status
from medtui_engine.jobs.status import JobStatus
from medtui_engine.train.spec import BACKENDS, SpecError, TrainSpec

from ..runwatch import RunSnapshot, RunWatcher
from ..widgets.curves import ChartData, LineChart, Series, fmt_num
from ..widgets.gauges import GaugeData, Spark, SparkData, VramGauge
from ..widgets.logtail import LogTail
from ..widgets.rows import sentence_text

STATUS_STYLE = {
    "new": "dim", "starting": "bold cyan", "running": "bold green", "stalled": "bold black on yellow",
    "finished": "bold black on green", "stopped": "bold black on yellow", "failed": "bold white on red",
    "crashed": "bold white on red",
}
ACTIVE = tuple(s for s in JobStatus if s.active)


# ------------------------------------------------------------------ run actions (also used by Runs)

def launch_training(runs_dir: Path, spec: TrainSpec, force: bool = False) -> tuple[Path, tuple[str, ...]]:
    """Start a detached training job through the engine (as ``medtui train --detach`` does):
    (run directory, warnings). Raises UserError with the engine's words."""
    from medtui_engine.train.launch import start_run

    started = start_run(runs_dir, spec, force=force)
    return started.run_dir, started.warnings


def resume_training(runs_dir: Path, run_dir: Path, force: bool = False) -> tuple[str, ...]:
    """Resume a stopped / failed / crashed run from its newest checkpoint; returns the warnings."""
    from medtui_engine.train.launch import resume_run

    started = resume_run(runs_dir, run_dir, force=force)
    return started.warnings


class ConfirmStop(ModalScreen[bool]):
    """Says what stopping does before it happens."""

    BINDINGS = [
        Binding("y", "answer(True)", "Stop the run", id="stop-yes"),
        Binding("n,escape", "answer(False)", "Keep training", id="stop-no"),
    ]
    DEFAULT_CSS = """
    ConfirmStop { align: center middle; }
    ConfirmStop > Vertical {
        width: 64; height: auto; max-width: 95%;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    ConfirmStop Horizontal { height: auto; margin-top: 1; }
    ConfirmStop Button { margin-right: 2; }
    """

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Stop run {self.run_id}?", classes="section-title")
            yield Static("The job finishes its current step, saves a checkpoint and stops. "
                         "You can resume it later from that checkpoint (key r).")
            with Horizontal():
                yield Button("Stop (y)", variant="warning", id="stop-yes")
                yield Button("Keep training (n)", id="stop-no")

    def on_mount(self) -> None:
        self.query_one("#stop-no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "stop-yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def ask_stop(app, run_dir: Path, after=None) -> None:
    """Confirm, then ask the job to stop gracefully (STOP file + SIGTERM)."""
    from medtui_engine.runs.jobs import job_alive, request_stop

    run_dir = Path(run_dir)
    if not job_alive(run_dir):
        app.notify(f"{run_dir.name} is not running: nothing to stop", severity="warning")
        return

    def done(yes: bool | None) -> None:
        if not yes:
            return
        try:
            request_stop(run_dir)
        except OSError as exc:
            app.notify(f"could not ask {run_dir.name} to stop: {exc}", severity="error")
            return
        app.notify(f"Stopping {run_dir.name}: it saves a checkpoint first")
        if after:
            after()

    app.push_screen(ConfirmStop(run_dir.name), done)


def do_resume(app, run_dir: Path, after=None) -> None:
    run_dir = Path(run_dir)
    try:
        warnings = resume_training(app.ctx.runs_dir, run_dir)
    except Exception as exc:  # the engine's refusal (still running, finished, GPU busy): its words
        app.notify(f"Cannot resume {run_dir.name}: {exc}", severity="warning", timeout=8)
        return
    for w in warnings:
        app.notify(w, severity="warning", timeout=8)
    app.notify(f"Resuming {run_dir.name} from its newest checkpoint")
    if after:
        after()


def do_merge(app, run_dir: Path) -> None:
    try:
        from medtui.widgets.merge_dialog import open_merge_dialog  # type: ignore[import-not-found]
    except ImportError:
        app.notify("Merging is not available in this build", severity="warning")
        return
    open_merge_dialog(app, Path(run_dir))


def do_console(app, run_dir: Path) -> None:
    app.goto("console", run=str(run_dir))


class ScreenActions(Provider):
    """The command palette's entries for the keys of the screen it was opened on: every action
    with a footer hint can also be found by name (ctrl+p)."""

    def _actions(self) -> list[tuple[str, str, object]]:
        out = []
        for active in self.screen.active_bindings.values():
            b = active.binding
            if not active.enabled or not b.description or active.node is self.app:
                continue  # the app's own keys (screens, quit) have their palette entries already
            label = f"{b.description} ({self.app.get_key_display(b)})"
            out.append((label, b.tooltip or b.description, partial(active.node.run_action, b.action)))
        return out

    async def discover(self) -> Hits:
        for label, help_text, run in self._actions():
            yield DiscoveryHit(label, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for label, help_text, run in self._actions():
            score = matcher.match(label)
            if score > 0:
                yield Hit(score, matcher.highlight(label), run, help=help_text)


# ------------------------------------------------------------------ the live view

# what the user does next, in this view's keys (the sentences are the engine's)
TUI_STEPS = NextSteps(resume="r resumes", merge="m merges it", console="o opens the console with it",
                      log="see the log below")


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


class RunView(Vertical, can_focus=True):
    """Everything about one run, kept current by a RunWatcher."""

    BINDINGS = [
        Binding("s", "stop", "Stop", id="run-stop", tooltip="Stop the run gracefully (asks first)"),
        Binding("r", "resume", "Resume", id="run-resume", tooltip="Resume from the newest checkpoint"),
        Binding("m", "merge", "Merge", id="run-merge", tooltip="Merge the adapter into the base model"),
        Binding("o", "console", "Console", id="run-console", tooltip="Open the console with this run's adapter"),
        Binding("g", "log_scale", "Log scale", id="run-log", tooltip="Loss on a log scale (toggle)"),
    ]

    class Updated(Message):
        def __init__(self, snapshot: RunSnapshot) -> None:
            super().__init__()
            self.snapshot = snapshot

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.run_dir: Path | None = None
        self.snapshot: RunSnapshot | None = None
        self.watcher: RunWatcher | None = None
        self.log_y = False
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
    def _need_run(self) -> Path | None:
        if self.run_dir is None:
            self.app.notify("No run is shown: start one or attach from Runs (F5)", severity="warning")
        return self.run_dir

    def action_stop(self) -> None:
        if (rd := self._need_run()) is not None:
            ask_stop(self.app, rd, after=self._poke)

    def action_resume(self) -> None:
        if (rd := self._need_run()) is not None:
            do_resume(self.app, rd, after=self._poke)

    def action_merge(self) -> None:
        if (rd := self._need_run()) is not None:
            do_merge(self.app, rd)

    def action_console(self) -> None:
        if (rd := self._need_run()) is not None:
            do_console(self.app, rd)

    def action_log_scale(self) -> None:
        self.log_y = not self.log_y
        if self.snapshot is not None:
            self.query_one("#rv-loss", LineChart).data = loss_chart(self.snapshot, self.log_y)

    def _poke(self) -> None:
        if self.watcher is not None:
            self.watcher.poke()


# ------------------------------------------------------------------ the form

@dataclass(frozen=True)
class FormField:
    name: str          # TrainSpec attribute
    label: str
    kind: str          # text | int | float | bool | choice
    choices: tuple[str, ...] = ()
    help: str = ""


FORM: tuple[FormField, ...] = (
    FormField("model", "Model", "text", help="a local model directory, or demo (tiny, random weights)"),
    FormField("data", "Training data", "text", help="JSON / JSONL / CSV / Parquet with Question, Complex_CoT, Response"),
    FormField("limit_rows", "Rows to use", "int", help="0 = all rows"),
    FormField("template", "Prompt template", "choice", ("seed", "chat")),
    FormField("mask_prompt", "Loss on answer only", "bool", help="mask the prompt: train on reasoning + answer"),
    FormField("backend", "Backend", "choice", BACKENDS),
    FormField("load_in_4bit", "Load in 4-bit", "bool", help="QLoRA (GPU only; the CPU loads 16/32-bit)"),
    FormField("lora_r", "LoRA rank", "int"),
    FormField("lora_alpha", "LoRA alpha", "int"),
    FormField("lora_dropout", "LoRA dropout", "float"),
    FormField("micro_batch", "Micro batch", "int"),
    FormField("grad_accum", "Grad accumulation", "int"),
    FormField("epochs", "Epochs", "float"),
    FormField("max_steps", "Max steps", "int", help="0 = by epochs"),
    FormField("learning_rate", "Learning rate", "float"),
    FormField("max_seq_length", "Max seq length", "int"),
    FormField("eval_fraction", "Eval fraction", "float", help="0 = no eval split"),
    FormField("save_steps", "Checkpoint every", "int", help="steps; 0 = each epoch only"),
)
_SPEC_FIELDS = {f.name for f in fields(TrainSpec)}


def default_spec(ctx) -> TrainSpec:
    """The seed's defaults, with the bundled demo data filled in for the demo model."""
    from medtui_engine.paths import project_data_dir

    spec = TrainSpec(model=ctx.settings.default_model or "demo", backend=ctx.settings.backend,
                     template=ctx.settings.template)
    demo_data = project_data_dir() / "demo_train.jsonl"
    if spec.model == "demo" and demo_data.is_file():
        spec.data = str(demo_data)
    return spec


def parse_value(f: FormField, raw) -> tuple[object, str | None]:
    """(value, problem) for one form entry."""
    if f.kind == "bool":
        return bool(raw), None
    if f.kind == "choice":
        return raw, None
    text = str(raw).strip()
    if f.kind == "text":
        return text, None
    try:
        if f.kind == "int":
            return int(text), None
        return float(text), None
    except ValueError:
        kind = "a whole number" if f.kind == "int" else "a number"
        return raw, f"{f.label} must be {kind}, got {text!r}"


def field_problems(values: dict, base: TrainSpec) -> tuple[dict[str, list[str]], list[str]]:
    """Per-field problems (each field checked alone on top of ``base``'s defaults) and the problems of
    the whole spec that belong to no single field. The words are the engine's own."""
    def problems(spec: TrainSpec) -> list[str]:
        try:
            spec.validate(check_files=True)
        except SpecError as exc:
            return list(exc.problems)
        return []

    baseline = set(problems(base))
    per: dict[str, list[str]] = {}
    for name, value in values.items():
        trial = TrainSpec(**{**base.__dict__, name: value})
        if name != "data":
            trial.data = values.get("data", base.data)  # so "no training data" stays the data field's
        mine = [p for p in problems(trial) if p not in baseline]
        if name != "data":
            mine = [p for p in mine if "training data" not in p]
        if mine:
            per[name] = mine
    try:
        full = TrainSpec(**{**base.__dict__, **values})
        every = problems(full)
    except TypeError as exc:
        every = [str(exc)]
    owned = {p for ps in per.values() for p in ps}
    return per, [p for p in every if p not in owned]


class TrainScreen(Screen):
    CSS_PATH = "train.tcss"
    COMMANDS = {ScreenActions}
    BINDINGS = [
        Binding("ctrl+r", "start", "Start", id="train-start", tooltip="Start training with this form (a detached job)"),
        Binding("ctrl+e", "estimate", "Will it fit", id="train-fit", tooltip="Estimate GPU memory for this setting"),
        Binding("n", "new_run", "New run", id="train-new", tooltip="Show the form for a new run"),
        Binding("escape", "live", "Live view", id="train-live", tooltip="Back to the live view of the run"),
    ]

    class FitDone(Message):
        def __init__(self, text: Text) -> None:
            super().__init__()
            self.text = text

    class Launched(Message):
        def __init__(self, run_dir: Path | None, error: str | None, warnings: tuple[str, ...] = ()) -> None:
            super().__init__()
            self.run_dir = run_dir
            self.error = error
            self.warnings = warnings

    def __init__(self) -> None:
        super().__init__()
        self.base_spec: TrainSpec | None = None
        self.values: dict = {}
        self.problems: dict[str, list[str]] = {}
        self.general: list[str] = []
        self._fit_timer = None
        self._starting = False
        self._ready = False     # set once the form is filled: changes before that are not the user's

    # ---- layout
    def compose(self) -> ComposeResult:
        yield Header()
        with ContentSwitcher(initial="train-form-pane", id="train-switch"):
            with Vertical(id="train-form-pane"):
                with VerticalScroll(id="train-form"):
                    yield Label("New training run (the seed's settings; change what you need)", classes="section-title")
                    for f in FORM:
                        with Horizontal(classes="form-row", id=f"row-{f.name}"):
                            yield Label(f.label, classes="form-label")
                            yield self._input_for(f)
                        yield Static("", classes="form-error", id=f"err-{f.name}")
                yield Static("", id="train-fit")
                yield Static("", id="train-problems")
                with Horizontal(id="train-actions"):
                    yield Button("Start training (ctrl+r)", variant="success", id="train-start", compact=True)
                    yield Button("Will it fit? (ctrl+e)", id="train-fit-btn", compact=True)
            yield RunView(id="train-live")
        yield Footer()

    def _input_for(self, f: FormField):
        wid = f"f-{f.name}"
        tip = f.help or None
        # compact widgets: one line per setting, so the whole form fits a 24-line terminal
        if f.kind == "bool":
            return Checkbox(f.help or "", value=False, id=wid, tooltip=tip, compact=True)
        if f.kind == "choice":
            return Select([(c, c) for c in f.choices], allow_blank=False, id=wid, tooltip=tip, compact=True)
        return Input(id=wid, classes="form-input", placeholder=f.help, tooltip=tip, compact=True)

    def on_mount(self) -> None:
        self.base_spec = default_spec(self.app.ctx)
        # filling the form is not the user changing it: one validation at the end, not one per field
        with self.prevent(Input.Changed, Select.Changed, Checkbox.Changed):
            for f in FORM:
                value = getattr(self.base_spec, f.name)
                w = self.query_one(f"#f-{f.name}")
                if isinstance(w, Checkbox):
                    w.value = bool(value)
                elif isinstance(w, Select):
                    w.value = value
                else:
                    w.value = fmt_value(value)
        self.validate_form()
        self.query_one("#train-fit", Static).update(Text("Will it fit? press ctrl+e", style="dim"))
        self.call_after_refresh(self._set_ready)

    def _set_ready(self) -> None:
        self._ready = True

    def on_screen_resume(self) -> None:
        params = self.app.take_params("train")
        run = params.get("run")
        if run:
            self.show_run(Path(run))
        elif params.get("data"):
            # From the Dataset screen: a new run on the file just checked, with its template and length.
            self.action_new_run()
            for name in ("data", "template", "max_seq_length"):
                if params.get(name) is not None:
                    self.query_one(f"#f-{name}").value = params[name] if name == "template" else str(params[name])

    # ---- the form
    def read_form(self) -> tuple[dict, dict[str, str]]:
        values, parse = {}, {}
        for f in FORM:
            w = self.query_one(f"#f-{f.name}")
            value, problem = parse_value(f, w.value)
            if problem:
                parse[f.name] = problem
            else:
                values[f.name] = value
        return values, parse

    def validate_form(self) -> bool:
        assert self.base_spec is not None
        values, parse = self.read_form()
        per, general = field_problems(values, self.base_spec)
        for name, problem in parse.items():
            per.setdefault(name, []).insert(0, problem)
        self.values, self.problems, self.general = values, per, general
        for f in FORM:
            msgs = per.get(f.name, [])
            err = self.query_one(f"#err-{f.name}", Static)
            err.update("\n".join(msgs))
            err.display = bool(msgs)
            self.query_one(f"#f-{f.name}").set_class(bool(msgs), "-invalid")
        box = self.query_one("#train-problems", Static)
        box.update(Text("\n".join(general), style="red") if general else "")
        box.display = bool(general)
        ok = not per and not general
        self.query_one("#train-start", Button).disabled = not ok
        return ok

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _changed(self, event) -> None:
        if not self._ready or not str(getattr(event.control, "id", "")).startswith("f-"):
            return
        self.validate_form()
        if self._fit_timer is not None:
            self._fit_timer.stop()
        self._fit_timer = self.set_timer(0.8, self.action_estimate)

    def current_spec(self) -> TrainSpec:
        assert self.base_spec is not None
        return TrainSpec(**{**self.base_spec.__dict__, **self.values})

    # ---- will it fit
    def action_estimate(self) -> None:
        if self.base_spec is None:
            return
        if self.problems.get("model"):
            self.query_one("#train-fit", Static).update(Text("Will it fit: fix the model first", style="dim"))
            return
        self.query_one("#train-fit", Static).update(Text("Will it fit: estimating...", style="dim"))
        self._estimate(self.current_spec())

    @work(thread=True, exclusive=True, exit_on_error=False, group="fit")
    def _estimate(self, spec: TrainSpec) -> None:
        # the estimate reads the model's config and NVML: blocking, so in a thread
        from medtui_engine.fit import estimate_fit_for_spec

        line = estimate_fit_for_spec(spec).line
        style = {"ok": "green", "warning": "yellow", "problem": "bold red"}.get(line.verdict, "")
        text = Text.assemble(("Will it fit: ", "bold"), (line.value, style))
        if line.fix:
            text.append(f"\n  {line.fix}", style="dim")
        self.post_message(self.FitDone(text))

    @on(FitDone)
    def _fit_done(self, message: FitDone) -> None:
        self.query_one("#train-fit", Static).update(message.text)

    # ---- start
    def action_start(self) -> None:
        if self.query_one(ContentSwitcher).current != "train-form-pane":
            self.action_new_run()
            return
        if self._starting:
            return
        if not self.validate_form():
            self.app.notify("Fix the settings marked in red first", severity="error")
            return
        self._starting = True
        self.query_one("#train-start", Button).disabled = True
        self.app.notify("Starting a training job...")
        self._launch(self.current_spec())

    @on(Button.Pressed, "#train-start")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#train-fit-btn")
    def _fit_pressed(self) -> None:
        self.action_estimate()

    @work(thread=True, exclusive=True, exit_on_error=False, group="launch")
    def _launch(self, spec: TrainSpec) -> None:
        try:
            run_dir, warnings = launch_training(self.app.ctx.runs_dir, spec)
            self.post_message(self.Launched(run_dir, None, warnings))
        except SpecError as exc:
            self.post_message(self.Launched(None, "; ".join(exc.problems)))
        except Exception as exc:  # the engine refused (GPU busy, model missing): show its words
            self.post_message(self.Launched(None, str(exc) or type(exc).__name__))

    @on(Launched)
    def _launched(self, message: Launched) -> None:
        self._starting = False
        self.validate_form()
        if message.error or message.run_dir is None:
            self.app.notify(f"Could not start: {message.error}", severity="error", timeout=10)
            return
        for w in message.warnings:
            self.app.notify(w, severity="warning", timeout=8)
        self.app.notify(f"Started {message.run_dir.name}: it keeps training if you quit")
        self.show_run(message.run_dir)

    # ---- switching between the form and a run
    def show_run(self, run_dir: Path) -> None:
        view = self.query_one(RunView)
        view.attach(run_dir)
        self.query_one(ContentSwitcher).current = "train-live"
        self.sub_title = f"run {run_dir.name}"
        view.focus()
        self.refresh_bindings()

    def action_new_run(self) -> None:
        self.query_one(ContentSwitcher).current = "train-form-pane"
        self.sub_title = "new run"
        self.query_one("#f-model").focus()
        self.refresh_bindings()

    def action_live(self) -> None:
        view = self.query_one(RunView)
        if view.run_dir is None:
            self.app.notify("No run yet: start one here, or attach from Runs (F5)", severity="warning")
            return
        self.query_one(ContentSwitcher).current = "train-live"
        view.focus()
        self.refresh_bindings()

    def check_action(self, action: str, parameters) -> bool | None:
        try:
            live = self.query_one(ContentSwitcher).current == "train-live"
        except Exception:
            return True
        if action in ("start", "estimate"):
            return not live
        if action == "new_run":
            return live
        if action == "live":
            return not live and self.query_one(RunView).run_dir is not None
        return True


def fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
