"""The Environment screen, driven with Pilot: real check, real estimate."""

from __future__ import annotations

from helpers import eventually, nvidia_gpus, wait_until
from textual.widgets import DataTable, Input, Static

from medtui.app import MedtuiApp
from medtui.screens.environment import EnvironmentScreen

CHECK_S = 300.0  # the check probes the libraries in subprocesses (torch imports): slow on a busy machine


async def test_environment_screen_checks_estimates_and_rechecks(workspace, demo_model):
    """One app session for the check, the estimate and the re-check key: each check imports the libraries
    in subprocesses (seconds of CPU), so the screen's checks are not repeated in a second session."""
    app = MedtuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#env-table", DataTable)
        assert await eventually(pilot, lambda: table.row_count > 5, CHECK_S)
        summary = str(app.screen.query_one("#env-summary", Static).render())
        assert "Verdict" in summary and str(workspace.resolve()) in summary
        detail = str(app.screen.query_one("#env-detail", Static).render())
        gpus = nvidia_gpus()
        if gpus:
            rows = [" ".join(map(str, table.get_row_at(i))) for i in range(table.row_count)]
            assert any(f"{gpus} found (driver" in r for r in rows), rows
        else:
            assert "CPU demo only" in detail  # the worst line is shown first, with its fix
        # Will it fit: the seed's setting for the demo model.
        seq = app.screen.query_one("#fit-seq", Input)
        seq.value = "8192"
        await pilot.press("w")
        result = app.screen.query_one("#fit-result", Static)
        assert await eventually(pilot, lambda: "GiB" in str(result.render()), CHECK_S)
        text = str(result.render())
        assert "random weights, demo only" in text and "seq 8192" in text
        # Bad input gets a message, not an exception.
        seq.value = "0"
        await pilot.press("w")
        assert await eventually(pilot, lambda: "whole number" in str(result.render()))
        # In a setting, w is a letter: enter estimates there, and escape gives the keys back.
        seq.value = "4096"
        seq.focus()
        await wait_until(pilot, lambda: seq.has_focus, "the seq field")
        assert "w" not in app.screen.active_bindings and "escape" in app.screen.active_bindings
        await pilot.press("enter")
        assert await eventually(pilot, lambda: "seq 4096" in str(result.render()), CHECK_S)
        await pilot.press("escape")
        await wait_until(pilot, lambda: table.has_focus, "the table")
        assert "w" in app.screen.active_bindings
        # r runs the whole check again, and the new report is drawn
        screen = app.screen
        assert isinstance(screen, EnvironmentScreen)
        first = screen.report
        assert first is not None
        await pilot.press("r")
        assert await eventually(pilot, lambda: screen.report is not first, CHECK_S)  # a new check, drawn
        assert "Verdict" in str(screen.query_one("#env-summary", Static).render())
        assert table.row_count == len(screen.report.lines)
