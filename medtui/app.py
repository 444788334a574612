"""The medtui Textual app: a thin view over the engine and over run directories.

Nothing heavy is imported here: the first frame must draw fast on a box where ``import torch``
alone takes seconds. Screens are Textual modes, imported on first visit.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from medtui_engine.context import Context, load_context
from medtui_engine.notices import DISCLAIMER

from .palette import GOTO_ID, ActionsProvider
from .screens import SCREENS, ScreenEntry

__all__ = ["DISCLAIMER", "MedtuiApp"]


def _screen_factory(entry: ScreenEntry) -> Callable[[], Screen]:
    def make() -> Screen:
        module = importlib.import_module(entry.module)
        return getattr(module, entry.class_name)()

    return make


class MedtuiApp(App[None]):
    TITLE = "medtui"
    SUB_TITLE = "clinical fine-tuning workbench (offline)"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = True
    COMMANDS = App.COMMANDS | {ActionsProvider}  # one palette for every screen (medtui.palette)
    MODES = {entry.mode: _screen_factory(entry) for entry in SCREENS}
    DEFAULT_MODE = SCREENS[0].mode
    BINDINGS = [
        *(Binding(e.key, f"goto('{e.mode}')", e.title, id=f"{GOTO_ID}{e.mode}",
                  tooltip=f"Switch to the {e.title} screen") for e in SCREENS),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True,
                tooltip="Quit medtui (a training run goes on without the UI)"),
    ]

    def __init__(self, ctx: Context | None = None, *, mouse: bool = True, start_mode: str | None = None,
                 workspace: str | None = None, config: str | None = None) -> None:
        if start_mode and start_mode in self.MODES:
            self.DEFAULT_MODE = start_mode  # open straight on that screen (the first one is never built)
        super().__init__()
        self.ctx = ctx or load_context(workspace, config)
        self.mouse_enabled = mouse
        self._pending: dict[str, dict[str, Any]] = {}
        # SSH first: no animations unless the user turned them on.
        self.animation_level = "full" if self.ctx.settings.animations else "none"

    # Navigation with parameters: goto("console", run="...") -> the console reads take_params("console").
    def goto(self, mode: str, **params: Any) -> None:
        if mode not in self.MODES:
            self.notify(f"No screen called {mode!r}", severity="error")
            return
        if params:
            self._pending[mode] = params
        if mode == self.current_mode:
            # Already there: switch_mode would do nothing, so hand the screen its parameters now.
            self.screen.post_message(events.ScreenResume())
            return
        self.switch_mode(mode)

    def action_goto(self, mode: str) -> None:
        self.goto(mode)

    def take_params(self, mode: str) -> dict[str, Any]:
        return self._pending.pop(mode, {})

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        # Textual's own entries (theme, keys, screenshot), less its "Quit": ctrl+q has its entry already
        for command in super().get_system_commands(screen):
            if command.callback != self.action_quit:
                yield command
