"""The Case console: type or pick a case, stream the model's answer, compare base and tuned.

Loading and answering run in worker threads (the engine's ``medtui_engine.infer``); they report back
only through messages with immutable payloads, batched to a few per second while an answer streams.
torch & co are imported by those workers, never when this module is imported.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from medtui_engine.errors import UserError
from medtui_engine.infer.cases import DemoCase, load_console_cases
from medtui_engine.infer.loader import LoadedModel, LoadOptions
from medtui_engine.infer.sampling import SamplingSettings
from medtui_engine.infer.source import ModelSource, list_choices, resolve_source
from medtui_engine.notices import DISCLAIMER
from medtui_engine.transcripts import (
    Transcript,
    TranscriptEntry,
    list_transcripts,
    load_transcript,
    save_transcript,
)

from ..widgets.answer import AnswerView

if TYPE_CHECKING:
    from medtui_engine.infer.stream import GenerationResult

STREAM_UPDATE_S = 0.2   # at most ~5 UI updates a second per answer while streaming
TUNED, BASE = "tuned", "base"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _gpu_text() -> str:
    from medtui_engine.gpu import read_nvml

    info = read_nvml(with_processes=False)
    if not info.available or not info.gpus:
        return "no GPU (CPU)"
    return "  ".join(f"GPU{g.index} {g.memory_used_mib / 1024:.1f}/{g.memory_total_mib / 1024:.0f} GiB"
                     for g in info.gpus)


# --------------------------------------------------------------------------- dialogs


class CasePicker(ModalScreen[int | None]):
    """Pick one of the bundled demo cases."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="cases-cancel", tooltip="Close without picking")]

    def __init__(self, cases: list[DemoCase]) -> None:
        super().__init__()
        self.cases = cases

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Demo cases (enter picks, escape cancels)", classes="section-title")
            yield OptionList(*(Option(f"{i}. {c.title}  {c.question[:40]}", id=str(i))
                               for i, c in enumerate(self.cases)), id="case-list")

    @on(OptionList.OptionSelected, "#case-list")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))


