"""The Case console through the real app (App.run_test + Pilot) on the real demo model: type a case,
watch it stream, stop it, compare tuned with base, save the transcript and read it back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import (
    make_adapter,
    nvidia_gpus,
    wait_for_notification,
    wait_for_screen,
    wait_for_screen_gone,
    wait_until,
)
from textual.widgets import Input, Static, TextArea

from medtui.app import MedtuiApp
from medtui.screens.console import CasePicker, ConsoleScreen, ListPicker, ModelPicker, SamplingDialog
from medtui_engine.infer import SamplingSettings
from medtui_engine.notices import DISCLAIMER
from medtui_engine.transcripts import load_transcript

SIZE = (80, 24)
MODEL_S = 240.0  # a bound on loading the demo model and answering on a slow CPU, not a timing claim


def app_on(mode: str) -> MedtuiApp:
    """The real app, starting on ``mode`` (start_mode would first mount the Environment screen, whose
    library probes then hold the app's exit for half a minute)."""
    import medtui.app

    css = str(Path(medtui.app.__file__).with_name("app.tcss"))
    cls = type("MedtuiAppOn", (MedtuiApp,), {"DEFAULT_MODE": mode, "CSS_PATH": css})
    return cls()


async def wait_for(pilot, cond, what: str) -> None:
    await wait_until(pilot, cond, what, MODEL_S)


async def console(pilot) -> ConsoleScreen:
    return await wait_for_screen(pilot, ConsoleScreen)


@pytest.fixture(scope="module")
def adapter_run(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("console-runs") / "20261124-130000-demo"
    run.mkdir()
    make_adapter(demo_model, run / "adapter", r=8, alpha=16, seed=0, scale=0.5)
    (run / "spec.json").write_text(json.dumps({"model": "demo", "template": "chat"}))
    return run


async def test_type_send_stream_save_and_read_back(demo_model: Path, workspace: Path) -> None:
    app = app_on("console")
    async with app.run_test(size=SIZE) as pilot:
        scr = await console(pilot)
        assert str(scr.query_one("#console-disclaimer", Static).render()) == DISCLAIMER
        # sampling: the seed's defaults, edited through the dialog
        await pilot.press("f7")
        dialog = await wait_for_screen(pilot, SamplingDialog)
        assert dialog.query_one("#s-temperature", Input).value == "0.3"
        assert dialog.query_one("#s-top_p", Input).value == "0.9"
        field = dialog.query_one("#s-max_new_tokens", Input)
        assert field.value == "1024"
        field.focus()
        field.value = "40"
        await pilot.press("enter")
        await wait_for_screen_gone(pilot, dialog)
        assert scr.settings.max_new_tokens == 40 and scr.settings.temperature == 0.3
        assert "max_new_tokens 40" in str(scr.query_one("#console-sampling", Static).render())
        # type a case and send it; no model yet, so the default (demo) loads first
        scr.query_one("#console-case", TextArea).focus()
        await pilot.press(*"male 62, dysphagia 2 months")
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: scr.state == "idle" and scr.transcript.entries, "the first answer")
        view = scr.tuned_view
        assert scr.stream_updates >= 1                       # text arrived before the end
        assert scr.stream_updates < view.output_tokens        # ...in batches, not per token
        assert view.complete and view.output and view.stats.output_tokens <= 40
        assert "random weights, demo only" in str(scr.query_one("#console-model", Static).render())
        # random weights write no sections: all five are flagged missing once complete
        assert len(view.sections.missing) == 5
        assert "✗疑似诊断" in str(view.query_one(".answer-sections", Static).render())
        entry = scr.transcript.entries[0]
        assert entry.question == "male 62, dysphagia 2 months" and entry.output == view.output
        # save, then read it back
        await pilot.press("ctrl+s")
        await wait_for_notification(pilot, "Saved")
        md, jl = scr.last_saved
        assert md.parent == workspace / "transcripts" and md.exists() and jl.exists()
        assert DISCLAIMER in md.read_text(encoding="utf-8")
        back = load_transcript(jl)
        assert [(e.question, e.output, e.stats) for e in back.entries] == [(entry.question, entry.output, entry.stats)]
        scr.query_one("#console-case", TextArea).text = ""
        scr.transcript = type(scr.transcript).new()
        await pilot.press("f9")
        picker = await wait_for_screen(pilot, ListPicker)
        await pilot.press("enter")
        await wait_for_screen_gone(pilot, picker)
        assert scr.query_one("#console-case", TextArea).text == entry.question
        assert scr.tuned_view.output == entry.output and len(scr.transcript.entries) == 1


async def test_stop_mid_generation(demo_model: Path, workspace: Path) -> None:
    app = app_on("console")
    async with app.run_test(size=SIZE) as pilot:
        scr = await console(pilot)
        await pilot.press("ctrl+l")                            # the model picker: the demo comes first
        await wait_for_screen(pilot, ModelPicker)
        await pilot.press("enter")
        await wait_for(pilot, lambda: scr.state == "idle" and "tuned" in scr.models, "the demo model")
        status = str(scr.query_one("#console-status", Static).render())
        assert "loaded medtui-demo-qwen3-tiny (random weights, demo only)" in status
        assert ("GPU0 " in status) if nvidia_gpus() else ("no GPU (CPU)" in status)
        await pilot.press("ctrl+o")                            # a demo case
        picker = await wait_for_screen(pilot, CasePicker)
        await pilot.press("enter")
        await wait_for_screen_gone(pilot, picker)
        assert "吞咽困难" in scr.query_one("#console-case", TextArea).text
        # long enough that the stop always comes first, even where a GPU writes the demo's tokens in a blink
        scr.settings = replace(scr.settings, max_new_tokens=8000)
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: scr.stream_updates >= 1 and scr.state == "answering", "the answer to stream")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: scr.state == "idle", "the answer to stop")
        view = scr.tuned_view
        assert view.stats.finish_reason == "cancelled" and view.stats.output_tokens < 8000
        assert "stopped" in str(view.query_one(".answer-stats", Static).render())


async def test_compare_tuned_and_base_side_by_side(adapter_run: Path, workspace: Path) -> None:
    app = app_on("runs")  # the Runs screen opens a run in the console like this:
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.current_mode == "runs", "the Runs screen")
        app.goto("console", run=str(adapter_run), compare=True)
        scr = await console(pilot)
        await wait_for(pilot, lambda: scr.state == "idle" and len(scr.models) == 2, "the tuned model and its base")
        assert scr.models["tuned"].source.adapter_dir == adapter_run / "adapter"
        assert scr.models["base"].source.adapter_dir is None
        assert scr.base_view.display and scr.tuned_view.display
        scr.settings = SamplingSettings(temperature=0, max_new_tokens=12)
        scr.query_one("#console-case", TextArea).text = "女性，29岁，孕36周，头痛2天，BP 162/108mmHg"
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: scr.state == "idle" and len(scr.transcript.entries) == 2, "both answers")
        tuned, base = scr.transcript.entries
        assert (tuned.side, base.side) == ("tuned", "base") and tuned.case == base.case == 1
        assert tuned.template == base.template == "chat"      # the run's template, for both sides
        assert tuned.output != base.output
        assert scr.tuned_view.output == tuned.output and scr.base_view.output == base.output
        assert "[base]" in str(scr.base_view.query_one(".answer-title", Static).render())
        await pilot.press("ctrl+r")                            # compare off: the base is unloaded
        await wait_until(pilot, lambda: not scr.compare, "compare off")
        assert not scr.base_view.display and "base" not in scr.models
