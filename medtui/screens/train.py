"""The Train screen: a form for a new run, and the live view of a run (started here or attached).

The TUI never trains in its own process: Start writes the run's spec and launches a detached job
through the engine; the live view follows the run directory with a :class:`RunWatcher` (a thread
that tails ``events.jsonl`` and posts snapshots a few times a second). Quitting the TUI leaves the
job running; attaching again re-reads the file, so the whole history is back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Button, ContentSwitcher, Footer, Header, Static

from medtui_engine.privacy.gate import IdentifierGate
from medtui_engine.train.spec import SpecError, TrainSpec

from ..run_actions import launch_training
from ..widgets.confirm import Confirm
from ..widgets.run_view import RunView
from ..widgets.train_form import TrainForm

FORM_PANE, LIVE_PANE = "train-form-pane", "train-live"


def default_spec(ctx) -> TrainSpec:
    """The seed's defaults, with the bundled demo data filled in for the demo model."""
    from medtui_engine.paths import project_data_dir

    spec = TrainSpec(model=ctx.settings.default_model or "demo", backend=ctx.settings.backend,
                     template=ctx.settings.template)
    demo_data = project_data_dir() / "demo_train.jsonl"
    if spec.model == "demo" and demo_data.is_file():
        spec.data = str(demo_data)
    return spec


