"""Start a real run from the Train form, watch it, stop it, resume it: a detached job trains the
demo model on a few rows of data/demo_train.jsonl on the CPU while the live view follows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TRAIN_JOBS, wait_until

from medtui.app import MedtuiApp
from medtui.screens.train import TrainScreen
from medtui.widgets.confirm import Confirm
from medtui.widgets.curves import LineChart
from medtui.widgets.run_view import RunView
from medtui_engine.runs.jobs import job_alive, kill_job, wait_job

DATA = Path(__file__).resolve().parents[1] / "data" / "demo_train.jsonl"


@pytest.mark.slow
@TRAIN_JOBS
async def test_start_watch_stop_and_resume_a_demo_run_from_the_form(workspace: Path, demo_model: Path):
    app = MedtuiApp(workspace=str(workspace), start_mode="train")  # as `medtui --screen train`
    run_dir = None
    try:
        async with app.run_test(size=(100, 32)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen) and app.screen.ready, "the form", 60)
            screen = app.screen
            for name, value in {"data": str(DATA), "limit_rows": "4", "max_seq_length": "256", "grad_accum": "1",
                                "epochs": "1000", "lora_r": "8", "lora_alpha": "8"}.items():  # a GPU must not finish before the stop key
                screen.query_one(f"#f-{name}").value = value
            await wait_until(pilot, lambda: not screen.query_one("#train-start").disabled, "Start enabled",
                             show=lambda: screen.problems)
            await pilot.press("ctrl+r")
            view = screen.query_one(RunView)
            await wait_until(pilot, lambda: view.run_dir is not None, "the job to start", 60)
            run_dir = view.run_dir
            assert run_dir.parent == app.ctx.runs_dir
            assert json.loads((run_dir / "spec.json").read_text())["limit_rows"] == 4

            loss = screen.query_one("#rv-loss", LineChart)
            await wait_until(pilot, lambda: loss.data.series and len(loss.data.series[0].xs) >= 2,
                             "two loss points on the curve", 300)
            assert view.snapshot.status == "running"
            assert "RUNNING" in str(screen.query_one("#rv-status").render())
            assert view.snapshot.log_lines  # the job's stdout.log tail

            await pilot.press("s")
            await wait_until(pilot, lambda: isinstance(app.screen, Confirm), "the confirmation", 10)
            assert "Stop run" in str(app.screen.query_one(".section-title").render())
            await pilot.press("y")
            await wait_until(pilot, lambda: view.snapshot.status == "stopped", "stopped", 240)
            assert "STOPPED" in str(screen.query_one("#rv-status").render())
            assert view.snapshot.state.checkpoints  # stop saves a checkpoint
            stopped_at = view.snapshot.state.step
            assert wait_job(run_dir, timeout=60)

            # resume: a new job continues the same run, and the same view follows it
            await pilot.press("r")
            await wait_until(pilot, lambda: view.snapshot.state.resumed >= 1 and view.snapshot.status == "running",
                             "the resumed job", 240)
            assert view.snapshot.state.start_step == stopped_at
            await pilot.press("s")
            await wait_until(pilot, lambda: isinstance(app.screen, Confirm), "the confirmation", 10)
            await pilot.press("y")
            await wait_until(pilot, lambda: view.snapshot.status == "stopped" and view.snapshot.state.resumed >= 1,
                             "stopped again", 240)
            assert view.snapshot.state.step >= stopped_at
        assert wait_job(run_dir, timeout=60)
    finally:
        if run_dir is not None and job_alive(run_dir):
            kill_job(run_dir)
