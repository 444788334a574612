"""One confirmation dialog for every question the TUI asks before it acts (stop a run, ...).

It says what will happen, offers two answers with their keys, and dismisses with True (yes) or
False (no, escape). The safe answer has the focus, so a stray enter changes nothing.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class Confirm(ModalScreen[bool]):
    """``Confirm(title, body, yes="Stop", no="Keep training")``; push it with a callback taking the bool."""

    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Vertical {
        width: 64; height: auto; max-width: 95%;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    Confirm Horizontal { height: auto; margin-top: 1; }
    Confirm Button { margin-right: 2; }
    """

    def __init__(self, title: str, body: str, *, yes: str = "Yes", no: str = "No", yes_key: str = "y",
                 no_key: str = "n", yes_variant: str = "warning", yes_help: str | None = None,
                 no_help: str | None = None) -> None:
        super().__init__()
        self.title_text, self.body = title, body
        self.yes, self.no, self.yes_key, self.no_key, self.yes_variant = yes, no, yes_key, no_key, yes_variant
        # this dialog's keys, with ids and tooltips as every binding has (escape also answers no)
        for keys, answer, description, bid, tip in (
                (yes_key, True, yes, "confirm-yes", yes_help or yes),
                (f"{no_key},escape", False, no, "confirm-no", no_help or no)):
            for key in keys.split(","):
                self._bindings.key_to_bindings.setdefault(key, []).append(
                    Binding(key, f"answer({answer})", description, id=bid, tooltip=tip))

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="section-title")
            yield Static(self.body)
            with Horizontal():
                yield Button(f"{self.yes} ({self.yes_key})", variant=self.yes_variant, id="confirm-yes")
                yield Button(f"{self.no} ({self.no_key})", id="confirm-no")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_answer(event.button.id == "confirm-yes")   # one way to answer (a dialog built on this one overrides it)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
