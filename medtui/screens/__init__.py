"""The app's top-level areas. Each is a Textual mode, built lazily on first visit so that start-up
imports only the first screen. Add a screen by adding one ScreenEntry here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScreenEntry:
    mode: str        # Textual mode name, also used by App.goto()
    title: str       # shown in the footer hint and the command palette
    key: str         # the key that switches to it
    module: str      # module holding the screen class (imported on first visit)
    class_name: str


SCREENS: tuple[ScreenEntry, ...] = (
    ScreenEntry("environment", "Environment", "f2", "medtui.screens.environment", "EnvironmentScreen"),
    ScreenEntry("dataset", "Dataset", "f3", "medtui.screens.dataset", "DatasetScreen"),
    ScreenEntry("train", "Train", "f4", "medtui.screens.train", "TrainScreen"),
    ScreenEntry("runs", "Runs", "f5", "medtui.screens.runs", "RunsScreen"),
    ScreenEntry("console", "Console", "f6", "medtui.screens.console", "ConsoleScreen"),
    ScreenEntry("eval", "Eval", "f10", "medtui.screens.eval", "EvalScreen"),
)
