"""The Runs screen with the real app: every run listed and kept current, compare, attach."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import wait_until
from textual.widgets import DataTable

from medtui.app import MedtuiApp
from medtui.screens.runs import CompareScreen, RunsScreen
from medtui.screens.train import TrainScreen
from medtui.widgets.curves import LineChart
from medtui.widgets.run_view import RunView

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
FINISHED = FIXTURES / "20251124-160000-qwen7b"
STOPPED = FIXTURES / "20251124-190000-qwen7b-lr3e-4"


@pytest.fixture
def app_on_runs(workspace: Path) -> MedtuiApp:
    app = MedtuiApp(workspace=str(workspace), start_mode="runs")  # as `medtui --screen runs`
    for src in (FINISHED, STOPPED):
        shutil.copytree(src, app.ctx.runs_dir / src.name)
    return app


def table_text(app) -> list[str]:
    table = app.screen.query_one(DataTable)
    return [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


async def test_runs_are_listed_compared_and_attached(app_on_runs: MedtuiApp):
    app = app_on_runs
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.polls > 0, "the first poll")
        rows = table_text(app)
        assert len(rows) == 2
        # state, run (without its date: the started column has it), steps, last and best loss, ...
        assert rows[0].split()[:5] == ["stopped", "190000-qwen7b-lr3e-4", "150/240", "0.59", "0.59"]
        assert rows[0].split()[-2:] == ["Qwen2.5-7B-Instruct", "train.jsonl"]
        assert rows[1].split()[:5] == ["finished", "160000-qwen7b", "240/240", "0.602", "0.561"]
        preview = app.screen.query_one("#runs-preview", LineChart)
        assert len(preview.data.series[0].xs) == 150  # the highlighted run's loss

        # c with fewer than two marked runs explains itself
        await pilot.press("c")
        assert isinstance(app.screen, RunsScreen)
        # mark both (space moves down), compare
        await pilot.press("space", "space")
        assert app.screen.marked == (STOPPED.name, FINISHED.name)
        assert "✓" in table_text(app)[0]
        assert len(preview.data.series) == 2  # the preview overlays the marked runs
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen), "the compare screen")
        chart = app.screen.query_one("#compare-chart", LineChart)
        assert [len(s.xs) for s in chart.data.series] == [150, 240]
        assert [s.name for s in chart.data.series] == ["190000-qwen7b-lr3e", "160000-qwen7b"]
        await pilot.press("x")
        assert chart.data.title == "Loss"  # raw, not smoothed
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen), "back to the runs")

        # enter attaches: the live view of the highlighted run
        await pilot.press("up", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen)
                         and app.screen.query(RunView) and app.screen.query_one(RunView).snapshot is not None,
                         "the live view")
        assert app.screen.query_one(RunView).snapshot.run_id == STOPPED.name
        assert "STOPPED" in str(app.screen.query_one("#rv-status").render())
        # stop on a run that is not running says so, without asking
        await pilot.press("s")
        assert isinstance(app.screen, TrainScreen)


async def test_runs_screen_picks_up_a_new_run(app_on_runs: MedtuiApp):
    app = app_on_runs
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.polls > 0, "the first poll")
        assert app.screen.query_one(DataTable).row_count == 2
        new = app.ctx.runs_dir / "20251125-080000-qwen7b"
        new.mkdir()
        shutil.copy(FINISHED / "spec.json", new / "spec.json")
        lines = (FINISHED / "events.jsonl").read_bytes().splitlines(keepends=True)
        (new / "events.jsonl").write_bytes(b"".join(lines[:30]))
        app.screen.poll_now()
        await wait_until(pilot, lambda: app.screen.query_one(DataTable).row_count == 3, "the new run")
        assert table_text(app)[0].split()[:2] == ["crashed", "080000-qwen7b"]  # no job, no terminal event
