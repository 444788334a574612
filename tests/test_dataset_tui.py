"""The Dataset screen driven with Pilot: open a file, see the findings, jump to a row, switch the
template, change the mapping; real files, the real validator and the demo model's real tokenizer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import eventually, wait_until
from textual.widgets import DataTable, Input, Select, Static

from medtui.app import MedtuiApp
from medtui.screens.dataset import NO_COT, DatasetScreen, demo_data_path
from medtui.widgets.histogram import TokenHistogram

CORPUS = Path(__file__).parent / "fixtures" / "malformed"


class DatasetFirstApp(MedtuiApp):
    """The real app, opening on the Dataset screen (so the Environment check does not run too)."""

    DEFAULT_MODE = "dataset"
    CSS_PATH = str(Path(sys.modules[MedtuiApp.__module__].__file__).with_name("app.tcss"))


def _text(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def _open(pilot, app, path: Path) -> DatasetScreen:
    screen = app.screen
    assert isinstance(screen, DatasetScreen)
    previous = screen.report
    if not screen.query_one("#ds-path", Input).has_focus:
        await pilot.press("o")
    await wait_until(pilot, lambda: screen.query_one("#ds-path", Input).has_focus, "the path field")
    screen.query_one("#ds-path", Input).value = str(path)
    await pilot.press("enter")
    assert await eventually(pilot, lambda: screen.report is not None and screen.report is not previous)
    return screen


async def test_the_demo_data_is_offered_and_the_hints_name_keys_that_work_where_the_focus_is(workspace, demo_model):
    app = DatasetFirstApp()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        path = screen.query_one("#ds-path", Input)
        # nothing open: the path field has the focus, holding the demo data, and the hint says enter opens it
        await wait_until(pilot, lambda: path.has_focus, "the path field")
        assert path.value == str(demo_data_path()) and demo_data_path().name == "demo_train.jsonl"
        hint = _text(screen, "#ds-summary")
        assert "enter opens the demo data" in hint and "press o" not in hint
        # the field takes letters as text, so the footer offers no letter key while it has the focus
        keys = screen.active_bindings
        assert "o" not in keys and "v" not in keys and "escape" in keys
        # leave the field: now the letter keys work, and the hint names them
        path.value = "/x"  # typing something else: enter no longer opens the demo data, and the hint says so
        await wait_until(pilot, lambda: "enter opens the demo" not in _text(screen, "#ds-summary"), "the hint")
        assert "type the path of a data file" in _text(screen, "#ds-summary")
        path.value = str(demo_data_path())
        await pilot.press("escape")
        await wait_until(pilot, lambda: not path.has_focus, "the focus to leave the field")
        assert "d opens the demo data" in _text(screen, "#ds-summary")
        assert "o" in screen.active_bindings and "escape" not in screen.active_bindings
        await pilot.press("o")                       # o is a key again, not a letter in the path
        await wait_until(pilot, lambda: path.has_focus, "the path field again")
        assert path.value == str(demo_data_path())
        # one key opens the demo data
        await pilot.press("enter")
        assert await eventually(pilot, lambda: screen.report is not None)
        assert screen.report.dataset.path == demo_data_path()
        assert _text(screen, "#ds-summary").startswith("GO:")
        assert screen.query_one("#ds-findings", DataTable).has_focus  # the letter keys work at once


async def test_d_opens_the_demo_data_from_anywhere_on_the_screen(workspace, demo_model):
    app = DatasetFirstApp()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        path = screen.query_one("#ds-path", Input)
        await wait_until(pilot, lambda: path.has_focus, "the path field")
        path.value = "/somewhere/else.jsonl"      # the user typed something, then changed their mind
        await pilot.press("escape", "d")
        assert await eventually(pilot, lambda: screen.report is not None)
        assert path.value == str(demo_data_path()) and screen.report.dataset.path == demo_data_path()


async def test_open_findings_jump_and_template(workspace, demo_model):
    app = DatasetFirstApp()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, CORPUS / "id_number.jsonl")
        assert "NO-GO" in _text(screen, "#ds-summary") and "random weights, demo only" in _text(screen, "#ds-summary")
        table = screen.query_one("#ds-findings", DataTable)
        assert table.row_count == 1
        kind = str(table.get_row_at(0)[2])
        assert kind == "id_number"
        assert "11010519491231002X" not in str(table.get_row_at(0)[3])
        # Jump: enter on the finding previews row 2 as the trainer sees it, identifier masked.
        table.focus()
        await pilot.press("enter")
        assert await eventually(pilot, lambda: "prompt" in _text(screen, "#ds-preview-head"))
        assert screen.query_one("#ds-tabs").active == "tab-preview"
        head, body = _text(screen, "#ds-preview-head"), _text(screen, "#ds-preview")
        assert head.startswith("row 2 · template seed")
        assert "### 问题:" in body and "</think>" in body and "<|im_end|>" in body
        assert "11010519491231002X" not in body and "hidden as ***" in body
        # Switch template: the preview is rendered again with the chat template, the lengths re-measured.
        await pilot.press("t")
        assert await eventually(pilot, lambda: "template chat · prompt" in _text(screen, "#ds-preview-head"))
        assert "<|im_start|>system" in _text(screen, "#ds-preview")
        assert await eventually(pilot, lambda: screen.report.template == "chat")
        # Next / previous row keys.
        await pilot.press("right_square_bracket")
        assert await eventually(pilot, lambda: _text(screen, "#ds-preview-head").startswith("row 3 · template chat · prompt"))
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert await eventually(pilot, lambda: _text(screen, "#ds-preview-head").startswith("row 1 · template chat · prompt"))


async def test_real_records_histogram_goto_row_and_mapping(workspace, demo_model, shared_records):
    app = DatasetFirstApp()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, shared_records)
        assert _text(screen, "#ds-summary").startswith("GO: 198 of 198 rows usable")
        assert screen.query_one("#ds-map-question", Select).value == "Question"
        await pilot.press("h")
        hist = screen.query_one("#ds-histogram", TokenHistogram)
        assert hist.data is not None and sum(hist.data.counts) == 198
        assert "p95" in _text(screen, "#ds-stats")
        # Go to a row by number.
        await pilot.press("g")
        assert await eventually(pilot, lambda: screen.query_one("#ds-row", Input).has_focus)
        await pilot.press("1", "2", "enter")
        assert await eventually(pilot, lambda: _text(screen, "#ds-preview-head").startswith("row 12 · template seed · prompt"))
        # Map no reasoning column: validated again, the think block is empty and the file says so.
        first = screen.report
        screen.query_one("#ds-map-cot", Select).value = NO_COT
        assert await eventually(pilot, lambda: screen.report is not first)
        assert screen.report.dataset.mapping.cot is None
        assert "no_cot_column" in screen.report.by_kind()
        assert "Complex_CoT" in screen.report.dataset.extra_columns


async def test_unreadable_file_is_a_message_and_params_open_a_file(workspace, demo_model):
    app = DatasetFirstApp()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.query_one("#ds-path", Input).has_focus, "the path field")
        screen.query_one("#ds-path", Input).value = str(CORPUS / "truncated.json")
        await pilot.press("enter")
        assert await eventually(pilot, lambda: "Cannot read" in _text(screen, "#ds-summary"))
        assert "truncated.json" in _text(screen, "#ds-summary") and "not valid JSON" in _text(screen, "#ds-summary")
        # Another screen can send a file here.
        app.goto("runs")
        await wait_until(pilot, lambda: app.current_mode == "runs" and app.screen is not screen, "the Runs screen")
        app.goto("dataset", path=str(CORPUS / "duplicate_question.jsonl"))
        assert await eventually(pilot, lambda: screen.report is not None)
        assert screen.report.by_kind()["duplicate_question"] == 1


def test_screen_module_imports_no_heavy_libraries():
    code = ("import sys, medtui.screens.dataset, medtui.widgets.histogram, medtui_engine.dataset, "
            "medtui_engine.commands.validate\n"
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'unsloth', 'tiktoken', 'pyarrow') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert 'textual' not in [m.split('.')[0] for m in sys.modules if m.startswith('medtui_engine')]\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    engine_only = ("import sys, medtui_engine.dataset, medtui_engine.dataset.validate\n"
                   "assert 'textual' not in sys.modules and 'rich' not in sys.modules, 'engine imported UI code'\n")
    subprocess.run([sys.executable, "-c", engine_only], check=True, timeout=60)


async def test_findings_table_is_capped_for_large_files(workspace, demo_model, tmp_path):
    import json

    from medtui.screens.dataset import FINDINGS_SHOWN

    path = tmp_path / "many.jsonl"
    rows = [{"Question": "同一个问题", "Complex_CoT": "想", "Response": "疑似诊断：某病"}] * (FINDINGS_SHOWN + 200)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    app = DatasetFirstApp()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, path)
        assert screen.report.by_kind()["duplicate_question"] == FINDINGS_SHOWN + 199
        assert screen.query_one("#ds-findings", DataTable).row_count == FINDINGS_SHOWN
        assert _text(screen, "#ds-summary").startswith("GO:")  # duplicates are warnings


async def test_fix_the_file_and_validate_again(workspace, demo_model, tmp_path):
    import json

    path = tmp_path / "cases.jsonl"
    good = {"Question": "女性，45岁，右上腹痛3天。", "Complex_CoT": "考虑胆囊炎。", "Response": "疑似诊断：急性胆囊炎"}
    path.write_text(json.dumps(good, ensure_ascii=False) + "\n{broken\n", encoding="utf-8")
    app = DatasetFirstApp()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open(pilot, app, path)
        assert screen.report.by_kind()["bad_json"] == 1 and "NO-GO" in _text(screen, "#ds-summary")
        # The user fixes line 2 in an editor, then presses v: the file is read again.
        path.write_text(json.dumps(good, ensure_ascii=False) + "\n"
                        + json.dumps({**good, "Question": "男性，62岁，吞咽困难2月。"}, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        first = screen.report
        screen.query_one("#ds-findings", DataTable).focus()
        await pilot.press("v")
        assert await eventually(pilot, lambda: screen.report is not first)
        assert screen.report.errors == 0 and _text(screen, "#ds-summary").startswith("GO: 2 of 2 rows usable")
