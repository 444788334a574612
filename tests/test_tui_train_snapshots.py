"""SVG snapshots of the live view and the compare screen, drawn from recorded run directories
(tests/fixtures/runs: spec.json, events.jsonl, stdout.log) at fixed terminal sizes.

Update after a deliberate change with ``pytest tests/test_tui_train_snapshots.py --snapshot-update``
and look at the SVGs before committing them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from helpers import wait_until

from medtui.app import MedtuiApp
from medtui.screens.runs import CompareScreen, RunsScreen
from medtui.screens.train import TrainScreen
from medtui.widgets.run_view import RunView

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
FINISHED = FIXTURES / "20251124-160000-qwen7b"
STOPPED = FIXTURES / "20251124-190000-qwen7b-lr3e-4"


@pytest.fixture
def app(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> MedtuiApp:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    app = MedtuiApp(workspace=str(workspace), start_mode="runs")
    for src in (FINISHED, STOPPED):
        shutil.copytree(src, app.ctx.runs_dir / src.name)
    return app


def attach(run: Path):
    async def run_before(pilot) -> None:
        app = pilot.app
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.polls > 0)
        app.goto("train", run=str(app.ctx.runs_dir / run.name))

        def ready() -> bool:
            if not isinstance(app.screen, TrainScreen):
                return False
            views = app.screen.query(RunView)
            return bool(views) and views.first().snapshot is not None and views.first().snapshot.state.terminal
        await wait_until(pilot, ready)
        await pilot.pause()  # no timed sleep: until the screen has handled what is queued (the drawn snapshot)
    return run_before


def test_live_view_finished_run_100x32(app, snap_compare):
    assert snap_compare(app, terminal_size=(100, 32), run_before=attach(FINISHED))


def test_live_view_stopped_run_80x24(app, snap_compare):
    assert snap_compare(app, terminal_size=(80, 24), run_before=attach(STOPPED))


def test_compare_two_runs_100x32(app, snap_compare):
    async def run_before(pilot) -> None:
        a = pilot.app
        await wait_until(pilot, lambda: isinstance(a.screen, RunsScreen) and a.screen.polls > 0)
        await pilot.press("space", "space", "c")
        await wait_until(pilot, lambda: isinstance(a.screen, CompareScreen))
        await pilot.pause()
    assert snap_compare(app, terminal_size=(100, 32), run_before=run_before)
