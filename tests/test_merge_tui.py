"""The merge dialog, driven with real keys: it shows what will happen before it happens, refuses
what it must, starts the real detached job and shows its verification and the vLLM command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_adapter, wait_for_screen, wait_for_screen_gone, wait_until
from textual.app import App
from textual.widgets import Static

from medtui.widgets.merge_dialog import MergeDialog, open_merge_dialog
from medtui_engine.context import load_context


class Host(App[None]):
    """A bare app holding the workspace context, as MedtuiApp does."""

    def __init__(self, workspace: Path) -> None:
        super().__init__()
        self.ctx = load_context(workspace)


@pytest.fixture
def run_dir(workspace: Path, demo_model: Path) -> Path:
    run = workspace / "runs" / "20261124-130000-demo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"model": "demo", "template": "seed", "backend": "hf", "load_in_4bit": False}))
    (run / "events.jsonl").write_text("")
    make_adapter(demo_model, run / "adapter", r=4, alpha=8, seed=3)
    return run


def text(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def wait_for(pilot, predicate, seconds: float) -> None:
    await wait_until(pilot, predicate, "the dialog", seconds)


async def test_dialog_refuses_existing_output_until_f(run_dir: Path, workspace: Path) -> None:
    (run_dir / "merged").mkdir()
    app = Host(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        open_merge_dialog(app, run_dir)
        dialog = await wait_for_screen(pilot, MergeDialog)
        await wait_for(pilot, lambda: "Cannot merge" in text(dialog, "#merge-status"), 30)
        assert "already exists" in text(dialog, "#merge-status") and "press f" in text(dialog, "#merge-status").lower()
        await pilot.press("enter")           # nothing to start: no job
        assert not (workspace / "jobs").exists()
        await pilot.press("f")
        await wait_for(pilot, lambda: "replaces the existing one" in text(dialog, "#merge-plan"), 30)
        await pilot.press("escape")
        await wait_for_screen_gone(pilot, dialog)
        assert not isinstance(app.screen, MergeDialog)


@pytest.mark.slow
async def test_dialog_confirms_then_merges_and_shows_verification(run_dir: Path, workspace: Path) -> None:
    app = Host(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        open_merge_dialog(app, run_dir)
        dialog = await wait_for_screen(pilot, MergeDialog)
        await wait_for(pilot, lambda: "Base model" in text(dialog, "#merge-plan"), 30)
        plan = text(dialog, "#merge-plan")
        for label in ("Base model", "Adapter", "Output", "Dtype", "Disk", "random weights, demo only", "final adapter",
                      str(run_dir / "merged"), "bf16", "free"):
            assert label in plan, label
        await pilot.press("d")               # fp16 instead of bf16
        await wait_for(pilot, lambda: "fp16" in text(dialog, "#merge-plan"), 30)
        await pilot.press("enter")
        await wait_for(pilot, lambda: dialog.final is not None, 300)
        assert dialog.final.status == "finished", dialog.final.error
        result = text(dialog, "#merge-result")
        assert "vllm serve" in result and "--dtype float16" in result
        assert "top-1 agreement" in result and "forced EOS halts: yes" in result and "no peft/unsloth: yes" in result
        assert "Merged and verified" in text(dialog, "#merge-status")
        await pilot.press("escape")
    merged = run_dir / "merged"
    prov = json.loads((merged / "medtui.json").read_text())
    assert prov["run_id"] == run_dir.name and prov["merge"]["dtype"] == "fp16" and prov["verification"]["passed"]
    assert json.loads((merged / "config.json").read_text())["dtype"] == "float16"
    assert prov["trained_with"]["backend"] == "hf"


async def test_dialog_installs_a_model_that_never_stops_with_a_warning(workspace: Path, demo_model: Path,
                                                                       tmp_path: Path) -> None:
    """A real (non-demo) base whose answers never end: the dialog installs it and says so, with numbers."""
    from test_stoptokens import base_qwen_like

    base = base_qwen_like(demo_model, tmp_path / "qwen-base-like")
    run = workspace / "runs" / "20261201-140000-real"
    run.mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"model": str(base), "template": "seed", "backend": "hf"}))
    (run / "events.jsonl").write_text("")
    make_adapter(base, run / "adapter", r=4, alpha=8, seed=5)
    app = Host(workspace)
    async with app.run_test(size=(100, 40)) as pilot:
        open_merge_dialog(app, run)
        await pilot.pause()
        dialog = app.screen
        await wait_for(pilot, lambda: "Base model" in text(dialog, "#merge-plan"), 30)
        await pilot.press("enter")
        await wait_for(pilot, lambda: dialog.final is not None, 600)
        assert dialog.final.status == "finished", dialog.final.error
        result = text(dialog, "#merge-result")
        assert "0 of 4 probe answers ended by themselves within 1024 tokens, cut-off rate 100%" in result
        assert "installed anyway" in result and "train longer" in result
        status = text(dialog, "#merge-status")
        assert "Merged and verified." in status and "Installed with a warning: Stops" in status
        await pilot.press("escape")
    prov = json.loads((run / "merged" / "medtui.json").read_text())
    assert prov["verification"]["passed"] and prov["verification"]["behaviour"]["cut_off"] == 4
    assert prov["warnings"] and (run / "merged" / "README.md").is_file()
