"""The command palette (ctrl+p) through the real app on each of the five screens: open it, type a word
of an action, run it, and see the action's effect; and every action with a footer key has an entry."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import run_from_palette, wait_for_notification, wait_for_screen, wait_for_screen_gone, wait_until
from textual.widgets import Input, Static

from medtui.app import MedtuiApp
from medtui.palette import palette_commands
from medtui.screens import SCREENS
from medtui.screens.console import ConsoleScreen, SamplingDialog
from medtui.screens.dataset import DatasetScreen
from medtui.screens.environment import EnvironmentScreen
from medtui.screens.runs import RunsScreen
from medtui.screens.train import TrainScreen

FINISHED = Path(__file__).parent / "fixtures" / "runs" / "20251124-160000-qwen7b"
SIZE = (100, 32)


def labels(app: MedtuiApp) -> list[str]:
    return [c.label for c in palette_commands(app.screen)]


def assert_every_footer_key_has_an_entry(app: MedtuiApp) -> None:
    """The screen's keys that the footer shows, the other screens and quit: each one is in the palette."""
    screen, found = app.screen, labels(app)
    names = {c.split(" (")[0] for c in found}
    for active in screen.active_bindings.values():
        b = active.binding
        if b.show and b.description and active.enabled and active.node is not app:
            assert b.description in names, (b.description, found)
    others = [e.title for e in SCREENS if e.mode != app.current_mode]
    for title in others:
        assert any(c.startswith(f"Go to {title} (") for c in found), (title, found)
    assert "Quit (^q)" in found


async def test_environment(workspace):
    app = MedtuiApp(workspace=str(workspace), start_mode="environment")
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_screen(pilot, EnvironmentScreen)
        await wait_until(pilot, lambda: screen.report is not None, "the first check", 300)
        assert_every_footer_key_has_an_entry(app)
        first = screen.report
        await run_from_palette(pilot, "check", "Re-check (r)")
        # the entry starts a new check (test_tui_environment waits for one to be drawn; a check costs seconds
        # of CPU, so this one is left to the screen's unmount, which kills its probes as quitting does)
        summary = screen.query_one("#env-summary", Static)
        await wait_until(pilot, lambda: screen.report is not first or "Checking this machine" in str(summary.render()),
                         "a new check started from the palette", 300)
        # the way to another screen is there too
        await run_from_palette(pilot, "console", "Go to Console (f6)")
        await wait_for_screen(pilot, ConsoleScreen)


async def test_dataset_while_the_path_field_has_the_focus(workspace):
    app = MedtuiApp(workspace=str(workspace), start_mode="dataset")
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_screen(pilot, DatasetScreen)
        path = screen.query_one("#ds-path", Input)
        await wait_until(pilot, lambda: path.has_focus, "the path field")
        # the field takes the letter keys, yet their actions are all in the palette
        found = labels(app)
        for name in ("Open (o)", "Demo data (d)", "Validate (v)", "Template (t)", "Tokens (h)", "Train on it (n)"):
            assert name in found, found
        assert screen.template == "seed"
        await run_from_palette(pilot, "template", "Template (t)")
        await wait_until(pilot, lambda: screen.template == "chat", "the chat template from the palette")
        assert "template chat" in screen.sub_title
        assert not path.has_focus and path.value  # it left the field; what was typed stays
        assert_every_footer_key_has_an_entry(app)


async def test_train(workspace, demo_model):
    app = MedtuiApp(workspace=str(workspace), start_mode="train")
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_screen(pilot, TrainScreen)
        await wait_until(pilot, lambda: screen.ready, "the form", 60)
        assert_every_footer_key_has_an_entry(app)
        await run_from_palette(pilot, "fit", "Will it fit (^e)")
        fit = screen.query_one("#train-fit", Static)
        await wait_until(pilot, lambda: "GiB" in str(fit.render()), "the estimate from the palette", 60)


async def test_runs(workspace):
    app = MedtuiApp(workspace=str(workspace), start_mode="runs")
    shutil.copytree(FINISHED, app.ctx.runs_dir / FINISHED.name)
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_screen(pilot, RunsScreen)
        await wait_until(pilot, lambda: screen.order, "the run in the table", 60)
        assert_every_footer_key_has_an_entry(app)
        await run_from_palette(pilot, "mark", "Mark (space)")
        await wait_until(pilot, lambda: tuple(screen.marked) == (FINISHED.name,), "the run marked from the palette")


async def test_console_and_its_dialog(workspace):
    app = MedtuiApp(workspace=str(workspace), start_mode="console")
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_screen(pilot, ConsoleScreen)
        assert_every_footer_key_has_an_entry(app)
        await run_from_palette(pilot, "sampling", "Sampling (f7)")
        dialog = await wait_for_screen(pilot, SamplingDialog)
        # a dialog's own keys are in the palette too
        assert "Cancel (esc)" in labels(app)
        await run_from_palette(pilot, "cancel", "Cancel (esc)")
        await wait_for_screen_gone(pilot, dialog)
        assert app.screen is screen
        await run_from_palette(pilot, "think", "Think (^t)")
        await wait_until(pilot, lambda: not screen._think_collapsed, "think blocks shown from the palette")
        # a word of what an action does finds it too ("Open (f9)": "Read a saved transcript back")
        await run_from_palette(pilot, "transcript", "Open (f9)")
        await wait_for_notification(pilot, "No saved transcripts")
