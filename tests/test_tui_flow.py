"""Across screens, as a user moves: a checked data file goes to the Train form with one key."""

from __future__ import annotations

from pathlib import Path

from helpers import eventually, wait_for_notification, wait_until
from textual.widgets import Input, Select

from medtui.app import MedtuiApp
from medtui.screens.dataset import DatasetScreen

DATA = Path(__file__).resolve().parent.parent / "data" / "demo_train.jsonl"


async def test_dataset_hands_the_checked_file_to_the_train_form(workspace, demo_model):
    app = MedtuiApp(start_mode="dataset")
    async with app.run_test(size=(100, 32)) as pilot:
        screen = app.screen
        assert isinstance(screen, DatasetScreen)
        await pilot.press("escape", "n")  # out of the path field; nothing checked yet: a message, no switch
        await wait_for_notification(pilot, "Validate a file first")
        assert app.current_mode == "dataset"
        await pilot.press("o")
        await wait_until(pilot, lambda: screen.query_one("#ds-path", Input).has_focus, "the path field")
        screen.query_one("#ds-path", Input).value = str(DATA)
        await pilot.press("enter")
        assert await eventually(pilot, lambda: screen.report is not None)
        await pilot.press("t")  # the chat template, then on to training
        await wait_until(pilot, lambda: screen.template == "chat", "the chat template")
        await pilot.press("n")
        assert await eventually(pilot, lambda: app.current_mode == "train")
        train = app.screen
        assert await eventually(pilot, lambda: train.query_one("#f-data").value == str(DATA))
        assert train.query_one("#f-template", Select).value == "chat"
        assert train.query_one("#f-max_seq_length").value == "8192"
