"""The Train form, generated from the TrainSpec settings, driven with real keys: each entry is
checked on its own as it is typed, its message names the setting (never a CLI flag), and Start
follows; the stop question is the one confirm dialog."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import wait_until
from textual.widgets import Button, Checkbox, Input, Label, Select

from medtui.app import MedtuiApp
from medtui.screens.train import TrainScreen
from medtui.widgets.confirm import Confirm
from medtui.widgets.run_view import RunView
from medtui_engine.runs.jobs import JOB_FILE, STOP_FILE, proc_start_time
from medtui_engine.train.spec import form_settings

FINISHED = Path(__file__).parent / "fixtures" / "runs" / "20251124-160000-qwen7b"


def err(screen, name: str) -> str:
    w = screen.query_one(f"#err-{name}")
    return str(w.render()) if w.display else ""


async def retype(pilot, screen, name: str, text: str) -> None:
    """Focus the entry and replace what is in it, key by key, as a user would."""
    entry = screen.query_one(f"#f-{name}", Input)
    entry.focus()
    await pilot.press("end", *["backspace"] * len(entry.value), *text)


async def test_typing_a_bad_value_shows_that_settings_own_message_and_fixing_it_enables_start(workspace: Path):
    app = MedtuiApp(workspace=str(workspace), start_mode="train")
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen) and app.screen.ready, "the form")
        screen = app.screen
        start = screen.query_one("#train-start", Button)
        # the rows are the settings marked for the form: their labels, kinds and defaults
        settings = list(form_settings())
        labels = [str(w.render()) for w in screen.query(".form-label").results(Label)]
        assert labels == [s.label for _, s in settings]
        for name, s in settings:
            kind = {"bool": Checkbox, "choice": Select}.get(s.kind, Input)
            assert isinstance(screen.query_one(f"#f-{name}"), kind), name
        assert screen.query_one("#f-lora_alpha", Input).value == "32"
        assert not start.disabled, screen.problems

        await retype(pilot, screen, "lora_r", "0")
        await wait_until(pilot, lambda: start.disabled and "got 0" in err(screen, "lora_r"), "lora_r's message")
        assert err(screen, "lora_r") == "LoRA rank must be a whole number from 1 to 1024, got 0"
        assert screen.query_one("#f-lora_r").has_class("-invalid")
        assert [n for n, _ in settings if err(screen, n)] == ["lora_r"]  # no other row speaks

        await retype(pilot, screen, "learning_rate", "2")
        await wait_until(pilot, lambda: err(screen, "learning_rate"), "learning_rate's message")
        assert err(screen, "learning_rate") == "Learning rate must be between 0 and 1 (e.g. 1e-4), got 2.0"
        assert err(screen, "lora_r")  # each field keeps its own problem
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert not app.ctx.runs_dir.exists() or not any(app.ctx.runs_dir.iterdir())  # nothing started

        await retype(pilot, screen, "lora_r", "16")
        await wait_until(pilot, lambda: not err(screen, "lora_r"), "lora_r fixed")
        assert not screen.query_one("#f-lora_r").has_class("-invalid")
        assert start.disabled  # the learning rate is still wrong
        await retype(pilot, screen, "learning_rate", "2e-4")
        await wait_until(pilot, lambda: not start.disabled, "Start enabled")
        assert screen.problems == {} and screen.current_spec().lora_r == 16
        assert screen.current_spec().learning_rate == 2e-4

        # the file a setting names is checked with it, and says so in that setting's row
        await retype(pilot, screen, "data", "nowhere.jsonl")
        await wait_until(pilot, lambda: "does not exist" in err(screen, "data"), "data's message")
        assert err(screen, "data").startswith("Training data: nowhere.jsonl") and "--data" not in err(screen, "data")
        assert start.disabled


async def test_stop_asks_with_the_confirm_dialog_and_no_keeps_the_job(workspace: Path):
    app = MedtuiApp(workspace=str(workspace), start_mode="runs")
    run = app.ctx.runs_dir / FINISHED.name
    shutil.copytree(FINISHED, run)
    (run / "events.jsonl").write_bytes(b"".join((FINISHED / "events.jsonl").read_bytes().splitlines(True)[:40]))
    # a real process stands in for the job
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / JOB_FILE).write_text(json.dumps({"pid": job.pid, "start_time": proc_start_time(job.pid)}))
        async with app.run_test(size=(100, 32)) as pilot:
            app.goto("train", run=str(run))
            await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen) and app.screen.query(RunView)
                             and app.screen.query_one(RunView).snapshot is not None, "the live view")
            await pilot.press("s")
            await wait_until(pilot, lambda: isinstance(app.screen, Confirm), "the question")
            dialog = app.screen
            assert str(dialog.query_one(".section-title").render()) == f"Stop run {run.name}?"
            assert str(dialog.query_one("#confirm-yes").label) == "Stop (y)"
            assert str(dialog.query_one("#confirm-no").label) == "Keep training (n)"
            assert app.focused is dialog.query_one("#confirm-no")  # a stray enter stops nothing
            await pilot.press("n")
            await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen), "the dialog to close")
            assert not (run / STOP_FILE).exists() and job.poll() is None

            await pilot.press("s")
            await wait_until(pilot, lambda: isinstance(app.screen, Confirm), "the question again")
            await pilot.press("y")
            await wait_until(pilot, lambda: (run / STOP_FILE).exists(), "the stop request")
            job.wait(timeout=30)  # asked to stop (SIGTERM), the stand-in ends
    finally:
        job.kill()
        job.wait()
