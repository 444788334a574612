"""Resume a run with these settings: the confirm dialog, with the settings a resume may change.

Pre-filled with the advice of the run's failure (after running out of GPU memory) or with the
settings in force. Each edit is checked by the engine as ``medtui runs resume`` checks it
(:func:`medtui_engine.train.resume.resume_settings`), and its words are shown under the fields:
the change ("micro-batch 2 -> 1 with accumulation 2 -> 4 keeps 4 samples per step") or why it
cannot be. Dismisses with the settings to change ({} for none) or None (cancel).
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, Static

from medtui_engine.errors import UserError
from medtui_engine.train.resume import RESUMABLE, resume_settings
from medtui_engine.train.spec import TrainSpec

from .confirm import Confirm

FIELDS = (("micro_batch", "Micro-batch"), ("grad_accum", "Accumulation"), ("max_seq_length", "Max seq length"))


class ResumeDialog(Confirm):
    """``ResumeDialog(run_id, spec_now, prefill, body, world)``: ``spec_now`` the settings in force,
    ``prefill`` the values the fields start with (the advice), ``body`` what happened and from where."""

    DEFAULT_CSS = """
    ResumeDialog .resume-row { height: auto; }
    ResumeDialog .resume-row Label { width: 18; padding-top: 1; }
    ResumeDialog .resume-row Input { width: 14; }
    ResumeDialog #resume-check { margin-top: 1; }
    """

    def __init__(self, run_id: str, spec_now: TrainSpec, prefill: dict, body: str, world: int = 1) -> None:
        super().__init__(f"Resume {run_id} with these settings", body, yes="Resume", no="Cancel",
                         yes_variant="primary", yes_help="Resume the run with these settings",
                         no_help="Leave the run as it is")
        self.spec_now, self.world = spec_now, world
        self.prefill = {n: prefill.get(n, getattr(spec_now, n)) for n in RESUMABLE}

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="section-title")
            yield Static(Text(self.body), id="resume-body")
            for name, label in FIELDS:
                with Horizontal(classes="resume-row"):
                    yield Label(label)
                    yield Input(str(self.prefill[name]), type="integer", id=f"resume-{name.replace('_', '-')}")
            yield Checkbox("Gradient checkpointing (less memory, slower steps)",
                           value=bool(self.prefill["gradient_checkpointing"]), id="resume-gradient-checkpointing")
            yield Static("", id="resume-check")
            with Horizontal():
                yield Button(f"{self.yes} ({self.yes_key})", variant=self.yes_variant, id="confirm-yes")
                yield Button(f"{self.no} ({self.no_key})", id="confirm-no")

    def on_mount(self) -> None:
        super().on_mount()
        self._check()

    # ---- what the fields ask for, checked by the engine
    def asked(self) -> dict:
        """The settings that differ from those in force (a micro-batch alone: the accumulation follows)."""
        out: dict = {}
        for name, _label in FIELDS:
            text = self.query_one(f"#resume-{name.replace('_', '-')}", Input).value.strip()
            try:
                value = int(text)
            except ValueError:
                value = text   # the engine names the setting and what it must be
            if value != getattr(self.spec_now, name):
                out[name] = value
        gc = self.query_one("#resume-gradient-checkpointing", Checkbox).value
        if gc != self.spec_now.gradient_checkpointing:
            out["gradient_checkpointing"] = gc
        return out

    def _check(self) -> tuple[dict, str | None] | None:
        """The engine's verdict on the fields: (settings, change) and its words shown; None if refused."""
        box = self.query_one("#resume-check", Static)
        try:
            changed, change = resume_settings(self.spec_now, self.asked(), self.world)
        except UserError as exc:
            box.update(Text.assemble(("Cannot resume so: ", "bold red"), str(exc)))
            box.set_class(True, "-refused")
            return None
        box.set_class(False, "-refused")
        box.update(Text.assemble(("Change: ", "bold"), change) if change
                   else Text("No change: the run resumes with the settings it had."))
        return changed, change

    @on(Input.Changed)
    @on(Checkbox.Changed)
    def _edited(self) -> None:
        self._check()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_answer(True)

    def action_answer(self, yes: bool) -> None:
        if not yes:
            self.dismiss(None)
            return
        verdict = self._check()
        if verdict is not None:   # refused: the reason stays on screen, the dialog stays open
            self.dismiss(verdict[0])
