"""The Train screen with the real app (App.run_test + Pilot): the live view following a run
directory while events are appended, the form's inline validation, and 80x24."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import run_from_palette, wait_for_notification, wait_until

from medtui.app import MedtuiApp
from medtui.screens.train import TrainScreen
from medtui.widgets.curves import LineChart
from medtui.widgets.run_view import RunView
from medtui_engine.runs.jobs import JOB_FILE, proc_start_time

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
FINISHED = FIXTURES / "20251124-160000-qwen7b"


@pytest.fixture
def make_app(workspace: Path):
    """The real app, opening on the given screen (``medtui --screen NAME``)."""
    def make(mode: str = "runs") -> MedtuiApp:
        return MedtuiApp(workspace=str(workspace), start_mode=mode)
    return make


def view_ready(app) -> bool:
    if not isinstance(app.screen, TrainScreen):
        return False
    views = app.screen.query(RunView)
    return bool(views) and views.first().snapshot is not None


def status_of(app) -> str:
    return str(app.screen.query_one("#rv-status").render())


def copy_run(dst_runs: Path, lines: int) -> tuple[Path, list[bytes]]:
    run = dst_runs / FINISHED.name
    run.mkdir(parents=True)
    for name in ("spec.json", "stdout.log"):
        shutil.copy(FINISHED / name, run / name)
    all_lines = (FINISHED / "events.jsonl").read_bytes().splitlines(keepends=True)
    (run / "events.jsonl").write_bytes(b"".join(all_lines[:lines]))
    return run, all_lines


@pytest.mark.asyncio
async def test_live_view_follows_a_run_while_events_are_appended(make_app):
    app = make_app()
    run, lines = copy_run(app.ctx.runs_dir, 40)
    # this test process stands in for the job: alive, so the run is not "crashed"
    (run / JOB_FILE).write_text(json.dumps({"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}))
    async with app.run_test(size=(100, 32)) as pilot:
        app.goto("train", run=str(run))
        await wait_until(pilot, lambda: view_ready(app), "the first snapshot")
        view = app.screen.query_one(RunView)
        first_step = view.snapshot.state.step
        assert 0 < first_step < 240
        assert "STALLED" in status_of(app)  # alive, but its recorded events are old
        assert f"step {first_step}/240" in status_of(app)
        loss = app.screen.query_one("#rv-loss", LineChart)
        assert len(loss.data.series[0].xs) == first_step

        # more events, the last one torn in half
        with open(run / "events.jsonl", "ab") as fh:
            fh.write(b"".join(lines[40:120]) + lines[120][:25])
        expected = json.loads(lines[119])["seq"]
        await wait_until(pilot, lambda: view.snapshot.state.last_seq == expected, "the appended events")
        assert view.snapshot.state.step > first_step
        assert len(loss.data.series[0].xs) == view.snapshot.state.step
        # the torn line waits for its end: the watcher has read the file twice more and still stops before it
        watcher, polls = view.watcher, view.watcher.polls
        await wait_until(pilot, lambda: watcher.polls >= polls + 2, "two more polls")
        assert view.snapshot.state.last_seq == watcher.state.last_seq == expected

        with open(run / "events.jsonl", "ab") as fh:
            fh.write(lines[120][25:] + b"".join(lines[121:]))
        await wait_until(pilot, lambda: view.snapshot.status == "finished", "the finished event")
        assert "FINISHED" in status_of(app)
        assert "step 240/240" in status_of(app)
        assert len(loss.data.points) == 6        # eval points
        assert loss.data.vlines == (80, 160, 240)  # checkpoints
        assert "finished at step 240" in app.screen.query_one("#rv-log").lines[-1]


@pytest.mark.asyncio
async def test_live_view_is_usable_at_80x24(make_app):
    app = make_app()
    run, _ = copy_run(app.ctx.runs_dir, 10_000)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("train", run=str(run))
        await wait_until(pilot, lambda: view_ready(app) and "FINISHED" in status_of(app), "the finished run")
        screen = app.screen

        def heights() -> tuple[int, ...]:
            return tuple(screen.query_one(f"#rv-{part}").size.height for part in ("status", "loss", "lr", "log"))

        # laid out at 80x24 (the status grows to its two lines once drawn): every part keeps a usable height
        await wait_until(pilot, lambda: all(h >= least for h, least in zip(heights(), (2, 6, 3, 3), strict=True)),
                         "status >= 2, loss >= 6, lr >= 3, log >= 3 rows", show=heights)
        # log scale toggles
        await pilot.press("g")
        await wait_until(pilot, lambda: screen.query_one("#rv-loss", LineChart).data.log_y, "the log scale")


@pytest.mark.asyncio
async def test_form_shows_the_engines_messages_inline_and_blocks_start(make_app, workspace: Path, demo_model: Path):
    app = make_app("train")
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen) and app.screen.ready, "the form")
        screen = app.screen
        start = screen.query_one("#train-start")
        assert screen.query_one("#f-lora_r").value == "32"            # the seed's defaults
        assert screen.query_one("#f-grad_accum").value == "8"
        assert screen.query_one("#f-learning_rate").value == "0.0001"
        assert not start.disabled, screen.problems

        def error(name: str) -> str:
            return str(screen.query_one(f"#err-{name}").render())

        screen.query_one("#f-lora_r").value = "0"
        screen.query_one("#f-epochs").value = "three"
        await wait_until(pilot, lambda: "LoRA rank" in error("lora_r") and "must be a number" in error("epochs"),
                         "the inline messages")
        assert "1 to 1024" in error("lora_r") and "--" not in error("lora_r")  # the setting, not the flag
        assert start.disabled
        assert screen.query_one("#f-lora_r").has_class("-invalid")
        await pilot.press("ctrl+r")
        await wait_for_notification(pilot, "Fix the settings marked in red first")
        assert not list(app.ctx.runs_dir.iterdir())  # nothing started

        screen.query_one("#f-data").value = str(workspace / "missing.jsonl")
        await wait_until(pilot, lambda: "does not exist" in error("data"), "the missing file's message")

        screen.query_one("#f-lora_r").value = "16"
        screen.query_one("#f-epochs").value = "1"
        screen.query_one("#f-data").value = str(Path(__file__).parents[1] / "data" / "demo_train.jsonl")
        await wait_until(pilot, lambda: not start.disabled, "Start enabled again")
        assert not screen.query_one("#err-lora_r").display

        # will it fit: the engine's estimate for this model and setting, computed in a worker
        screen.query_one("#f-max_seq_length").value = "4096"
        await pilot.press("ctrl+e")
        fit = screen.query_one("#train-fit")
        await wait_until(pilot, lambda: "GiB" in str(fit.render()), "the estimate", 60)
        text = str(fit.render())
        assert "random weights, demo only" in text and "seq 4096" in text and "r=16" in text


@pytest.mark.asyncio
async def test_live_view_actions_are_in_the_command_palette(make_app):
    app = make_app()
    run, _ = copy_run(app.ctx.runs_dir, 10_000)
    async with app.run_test(size=(100, 32)) as pilot:
        app.goto("train", run=str(run))
        await wait_until(pilot, lambda: view_ready(app), "the first snapshot")
        view = app.screen.query_one(RunView)
        assert not view.log_y
        await run_from_palette(pilot, "log scale", "Log scale (g)")
        await wait_until(pilot, lambda: view.log_y, "log scale from the palette")
