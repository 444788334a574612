"""The Environment screen, driven with Pilot: real check, real estimate."""

from __future__ import annotations

from helpers import eventually
from textual.widgets import DataTable, Input, Static

from medtui.app import MedtuiApp


async def test_environment_screen_checks_and_estimates(workspace, demo_model):
    app = MedtuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#env-table", DataTable)
        assert await eventually(pilot, lambda: table.row_count > 5)
        summary = str(app.screen.query_one("#env-summary", Static).render())
        assert "Verdict" in summary and str(workspace.resolve()) in summary
        detail = str(app.screen.query_one("#env-detail", Static).render())
        assert "CPU demo only" in detail  # the worst line is shown first, with its fix
        # Will it fit: the seed's setting for the demo model.
        seq = app.screen.query_one("#fit-seq", Input)
        seq.value = "8192"
        await pilot.press("w")
        result = app.screen.query_one("#fit-result", Static)
        assert await eventually(pilot, lambda: "GiB" in str(result.render()))
        text = str(result.render())
        assert "random weights, demo only" in text and "seq 8192" in text
        # Bad input gets a message, not an exception.
        seq.value = "0"
        await pilot.press("w")
        await pilot.pause()
        assert "whole number" in str(result.render())


async def test_recheck_key_and_palette_entries(workspace):
    app = MedtuiApp()
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.screen.query_one("#env-table", DataTable)
        assert await eventually(pilot, lambda: table.row_count > 5)
        await pilot.press("r")
        await pilot.pause()
        assert "Checking" in str(app.screen.query_one("#env-summary", Static).render())
        assert await eventually(pilot, lambda: "Verdict" in str(app.screen.query_one("#env-summary", Static).render()))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Go to Environment" in titles
