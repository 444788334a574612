"""The Eval screen: start an evaluation job, follow it, read its report and compare any case's answers.

The job runs in its own process (closing the TUI does not stop it). One worker thread follows the job
shown, with the engine's :class:`~medtui_engine.jobs.follow.JobFollower` (the follower ``medtui eval``
uses), and posts immutable snapshots; once the job has written its report, the worker reads
report.json and posts it. The table is the report's (the engine's ``report_table``, as report.md words
it); the progress and outcome are the engine's rows, as the CLI prints them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, OptionList, ProgressBar, Select, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from medtui_engine.evaluate.events import EvalState
from medtui_engine.jobs.describe import NextSteps, describe_eval_status
from medtui_engine.jobs.status import JobStatus
from medtui_engine.notices import DISCLAIMER

from ..widgets.answer import AnswerView
from ..widgets.rows import rows_text

POLL_SECONDS = 0.3
DEFAULT_LIMIT = "5"
DEFAULT_TOKENS = "256"
BASE_CHOICES = (("base: the model's own", "auto"), ("base: the demo model", "demo"), ("base: none", "none"))
TUI_STEPS = NextSteps(resume="r resumes", merge="", console="", log="details: {run_dir}/stdout.log")


@dataclass(frozen=True)
class StartRequest:
    cases_file: str
    model: str
    base: str
    limit: int | None
    max_new_tokens: int


class EvalScreen(Screen):
    CSS_PATH = "eval.tcss"
    BINDINGS = [
        Binding("s", "start", "Start eval", id="eval-start",
                tooltip="Start an evaluation job with the cases file, model and base on the left"),
        Binding("x", "stop", "Stop eval", id="eval-stop",
                tooltip="Stop the evaluation shown (the answers given so far are kept)"),
        Binding("r", "resume", "Resume eval", id="eval-resume",
                tooltip="Resume the evaluation shown; answers already given are not given again"),
    ]

    @dataclass
    class Started(Message):
        job_dir: str | None
        error: str | None = None

    @dataclass
    class Progressed(Message):
        job_dir: str
        state: EvalState          # a copy: the worker keeps folding into its own
        status: JobStatus

    @dataclass
    class ReportRead(Message):
        job_dir: str
        report: dict | None
        error: str | None = None

    @dataclass
    class JobsListed(Message):
        jobs: tuple[str, ...]

    def __init__(self) -> None:
        super().__init__()
        self.job_dir: Path | None = None
        self.state: EvalState | None = None
        self.status: JobStatus | None = None
        self.report: dict | None = None
        self.case_ids: list[str] = []
        self.jobs: tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        from medtui_engine.paths import project_data_dir

        yield Header()
        yield Static(DISCLAIMER, id="eval-disclaimer")
        with Horizontal(id="eval-top"):
            with Vertical(id="eval-form"):
                yield Label("Start an evaluation", classes="section-title")
                yield Input(str(project_data_dir() / "demo_eval.jsonl"), placeholder="cases file", id="eval-cases-file",
                            tooltip="JSONL/JSON/CSV: flat cases, clinical records or multiple-choice questions")
                yield Select([], prompt="model", id="eval-model", allow_blank=True, compact=True)
                yield Select(BASE_CHOICES, value="auto", id="eval-base", allow_blank=False, compact=True)
                with Horizontal(id="eval-numbers"):
                    yield Input(DEFAULT_LIMIT, placeholder="cases", id="eval-limit", type="integer",
                                tooltip="only the first N cases (empty: all)")
                    yield Input(DEFAULT_TOKENS, placeholder="max tokens", id="eval-tokens", type="integer",
                                tooltip="max_new_tokens of each answer")
                yield Label("Evaluations", classes="section-title")
                yield OptionList(id="eval-jobs")
            with Vertical(id="eval-main"):
                yield Static("No evaluation shown: start one (s), or pick one on the left.", id="eval-status")
                yield ProgressBar(total=1, show_eta=False, id="eval-progress")
                yield DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="eval-bottom"):
            yield OptionList(id="eval-case-list")
            with Vertical(id="eval-compare"):
                yield Static("", id="eval-case")
                with Horizontal(id="eval-answers"):
                    yield AnswerView("base", id="eval-answer-base")
                    yield AnswerView("tuned", id="eval-answer-tuned")
        yield Footer()

    def on_mount(self) -> None:
        from medtui_engine.infer.source import list_choices

        ctx = self.app.ctx
        self.query_one("#eval-model", Select).set_options(
            [(_short(desc), arg) for arg, desc in list_choices(ctx.runs_dir, ctx.merged_dir)])
        self.query_one("#eval-model", Select).value = "demo"
        for view in self.query(AnswerView):
            view.show_side = True

    def on_screen_resume(self) -> None:
        params = self.app.take_params("eval")
        if params.get("job"):
            self.show_job(Path(params["job"]))
        self._list_jobs()

    # ---- the jobs of the workspace -------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="eval-jobs")
    def _list_jobs(self) -> None:
        from medtui_engine.evaluate.job import list_eval_jobs

        self.post_message(self.JobsListed(tuple(str(p) for p in list_eval_jobs(self.app.ctx.workspace))))

    @on(JobsListed)
    def _listed(self, msg: JobsListed) -> None:
        if msg.jobs != self.jobs:
            self.jobs = msg.jobs
            jobs = self.query_one("#eval-jobs", OptionList)
            jobs.clear_options()
            jobs.add_options([Option(Path(j).name, id=j) for j in msg.jobs])
        if self.job_dir is None and msg.jobs:
            self.show_job(Path(msg.jobs[0]))

    @on(OptionList.OptionSelected, "#eval-jobs")
    def _job_picked(self, event: OptionList.OptionSelected) -> None:
        self.show_job(Path(str(event.option.id)))

    # ---- following one job ---------------------------------------------------------------------
    def show_job(self, job_dir: Path, past_seq: int = -1) -> None:
        self.job_dir = Path(job_dir)
        self.state = self.status = self.report = None
        self.case_ids = []
        self.query_one("#eval-table", DataTable).clear(columns=True)
        self.query_one("#eval-case-list", OptionList).clear_options()
        self.query_one("#eval-status", Static).update(f"Reading {self.job_dir.name} ...")
        self._follow(str(self.job_dir), past_seq)

    @work(thread=True, exclusive=True, exit_on_error=False, group="eval-follow")
    def _follow(self, job_dir: str, past_seq: int) -> None:
        from medtui_engine.jobs.follow import JobFollower

        follower = JobFollower(job_dir, "eval", past_seq=past_seq)
        worker = get_current_worker()
        seen: tuple | None = None
        while not worker.is_cancelled:
            follower.poll()
            now = (follower.last_seq, follower.status)
            if now != seen:
                seen = now
                s = follower.state
                self.post_message(self.Progressed(job_dir, replace(s, sides=list(s.sides), labels=dict(s.labels),
                                                                   done_by_side=dict(s.done_by_side)), follower.status))
            if follower.done:
                if follower.status is JobStatus.FINISHED and follower.state.report_dir:
                    self.post_message(_read_report(job_dir, follower.state.report_dir))
                return
            time.sleep(POLL_SECONDS)

    @on(Progressed)
    def _progressed(self, msg: Progressed) -> None:
        if self.job_dir is None or msg.job_dir != str(self.job_dir):
            return  # a job no longer shown
        self.state, self.status = msg.state, msg.status
        s = msg.state
        bar = self.query_one("#eval-progress", ProgressBar)
        bar.update(total=max(s.total, 1), progress=s.done)
        rows = describe_eval_status(msg.status, s, job_dir=self.job_dir, steps=TUI_STEPS)
        head = Text(f"{self.job_dir.name}  ", style="bold")
        head.append(str(msg.status), style="green" if msg.status is JobStatus.FINISHED else "")
        head.append("\n")
        self.query_one("#eval-status", Static).update(head + rows_text(rows))
        if msg.status.ended:
            self._list_jobs()

    @on(ReportRead)
    def _report_read(self, msg: ReportRead) -> None:
        if self.job_dir is None or msg.job_dir != str(self.job_dir):
            return
        if msg.report is None:
            self.query_one("#eval-status", Static).update(Text(msg.error or "the report could not be read", style="red"))
            return
        self.report = msg.report
        self._show_table(msg.report)
        self._show_cases(msg.report)

    def _show_table(self, report: dict) -> None:
        from medtui_engine.evaluate.runner import report_table

        header, rows = report_table(report)
        table = self.query_one("#eval-table", DataTable)
        table.clear(columns=True)
        for i, name in enumerate(header):
            table.add_column(name, key=name, width=30 if i == 0 else None)
        for row in rows:
            table.add_row(*row)

    def _show_cases(self, report: dict) -> None:
        models = report["models"]
        first = next(iter(models.values()))
        self.case_ids = [c["id"] for c in first["cases"]]
        cases = self.query_one("#eval-case-list", OptionList)
        cases.clear_options()
        cases.add_options([Option(cid, id=cid) for cid in self.case_ids])
        self.query_one("#eval-answer-base", AnswerView).display = "base" in models
        if self.case_ids:
            cases.highlighted = 0
            self.show_case(self.case_ids[0])

    @on(OptionList.OptionHighlighted, "#eval-case-list")
    def _case_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id:
            self.show_case(str(event.option.id))

    def show_case(self, case_id: str) -> None:
        """The case's question and reference, and each model's (first) answer side by side."""
        if self.report is None:
            return
        models = self.report["models"]
        head = None
        for side in ("base", "tuned"):
            view = self.query_one(f"#eval-answer-{side}", AnswerView)
            model = models.get(side) or (models.get("model") if side == "tuned" else None)
            case = next((c for c in (model or {}).get("cases", []) if c["id"] == case_id), None)
            if model is None or case is None:
                continue
            head = head or case
            source = model["source"]
            verdict = case.get("diagnosis_match")
            detail = ("" if verdict is None else f"diagnosis {'matched' if verdict else 'not matched'}"
                      f" ({case.get('diagnosis_tier')})")
            view.set_model(source.get("label", side), detail)
            view.begin(str(source.get("template") or "seed"))  # "seed": the prompt opened the think block
            view.finish(case["output"], case.get("stats") or {})
        if head is not None:
            ref = head.get("reference_diagnosis")
            ref = " / ".join(ref) if isinstance(ref, list) else (ref or "none")
            text = Text(f"{case_id}  ", style="bold")
            text.append(f"reference: {ref}\n", style="italic")
            text.append(head["question"][:400])
            self.query_one("#eval-case", Static).update(text)

    # ---- actions -------------------------------------------------------------------------------
    def _request(self) -> StartRequest | str:
        cases = self.query_one("#eval-cases-file", Input).value.strip()
        model = self.query_one("#eval-model", Select).value
        base = self.query_one("#eval-base", Select).value
        limit_s = self.query_one("#eval-limit", Input).value.strip()
        tokens_s = self.query_one("#eval-tokens", Input).value.strip()
        if not cases:
            return "give a cases file"
        if model is Select.BLANK:
            return "pick the model to evaluate"
        try:
            limit = int(limit_s) if limit_s else None
            tokens = int(tokens_s or DEFAULT_TOKENS)
        except ValueError:
            return "the number of cases and max tokens are whole numbers"
        if limit is not None and limit < 1:
            return "the number of cases must be at least 1 (empty: all)"
        return StartRequest(cases, str(model), str(base), limit, tokens)

    def action_start(self) -> None:
        req = self._request()
        if isinstance(req, str):
            self.app.notify(req, severity="warning")
            return
        self.query_one("#eval-status", Static).update("Starting the evaluation job ...")
        self._start(req)

    @work(thread=True, exclusive=True, exit_on_error=False, group="eval-start")
    def _start(self, req: StartRequest) -> None:
        from medtui_engine.evaluate.cases import load_eval_cases
        from medtui_engine.evaluate.job import eval_sources, start_eval
        from medtui_engine.infer.sampling import SamplingSettings

        ctx = self.app.ctx
        try:
            cases_file = Path(req.cases_file).expanduser()
            cases = load_eval_cases(cases_file, req.limit)
            settings = SamplingSettings(max_new_tokens=req.max_new_tokens, seed=0).checked()
            sources = eval_sources(req.model, req.base, ctx.runs_dir, ctx.merged_dir)
            job_dir = start_eval(ctx.workspace, ctx.reports_dir, sources, cases, cases_file.resolve(), settings)
        except Exception as exc:  # noqa: BLE001 - the engine's refusal (a UserError), shown in its words
            self.post_message(self.Started(None, str(exc)))
            return
        self.post_message(self.Started(str(job_dir)))

    @on(Started)
    def _started(self, msg: Started) -> None:
        if msg.job_dir is None:
            self.query_one("#eval-status", Static).update(Text(f"Cannot start: {msg.error}", style="bold red"))
            return
        self.app.notify(f"Evaluation {Path(msg.job_dir).name} started")
        self.show_job(Path(msg.job_dir))
        self._list_jobs()

    def action_stop(self) -> None:
        from medtui_engine.runs.jobs import job_alive, request_stop

        if self.job_dir is None or not job_alive(self.job_dir):
            self.app.notify("No running evaluation shown", severity="warning")
            return
        request_stop(self.job_dir)
        self.app.notify(f"Stop requested: {self.job_dir.name} keeps the answers given so far")

    def action_resume(self) -> None:
        from medtui_engine.errors import UserError
        from medtui_engine.evaluate.job import resume_eval

        if self.job_dir is None:
            self.app.notify("No evaluation shown", severity="warning")
            return
        try:
            past = resume_eval(self.job_dir)
        except UserError as exc:
            self.app.notify(str(exc), severity="warning")
            return
        self.show_job(self.job_dir, past_seq=past)


def _short(text: str, width: int = 26) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _read_report(job_dir: str, report_dir: str) -> EvalScreen.ReportRead:
    try:
        report = json.loads((Path(report_dir) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return EvalScreen.ReportRead(job_dir, None, f"cannot read {report_dir}/report.json: {exc}")
    return EvalScreen.ReportRead(job_dir, report if isinstance(report, dict) else None)
