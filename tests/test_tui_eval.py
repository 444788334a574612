"""The Eval screen through the real app: a finished evaluation job's table and a case's base and tuned
answers side by side; and an evaluation started from the screen, followed to its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TRAIN_JOBS, run_from_palette, wait_for_screen, wait_until
from textual.widgets import DataTable, Input, OptionList, Select, Static

from medtui.app import MedtuiApp
from medtui.screens.eval import EvalScreen
from medtui.widgets.answer import AnswerView
from medtui_engine.context import load_context
from medtui_engine.jobs.follow import JobFollower
from medtui_engine.jobs.status import JobStatus
from medtui_engine.notices import DISCLAIMER

ROOT = Path(__file__).resolve().parent.parent
SIZE = (120, 40)


@pytest.fixture(scope="module")
def finished_eval(demo_model, tmp_path_factory) -> tuple[Path, Path]:
    """A real evaluation job on the demo model (as base and as tuned), run to its end: (workspace, job dir)."""
    from medtui_engine.evaluate.cases import load_eval_cases
    from medtui_engine.evaluate.job import eval_sources, start_eval
    from medtui_engine.infer.sampling import SamplingSettings

    ws = tmp_path_factory.mktemp("eval-ws")
    ctx = load_context(str(ws), None)
    cases_file = ROOT / "data" / "demo_eval.jsonl"
    job = start_eval(ctx.workspace, ctx.reports_dir, eval_sources("demo", "demo", ctx.runs_dir, ctx.merged_dir),
                     load_eval_cases(cases_file, 2), cases_file, SamplingSettings(max_new_tokens=6, seed=0))
    follower = JobFollower(job, "eval")
    for _ in follower.follow(poll_s=0.2, timeout=600):
        pass
    assert follower.status is JobStatus.FINISHED, (follower.status, (job / "stdout.log").read_text())
    return ws, job


def disclaimers(screen) -> int:
    return sum(DISCLAIMER in str(s.render()) for s in screen.query(Static))


@TRAIN_JOBS
async def test_a_finished_eval_shows_its_table_and_a_case_side_by_side(finished_eval):
    ws, job = finished_eval
    app = MedtuiApp(workspace=str(ws), start_mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_screen(pilot, EvalScreen)
        await wait_until(pilot, lambda: screen.report is not None, "the report of the newest job", 60)
        assert screen.job_dir == job and screen.status is JobStatus.FINISHED
        assert disclaimers(screen) == 1
        report = json.loads((Path(screen.state.report_dir) / "report.json").read_text(encoding="utf-8"))
        table = screen.query_one("#eval-table", DataTable)
        assert [c.label.plain for c in table.columns.values()] == ["measure", "base", "tuned", "difference (95% CI)",
                                                                    "McNemar"]
        first = table.get_row_at(0)
        assert first[0].startswith("diagnosis: match") and first[4].startswith("p = ")
        # the second case, picked in the case list: each side shows its own answer to it
        cases = screen.query_one("#eval-case-list", OptionList)
        assert cases.option_count == 2
        cases.focus()
        await pilot.press("down")
        second = report["models"]["tuned"]["cases"][1]["id"]
        base, tuned = screen.query_one("#eval-answer-base", AnswerView), screen.query_one("#eval-answer-tuned", AnswerView)
        await wait_until(pilot, lambda: second in str(screen.query_one("#eval-case", Static).render()), "the second case")
        assert base.display and tuned.display and base.complete and tuned.complete
        assert base.output == report["models"]["base"]["cases"][1]["output"]
        assert tuned.output == report["models"]["tuned"]["cases"][1]["output"]


@TRAIN_JOBS
async def test_start_an_eval_from_the_screen(demo_model, workspace):
    app = MedtuiApp(workspace=str(workspace), start_mode="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_screen(pilot, EvalScreen)
        assert screen.job_dir is None
        screen.query_one("#eval-limit", Input).value = "1"
        screen.query_one("#eval-tokens", Input).value = "4"
        screen.query_one("#eval-base", Select).value = "none"
        assert screen.query_one("#eval-model", Select).value == "demo"
        await run_from_palette(pilot, "start eval", "Start eval (s)")
        await wait_until(pilot, lambda: screen.report is not None, "the evaluation's report", 600,
                         show=lambda: str(screen.query_one("#eval-status", Static).render()))
        job = screen.job_dir
        assert job.parent == workspace.resolve() / "jobs" and screen.status is JobStatus.FINISHED
        assert "finished: 1/1 answers" in str(screen.query_one("#eval-status", Static).render())
        table = screen.query_one("#eval-table", DataTable)
        assert [c.label.plain for c in table.columns.values()] == ["measure", "tuned"]
        assert not screen.query_one("#eval-answer-base", AnswerView).display
        assert screen.query_one("#eval-answer-tuned", AnswerView).complete
        assert screen.query_one("#eval-jobs", OptionList).option_count == 1