class TrainScreen(Screen):
    CSS_PATH = "train.tcss"
    BINDINGS = [
        Binding("ctrl+r", "start", "Start", id="train-start", tooltip="Start training with this form (a detached job)"),
        Binding("ctrl+e", "estimate", "Will it fit", id="train-fit", tooltip="Estimate GPU memory for this setting"),
        Binding("n", "new_run", "New run", id="train-new", tooltip="Show the form for a new run"),
        Binding("escape", "live", "Live view", id="train-live", tooltip="Back to the live view of the run"),
    ]

    @dataclass
    class FitDone(Message):
        """The memory estimate for the form's setting, ready to show."""

        text: Text
        recipe: dict   # the settings the recipe chose (the form shows those the user left to it)
        spec: TrainSpec | None = None  # the setting it was made for (a newer edit makes it stale)

    @dataclass
    class Launched(Message):
        """The engine started the run (``run_dir``) or refused it (``error``, in its words)."""

        run_dir: Path | None
        error: str | None
        warnings: tuple[str, ...] = ()
        gate: object | None = None  # the data audit, when the identifier gate refused (asks to confirm)

    pane: var[str] = var(FORM_PANE, init=False, always_update=True)
    """Which pane is shown: the form for a new run, or the live view of a run."""

    def __init__(self) -> None:
        super().__init__()
        self._fit_timer = None
        self._starting = False

    # ---- layout
    def compose(self) -> ComposeResult:
        yield Header()
        with ContentSwitcher(initial=FORM_PANE, id="train-switch"):
            with Vertical(id=FORM_PANE):
                yield TrainForm(id="train-form")
                yield Static("", id="train-fit")
                yield Static("", id="train-problems")
                with Horizontal(id="train-actions"):
                    yield Button("Start training (ctrl+r)", variant="success", id="train-start", compact=True)
                    yield Button("Will it fit? (ctrl+e)", id="train-fit-btn", compact=True)
            yield RunView(id=LIVE_PANE)
        yield Footer()

    @property
    def form(self) -> TrainForm:
        return self.query_one(TrainForm)

    @property
    def ready(self) -> bool:
        """The form is filled: what changes from now on is the user's."""
        return self.form.ready

    @property
    def problems(self) -> dict[str, str]:
        return self.form.problems

    def on_mount(self) -> None:
        self.form.fill(default_spec(self.app.ctx))
        self.query_one("#train-fit", Static).update(Text("Will it fit? press ctrl+e", style="dim"))
        self._fit_timer = self.set_timer(0.8, self.action_estimate)  # the recipe shown before any edit

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
                    self.form.set_value(name, params[name])

    # ---- the form's checks
    @on(TrainForm.Checked)
    def _checked(self, message: TrainForm.Checked) -> None:
        general = self.form.general
        box = self.query_one("#train-problems", Static)
        box.update(Text("\n".join(general), style="red") if general else "")
        box.display = bool(general)
        self.query_one("#train-start", Button).disabled = not message.ok or self._starting

    @on(TrainForm.Edited)
    def _edited(self) -> None:
        if self._fit_timer is not None:
            self._fit_timer.stop()
        self._fit_timer = self.set_timer(0.8, self.action_estimate)

    def current_spec(self) -> TrainSpec:
        return self.form.spec()

    # ---- will it fit
    def action_estimate(self) -> None:
        if self.form.problems.get("model"):
            self.query_one("#train-fit", Static).update(Text("Will it fit: fix the model first", style="dim"))
            return
        self.query_one("#train-fit", Static).update(Text("Will it fit: estimating...", style="dim"))
        self._estimate(self.current_spec())

    @work(thread=True, exclusive=True, exit_on_error=False, group="fit")
    def _estimate(self, spec: TrainSpec) -> None:
        # the estimate reads the model's config, NVML and the data's lengths: blocking, so in a thread
        from medtui_engine.fit import estimate_fit_for_spec
        from medtui_engine.train.recipe import preview_recipe

        recipe, applied = preview_recipe(spec)   # the recipe the run would get, and the fit of that
        line = estimate_fit_for_spec(applied).line
        style = {"ok": "green", "warning": "yellow", "problem": "bold red"}.get(line.verdict, "")
        text = Text.assemble(("Will it fit: ", "bold"), (line.value, style))
        if line.fix:
            text.append(f"\n  {line.fix}", style="dim")
        text.append("\nRecipe: ", style="bold")
        text.append(recipe.text())
        text.append("\n  Settings in italics are the recipe's choice; change one to keep your own.", style="dim")
        self.post_message(self.FitDone(text, recipe.settings(), spec))

    @on(FitDone)
    def _fit_done(self, message: FitDone) -> None:
        if message.spec is not None and message.spec != self.current_spec():
            return  # made for a setting edited since: the estimate of the new one follows
        self.query_one("#train-fit", Static).update(message.text)
        self.form.show_recipe(message.recipe)

    # ---- start
    def action_start(self) -> None:
        if self.pane != FORM_PANE:
            self.action_new_run()
            return
        if self._starting:
            return
        if not self.form.recheck():
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
            self.post_message(self.Launched(run_dir, None, tuple(warnings)))
        except SpecError as exc:
            self.post_message(self.Launched(None, "; ".join(exc.messages())))
        except IdentifierGate as exc:  # possible identifiers: the user is asked (see _launched)
            self.post_message(self.Launched(None, str(exc), gate=exc.audit))
        except Exception as exc:  # the engine refused (GPU busy, model missing): show its words
            self.post_message(self.Launched(None, str(exc) or type(exc).__name__))

    @on(Launched)
    def _launched(self, message: Launched) -> None:
        self._starting = False
        self.form.recheck()
        if message.gate is not None:
            self._confirm_identifiers(message.gate)
            return
        if message.error or message.run_dir is None:
            self.app.notify(f"Could not start: {message.error}", severity="error", timeout=10)
            return
        for w in message.warnings:
            self.app.notify(w, severity="warning", timeout=8)
        self.app.notify(f"Started {message.run_dir.name}: it keeps training if you quit")
        self.show_run(message.run_dir)

    def _confirm_identifiers(self, audit) -> None:
        """The data holds possible identifiers: name the counts; training anyway records the
        acknowledgement of each kind found with the run."""
        from medtui_engine.privacy.gate import gate_question, parse_kinds

        title, body = gate_question(audit)

        def answered(yes: bool | None) -> None:
            if not yes or self._starting:
                return
            spec = self.current_spec()
            spec.allow_identifiers = ",".join(parse_kinds([*parse_kinds(spec.allow_identifiers), *audit.identifiers]))
            self._starting = True
            self.query_one("#train-start", Button).disabled = True
            self.app.notify("Starting a training job (identifiers acknowledged)...")
            self._launch(spec)

        self.app.push_screen(Confirm(title, body, yes="Train anyway", no="Cancel", yes_key="y", no_key="n",
                                     yes_help="Train on this data, recording the acknowledgement",
                                     no_help="Do not train; redact the file first"), answered)

    # ---- switching between the form and a run
    def watch_pane(self, pane: str) -> None:
        self.query_one(ContentSwitcher).current = pane
        if pane == LIVE_PANE:
            self.query_one(RunView).focus()
        else:
            self.sub_title = "new run"
            self.query_one("#f-model").focus()
        self.refresh_bindings()

    def show_run(self, run_dir: Path) -> None:
        self.query_one(RunView).attach(run_dir)
        self.sub_title = f"run {run_dir.name}"
        self.pane = LIVE_PANE

    def action_new_run(self) -> None:
        self.pane = FORM_PANE

    def action_live(self) -> None:
        if self.query_one(RunView).run_dir is None:
            self.app.notify("No run yet: start one here, or attach from Runs (F5)", severity="warning")
            return
        self.pane = LIVE_PANE

    def check_action(self, action: str, parameters) -> bool | None:
        live = self.pane == LIVE_PANE
        if action in ("start", "estimate"):
            return not live
        if action == "new_run":
            return live
        if action == "live":
            views = self.query(RunView)
            return not live and bool(views) and views.first().run_dir is not None
        return True