class ModelPicker(ModalScreen[str | None]):
    """Pick a model: the demo, a merged model, a run (base + adapter), or type a directory."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="models-cancel", tooltip="Close without loading")]

    def __init__(self, choices: list[tuple[str, str]]) -> None:
        super().__init__()
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Load a model (enter loads, escape cancels)", classes="section-title")
            yield OptionList(*(Option(desc, id=str(i)) for i, (_arg, desc) in enumerate(self.choices)),
                             id="model-list")
            yield Label("...or a directory (merged model, run, adapter, base):", classes="muted")
            yield Input(placeholder="/path/to/model-or-run", id="model-path")

    @on(OptionList.OptionSelected, "#model-list")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.choices[int(event.option.id)][0])

    @on(Input.Submitted, "#model-path")
    def _typed(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())


class SamplingDialog(ModalScreen[SamplingSettings | None]):
    """Edit the sampling settings; the engine's own checks say what is wrong."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="sampling-cancel", tooltip="Keep the settings")]
    FIELDS = (("temperature", "temperature (0 = greedy)"), ("top_p", "top_p"), ("top_k", "top_k (0 = off)"),
              ("max_new_tokens", "max_new_tokens"), ("seed", "seed (empty = random)"))

    def __init__(self, settings: SamplingSettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Sampling (the seed's defaults: 0.3 / 0.9 / 1024); enter applies", classes="section-title")
            for name, label in self.FIELDS:
                value = getattr(self.settings, name)
                with Horizontal(classes="field"):
                    yield Label(label, classes="field-label")
                    yield Input("" if value is None else str(value), id=f"s-{name}")
            yield Static("", id="sampling-problems", classes="verdict-problem")
            with Horizontal(classes="buttons"):
                yield Button("Apply", id="sampling-apply", variant="primary")
                yield Button("Defaults", id="sampling-defaults")

    def _read(self) -> SamplingSettings | str:
        raw = {name: self.query_one(f"#s-{name}", Input).value.strip() for name, _ in self.FIELDS}
        try:
            s = SamplingSettings(
                temperature=float(raw["temperature"]), top_p=float(raw["top_p"]), top_k=int(raw["top_k"] or 0),
                max_new_tokens=int(raw["max_new_tokens"]), seed=int(raw["seed"]) if raw["seed"] else None)
        except ValueError:
            return "each field must be a number (seed may be empty)"
        problems = s.problems()
        return "; ".join(problems) if problems else s

    def _apply(self) -> None:
        got = self._read()
        if isinstance(got, str):
            self.query_one("#sampling-problems", Static).update(got)
        else:
            self.dismiss(got)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self._apply()

    @on(Button.Pressed, "#sampling-apply")
    def _apply_pressed(self) -> None:
        self._apply()

    @on(Button.Pressed, "#sampling-defaults")
    def _defaults(self) -> None:
        d = SamplingSettings()
        for name, _ in self.FIELDS:
            value = getattr(d, name)
            self.query_one(f"#s-{name}", Input).value = "" if value is None else str(value)


class ListPicker(ModalScreen[int | None]):
    """A titled list returning the index picked (history, saved transcripts)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", id="list-cancel", tooltip="Close")]

    def __init__(self, title: str, items: list[str]) -> None:
        super().__init__()
        self.title_text = title
        self.items = items

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="section-title")
            yield OptionList(*(Option(text, id=str(i)) for i, text in enumerate(self.items)), id="pick-list")

    @on(OptionList.OptionSelected, "#pick-list")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))


# --------------------------------------------------------------------------- the screen


class ConsoleScreen(Screen):
    CSS_PATH = "console.tcss"
    BINDINGS = [
        Binding("ctrl+j", "send", "Send", id="console-send", priority=True,
                tooltip="Ask the loaded model (both, in compare mode) the case above"),
        Binding("ctrl+g", "stop", "Stop", id="console-stop", priority=True, tooltip="Stop the answer being generated"),
        Binding("ctrl+o", "pick_case", "Demo case", id="console-case", priority=True, tooltip="Put one of the demo cases in the box"),
        Binding("ctrl+l", "pick_model", "Model", id="console-model", priority=True, tooltip="Load a merged model, a run, or a base"),
        Binding("ctrl+r", "toggle_compare", "Compare", id="console-compare", priority=True,
                tooltip="Side by side: the tuned model and its base, on the same case (one after the other)"),
        Binding("f7", "sampling", "Sampling", id="console-sampling", priority=True, tooltip="Temperature, top_p, max_new_tokens, seed"),
        Binding("ctrl+t", "toggle_think", "Think", id="console-think", priority=True, tooltip="Show or hide the think blocks"),
        Binding("f8", "history", "History", id="console-history", priority=True, tooltip="Show an earlier case of this session"),
        Binding("ctrl+s", "save", "Save", id="console-save", priority=True, tooltip="Save the session as Markdown + JSONL"),
        Binding("f9", "open_transcript", "Open", id="console-open", priority=True, tooltip="Read a saved transcript back"),
    ]

    compare: reactive[bool] = reactive(False, init=False)      # the base model answers beside the tuned one
    settings: reactive[SamplingSettings] = reactive(SamplingSettings, init=False)

    # ---- messages from the workers (immutable payloads; a LoadedModel is handed over, not shared)
    @dataclass
    class LoadProgress(Message):
        side: str
        text: str
        fraction: float

    @dataclass
    class Loaded(Message):
        side: str
        loaded: LoadedModel
        gpu: str
        warmed: str | None = None  # what preparing the decode step did, if it had to

    @dataclass
    class LoadFailed(Message):
        side: str
        error: str

    @dataclass
    class Streamed(Message):
        side: str
        output: str
        tokens: int
        think_tokens: int | None
        elapsed: float

    @dataclass
    class Answered(Message):
        side: str
        case: int
        result: GenerationResult

    @dataclass
    class AnswerFailed(Message):
        side: str
        error: str

    @dataclass
    class GenerationEnded(Message):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.source: ModelSource | None = None
        self.models: dict[str, LoadedModel] = {}
        self.transcript = Transcript.new()
        self.cancel: threading.Event | None = None
        self.state = "idle"           # idle | loading | answering
        self.cases: list[DemoCase] = []
        self._pending_question: str | None = None
        self._think_collapsed = True
        self.last_saved: tuple[Path, Path] | None = None
        self.stream_updates = 0       # streamed UI updates so far (batched; tests read it)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="console-body"):
            yield Static("", id="console-model")
            yield Static("", id="console-status", classes="muted")
            yield Static(DISCLAIMER, id="console-disclaimer")
            yield TextArea("", id="console-case", soft_wrap=True, show_line_numbers=False)
            yield Static("", id="console-sampling", classes="muted")
            with Horizontal(id="console-answers"):
                yield AnswerView(TUNED, id="answer-tuned")
                yield AnswerView(BASE, id="answer-base")
        yield Footer()

    def on_mount(self) -> None:
        try:
            self.cases = load_console_cases()
        except UserError as exc:
            self.notify(str(exc), severity="warning")
        self.query_one("#answer-base").display = False
        self.query_one("#console-case", TextArea).border_title = "case (ctrl+j sends, ctrl+o picks a demo case)"
        self._show_model()
        self._show_sampling()

    def on_screen_resume(self) -> None:
        params = self.app.take_params("console")
        target = params.get("run") or params.get("model")
        if params.get("compare") is not None:
            self.compare = bool(params["compare"])
        if target:
            self.load(str(target))

    # ---- header lines
    def _show_model(self, status: str = "") -> None:
        line = Text("model: ", style="bold")
        if self.source is None:
            line.append("none loaded", style="dim")
            line.append(" (ctrl+l picks one; sending loads the default)", style="dim")
        else:
            line.append(self.source.label, style="bold yellow" if self.source.is_demo else "bold")
            line.append(f" · template {self.source.template} ({self.source.template_from})", style="dim")
            tuned = self.models.get(TUNED)
            if tuned is not None:
                line.append(f" · {tuned.describe()}", style="dim")
            if self.compare:
                line.append(" · COMPARE with base", style="bold cyan")
        self.query_one("#console-model", Static).update(line)
        if status:
            self.query_one("#console-status", Static).update(status)

    def _show_sampling(self) -> None:
        s = self.settings
        seed = "random" if s.seed is None else str(s.seed)
        self.query_one("#console-sampling", Static).update(
            f"sampling: temperature {s.temperature} · top_p {s.top_p} · top_k {s.top_k or 'off'} · "
            f"max_new_tokens {s.max_new_tokens} · seed {seed}   (f7 edits)")

    @property
    def tuned_view(self) -> AnswerView:
        return self.query_one("#answer-tuned", AnswerView)

    @property
    def base_view(self) -> AnswerView:
        return self.query_one("#answer-base", AnswerView)

    def _view(self, side: str) -> AnswerView:
        return self.base_view if side == BASE else self.tuned_view

    # ---- loading
    def load(self, arg: str) -> None:
        """Resolve ``arg`` (cheap, here) and load it -- and its base in compare mode -- in a worker."""
        if self.state == "answering":
            self.notify("Stop the answer first (ctrl+g)", severity="warning")
            return
        ctx = self.app.ctx
        try:
            source = resolve_source(arg, ctx.runs_dir, ctx.merged_dir)
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self._unload()
        self.source = source
        self.state = "loading"
        self._show_model(f"loading {source.label}...")
        self.tuned_view.set_model(source.label)
        self._start_load(self._load_plan())

    def _load_plan(self) -> list[tuple[str, ModelSource]]:
        assert self.source is not None
        plan = [(TUNED, self.source)] if TUNED not in self.models else []
        if self.compare and BASE not in self.models:
            try:
                plan.append((BASE, self.source.base()))
            except UserError as exc:
                self.notify(str(exc), severity="error", timeout=10)
        return plan

    def _unload(self) -> None:
        for loaded in self.models.values():
            loaded.unload()
        self.models.clear()

    def _load_options(self) -> LoadOptions:
        return LoadOptions(backend=self.app.ctx.settings.backend)

    def _start_load(self, plan: list[tuple[str, ModelSource]]) -> None:
        if not plan:
            self.state = "idle"
            self._after_load()
            return
        self.state = "loading"
        self._load_worker(plan, self._load_options())

    @work(thread=True, exclusive=True, exit_on_error=False, group="console-load")
    def _load_worker(self, plan: list[tuple[str, ModelSource]], options: LoadOptions) -> None:
        from medtui_engine.infer.loader import load_model  # imports torch on first use: seconds
        from medtui_engine.infer.stream import WARM_UP_NOTE, needs_warm_up, warm_up

        for side, source in plan:
            try:
                loaded = load_model(source, options,
                                    lambda text, frac, side=side: self.post_message(self.LoadProgress(side, text, frac)))
            except Exception as exc:  # UserError or a library's own: shown, never a crash
                self.post_message(self.LoadFailed(side, _error_text(exc)))
                return
            warmed = None
            if needs_warm_up(loaded):  # a session answers many cases: its compiled step is prepared first
                self.post_message(self.LoadProgress(side, WARM_UP_NOTE, 1.0))
                try:
                    warmed = warm_up(loaded)
                except Exception as exc:  # an optimisation: the answers go on without it
                    warmed = f"decode step not prepared: {_error_text(exc)}"
            self.post_message(self.Loaded(side, loaded, _gpu_text(), warmed))

    def on_console_screen_load_progress(self, msg: LoadProgress) -> None:
        who = "base" if msg.side == BASE else "model"
        self.query_one("#console-status", Static).update(f"loading {who}: {msg.text} ({msg.fraction:.0%})")

    def on_console_screen_loaded(self, msg: Loaded) -> None:
        self.models[msg.side] = msg.loaded
        self._view(msg.side).set_model(msg.loaded.label, msg.loaded.describe())
        said = [*msg.loaded.notes, *([msg.warmed] if msg.warmed else [])]
        notes = f" · {'; '.join(said)}" if said else ""
        self._show_model(f"loaded {msg.loaded.label} in {msg.loaded.load_s:.1f} s · {msg.gpu}{notes}")
        if all(side in self.models for side in ([TUNED, BASE] if self.compare else [TUNED])):
            self.state = "idle"
            self._after_load()

    def on_console_screen_load_failed(self, msg: LoadFailed) -> None:
        self.state = "idle"
        self._pending_question = None
        if msg.side == TUNED:
            self.source = None
        self._show_model(f"loading failed: {msg.error}")
        self.notify(msg.error, title="Could not load the model", severity="error", timeout=15)

    def _after_load(self) -> None:
        if self._pending_question is not None:
            question, self._pending_question = self._pending_question, None
            self._start_answer(question)

    # ---- answering
    def action_send(self) -> None:
        question = self.query_one("#console-case", TextArea).text.strip()
        if not question:
            self.notify("Type a case first (or ctrl+o for a demo case)", severity="warning")
            return
        if self.state == "answering":
            self.notify("Already answering: ctrl+g stops it", severity="warning")
            return
        if self.state == "loading":
            self._pending_question = question
            self.notify("The model is still loading; the case will be sent when it is ready")
            return
        if self.source is None:
            self._pending_question = question
            self.load(self.app.ctx.settings.default_model or "demo")
            return
        plan = self._load_plan()
        if plan:  # compare switched on since loading: fetch the base first
            self._pending_question = question
            self._start_load(plan)
            return
        self._start_answer(question)

    def _start_answer(self, question: str) -> None:
        sides = [TUNED, BASE] if self.compare else [TUNED]
        jobs = [(side, self.models[side]) for side in sides if side in self.models]
        if not jobs:
            return
        case = self.transcript.next_case()
        for side, loaded in jobs:
            self._view(side).begin(loaded.source.template)
        self.cancel = threading.Event()
        self.state = "answering"
        self.query_one("#console-status", Static).update(
            f"case {case}: answering" + (" (tuned first, then base)" if len(jobs) > 1 else "") + " · ctrl+g stops")
        self._answer_worker(question, case, jobs, self.settings, self.cancel)

    @work(thread=True, exclusive=True, exit_on_error=False, group="console-answer")
    def _answer_worker(self, question: str, case: int, jobs: list[tuple[str, LoadedModel]],
                       settings: SamplingSettings, cancel: threading.Event) -> None:
        from medtui_engine.infer.stream import StreamChunk, StreamDone, stream_answer

        try:
            for side, loaded in jobs:
                if cancel.is_set():
                    break
                pieces: list[str] = []
                last = 0.0
                try:
                    for ev in stream_answer(loaded, question, settings, cancel):
                        if isinstance(ev, StreamChunk):
                            pieces.append(ev.text)
                            now = time.monotonic()
                            if now - last >= STREAM_UPDATE_S:
                                last = now
                                self.post_message(self.Streamed(side, "".join(pieces), ev.output_tokens,
                                                                ev.think_tokens, ev.elapsed_s))
                        elif isinstance(ev, StreamDone):
                            self.post_message(self.Answered(side, case, ev.result))
                except Exception as exc:
                    self.post_message(self.AnswerFailed(side, _error_text(exc)))
                    break
        finally:
            self.post_message(self.GenerationEnded())

    def on_console_screen_streamed(self, msg: Streamed) -> None:
        self.stream_updates += 1
        self._view(msg.side).stream(msg.output, msg.tokens, msg.think_tokens, msg.elapsed)

    def on_console_screen_answered(self, msg: Answered) -> None:
        r = msg.result
        self._view(msg.side).finish(r.output, r.stats)
        loaded = self.models.get(msg.side)
        src = loaded.source if loaded else self.source
        self.transcript.add(TranscriptEntry(
            case=msg.case, question=r.question, model=r.model_label, output=r.output, template=r.template,
            model_dir=str(src.model_dir) if src else "",
            adapter_dir=str(src.adapter_dir) if src and src.adapter_dir else None,
            sampling=r.sampling.as_dict(), stats=r.stats.as_dict(), side=msg.side if self.compare else "",
            t=time.time()))

    def on_console_screen_answer_failed(self, msg: AnswerFailed) -> None:
        self._view(msg.side).fail(msg.error)
        self.notify(msg.error, title="The answer failed", severity="error", timeout=15)

    def on_console_screen_generation_ended(self, _msg: GenerationEnded) -> None:
        self.state = "idle"
        stopped = self.cancel is not None and self.cancel.is_set()
        self.query_one("#console-status", Static).update(
            ("stopped" if stopped else "done") + f" · {len(self.transcript.cases())} case(s) this session · ctrl+s saves")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:  # a bug in a worker: say so, keep the screen alive
            self.state = "idle"
            self.notify(_error_text(event.worker.error), title="Internal error", severity="error", timeout=15)

    def on_unmount(self) -> None:
        # Quitting mid-answer: stop the generation so the app's exit does not wait for it.
        if self.cancel is not None:
            self.cancel.set()

    def action_stop(self) -> None:
        if self.state == "answering" and self.cancel is not None:
            self.cancel.set()
            self.query_one("#console-status", Static).update("stopping...")
        else:
            self.notify("Nothing is being generated")

    # ---- cases, models, settings
    def action_pick_case(self) -> None:
        if not self.cases:
            self.notify("No demo cases found (data/console_cases.json)", severity="warning")
            return

        def picked(index: int | None) -> None:
            if index is not None:
                area = self.query_one("#console-case", TextArea)
                area.text = self.cases[index].question
                area.focus()

        self.app.push_screen(CasePicker(self.cases), picked)

    def action_pick_model(self) -> None:
        ctx = self.app.ctx

        def picked(arg: str | None) -> None:
            if arg:
                self.load(arg)

        self.app.push_screen(ModelPicker(list_choices(ctx.runs_dir, ctx.merged_dir)), picked)

    def watch_compare(self, on_: bool) -> None:
        self.base_view.display = on_
        for view in (self.tuned_view, self.base_view):
            view.show_side = on_
            if view.model_label:
                view.set_model(view.model_label, view.model_detail)
        if not on_ and BASE in self.models:
            self.models.pop(BASE).unload()
        self._show_model()

    def action_toggle_compare(self) -> None:
        if self.state != "idle":
            self.notify("Wait for the current load or answer (ctrl+g stops an answer)", severity="warning")
            return
        self.compare = not self.compare
        if self.compare and self.source is not None and self.source.adapter_dir is None and self.source.kind != "merged":
            self.notify("The loaded model is a base model: both sides will be the same model. "
                        "Load a run or a merged model (ctrl+l) to compare tuned with base.", severity="warning")
        if self.compare and self.source is not None:
            self._start_load(self._load_plan())

    def watch_settings(self) -> None:
        self._show_sampling()

    def action_sampling(self) -> None:
        def done(settings: SamplingSettings | None) -> None:
            if settings is not None:
                self.settings = settings

        self.app.push_screen(SamplingDialog(self.settings), done)

    def action_toggle_think(self) -> None:
        self._think_collapsed = not self._think_collapsed
        for view in self.query(AnswerView):
            view.set_think_collapsed(self._think_collapsed)

    # ---- history and transcripts
    def show_case(self, case: int) -> None:
        groups = {g[0].case: g for g in self.transcript.cases()}
        group = groups.get(case)
        if not group:
            return
        self.query_one("#console-case", TextArea).text = group[0].question
        sides = {e.side or TUNED: e for e in group}
        self.compare = BASE in sides and self.compare or (BASE in sides and len(sides) > 1)
        for side, entry in sides.items():
            view = self._view(side)
            view.set_model(entry.model, "(from history)")
            view.begin(entry.template)
            view.finish(entry.output, entry.stats)

    def action_history(self) -> None:
        groups = self.transcript.cases()
        if not groups:
            self.notify("No cases yet in this session")
            return
        items = [f"{g[0].case}. {g[0].question[:50]}  ({', '.join(e.model[:24] for e in g)})" for g in groups]

        def picked(index: int | None) -> None:
            if index is not None:
                self.show_case(groups[index][0].case)

        self.app.push_screen(ListPicker("This session's cases (enter shows one)", items), picked)

    def action_save(self) -> None:
        if not self.transcript.entries:
            self.notify("Nothing to save yet", severity="warning")
            return
        try:
            self.last_saved = save_transcript(self.transcript, self.app.ctx.transcripts_dir)
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=15)
            return
        md, jl = self.last_saved
        self.notify(f"Saved {md} and {jl.name}", title="Transcript saved")

    def open_transcript(self, path: Path) -> None:
        try:
            tr = load_transcript(path)
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=15)
            return
        self.transcript = tr
        groups = tr.cases()
        if groups:
            self.show_case(groups[-1][0].case)
        self.query_one("#console-status", Static).update(
            f"read back {path.name}: {len(groups)} case(s); f8 lists them; new answers are added to it")

    def action_open_transcript(self) -> None:
        paths = list_transcripts(self.app.ctx.transcripts_dir)
        if not paths:
            self.notify("No saved transcripts in the workspace yet", severity="warning")
            return

        def picked(index: int | None) -> None:
            if index is not None:
                self.open_transcript(paths[index])

        self.app.push_screen(ListPicker("Saved transcripts (enter reads one back)", [p.stem for p in paths]), picked)
