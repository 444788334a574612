"""The merge confirmation: what will be merged, where, in which dtype, the disk it needs, then the
detached merge job's progress and its verification, in one modal.

The plan is read from files (no torch) in a worker thread; the job runs in its own process, so
closing this dialog or the TUI does not stop it. A worker polls the engine's job follower (the one
``medtui merge`` uses) and posts immutable snapshots; widgets are only touched on the UI thread.
The plan, the progress and the verification are the engine's rows, as the CLI prints them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.markup import escape
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, ProgressBar, Static
from textual.worker import get_current_worker

from medtui_engine.jobs.describe import describe_merge_plan, describe_merge_progress, describe_merge_result
from medtui_engine.jobs.status import JobStatus
from medtui_engine.merge.events import MergeState
from medtui_engine.merge.plan import MergePlan, OutputExists, make_plan
from medtui_engine.rows import Severity

from .rows import row_text, rows_text

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class PlanRequest:
    source: str
    dtype: str | None
    adapter_only: bool
    force: bool
    gguf: tuple = ()


class MergeDialog(ModalScreen[str | None]):
    """Confirm, start and follow one merge. Dismisses with the output directory (or None)."""

    DEFAULT_CSS = """
    MergeDialog { align: center middle; }
    MergeDialog > #merge-box {
        width: 96; max-width: 100%; height: auto; max-height: 100%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    MergeDialog #merge-title { text-style: bold; color: $accent; }
    MergeDialog #merge-plan { height: auto; }
    MergeDialog #merge-status { height: auto; margin-top: 1; }
    MergeDialog #merge-result { height: auto; }
    MergeDialog .merge-error { color: $error; text-style: bold; }
    MergeDialog ProgressBar { margin-top: 1; }
    """

    BINDINGS = [
        Binding("enter", "start", "Start merge", id="merge-start", tooltip="Start the merge job"),
        Binding("d", "toggle_dtype", "bf16/fp16", id="merge-dtype", tooltip="Switch the merged weights between bf16 and fp16"),
        Binding("a", "toggle_adapter_only", "Adapter only", id="merge-adapter-only",
                tooltip="Export the adapter for vLLM --enable-lora instead of merging"),
        Binding("f", "toggle_force", "Replace existing", id="merge-force",
                tooltip="Replace an existing output once the new one is verified"),
        Binding("g", "toggle_gguf", "GGUF", id="merge-gguf", tooltip="Also write GGUF f16 and q8_0 files for llama.cpp and Ollama"),
        Binding("escape", "close", "Close", id="merge-close", tooltip="Close (a started merge goes on)"),
    ]

    class Planned(Message):
        def __init__(self, plan: MergePlan | None, error: str | None, exists: bool) -> None:
            super().__init__()
            self.plan = plan
            self.error = error
            self.exists = exists

    class Started(Message):
        def __init__(self, job_dir: Path | None, error: str | None) -> None:
            super().__init__()
            self.job_dir = job_dir
            self.error = error

    class Progressed(Message):
        def __init__(self, state: MergeState, status: JobStatus, result: dict | None = None) -> None:
            super().__init__()
            self.state = state
            self.status = status   # the follower's: crashed when the job died without a word
            self.result = result   # the job's result.json, once it ended

    def __init__(self, source: Path) -> None:
        super().__init__()
        self.source = Path(source)
        self.request = PlanRequest(str(source), None, False, False)
        self.plan: MergePlan | None = None
        self.job_dir: Path | None = None
        self.final: MergeState | None = None
        self.final_status: JobStatus | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="merge-box"):
            yield Label("Merge the adapter into a 16-bit model", id="merge-title")
            yield Static("Reading the adapter and the base model ...", id="merge-plan")
            yield ProgressBar(total=100, show_eta=False, id="merge-progress")
            yield Static("", id="merge-status")
            yield Static("", id="merge-result")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(ProgressBar).display = False
        self._make_plan(self.request)

    # --- planning (files only, but the demo model may need building: a thread) ------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="merge-plan")
    def _make_plan(self, req: PlanRequest) -> None:
        ctx = self.app.ctx
        try:
            plan = make_plan(req.source, dtype=req.dtype, adapter_only=req.adapter_only, force=req.force,
                             gguf=list(req.gguf), runs_dir=ctx.runs_dir, merged_dir=ctx.merged_dir)
            self.post_message(self.Planned(plan, None, False))
        except OutputExists as exc:
            self.post_message(self.Planned(None, str(exc), True))
        except Exception as exc:  # noqa: BLE001 - the engine's refusal, shown in its words
            self.post_message(self.Planned(None, str(exc), False))

    @on(Planned)
    def _on_planned(self, msg: Planned) -> None:
        self.plan = msg.plan
        box = self.query_one("#merge-plan", Static)
        status = self.query_one("#merge-status", Static)
        if msg.plan is None:
            box.update("")
            hint = "\nPress f to replace it (only once the new merge is complete and verified)." if msg.exists else ""
            status.update(f"[b red]Cannot merge:[/] {escape(msg.error or '')}{hint}")
            return
        rows = describe_merge_plan(msg.plan)
        if not msg.plan.adapter_only:
            rows = [replace(r, hint="d switches bf16/fp16") if r.label == "Dtype" else
                    replace(r, hint="g switches GGUF on/off") if r.label == "GGUF" else r for r in rows]
        box.update(rows_text(rows))
        status.update("Enter starts the merge as a background job (closing this dialog does not stop it). "
                      "It is verified before it is installed.")

    def _replan(self, **changes) -> None:
        if self.job_dir is not None:
            return
        self.request = replace(self.request, **changes)
        self._make_plan(self.request)

    def action_toggle_dtype(self) -> None:
        current = self.plan.dtype if self.plan else (self.request.dtype or "bf16")
        self._replan(dtype="fp16" if current == "bf16" else "bf16")

    def action_toggle_adapter_only(self) -> None:
        self._replan(adapter_only=not self.request.adapter_only)

    def action_toggle_gguf(self) -> None:
        self._replan(gguf=() if self.request.gguf else ("f16", "q8_0"))

    def action_toggle_force(self) -> None:
        self._replan(force=not self.request.force)

    # --- the job ----------------------------------------------------------------------------------
    def action_start(self) -> None:
        if self.plan is None or self.job_dir is not None:
            if self.plan is None:
                self.app.bell()
            return
        self.query_one("#merge-status", Static).update("Starting the merge job ...")
        self._start(self.plan)

    @work(thread=True, exclusive=True, exit_on_error=False, group="merge-start")
    def _start(self, plan: MergePlan) -> None:
        from medtui_engine.merge.launch import start_merge

        try:
            job_dir = start_merge(plan, self.app.ctx.workspace)
        except Exception as exc:  # noqa: BLE001 - shown in the dialog
            self.post_message(self.Started(None, str(exc)))
            return
        self.post_message(self.Started(job_dir, None))

    @on(Started)
    def _on_started(self, msg: Started) -> None:
        status = self.query_one("#merge-status", Static)
        if msg.job_dir is None:
            status.update(f"[b red]Could not start the merge:[/] {escape(msg.error or '')}")
            return
        self.job_dir = msg.job_dir
        bar = self.query_one(ProgressBar)
        bar.display = True
        status.update(f"Merging ... job {escape(str(msg.job_dir))}")
        self._follow(msg.job_dir)

    @work(thread=True, exclusive=True, exit_on_error=False, group="merge-follow")
    def _follow(self, job_dir: Path) -> None:
        from medtui_engine.jobs.follow import JobFollower

        follower = JobFollower(job_dir, "merge")
        worker = get_current_worker()
        while not worker.is_cancelled:
            follower.poll()
            if follower.done:
                self.post_message(self.Progressed(_snapshot(follower.state), follower.status, _read_result(job_dir)))
                return
            self.post_message(self.Progressed(_snapshot(follower.state), follower.status))
            time.sleep(POLL_SECONDS)

    @on(Progressed)
    def _on_progress(self, msg: Progressed) -> None:
        s = msg.state
        bar = self.query_one(ProgressBar)
        status = self.query_one("#merge-status", Static)
        progress = describe_merge_progress(s)
        if s.phase == "merge" and s.total:
            bar.update(total=100, progress=80 * s.fraction)
        elif s.phase == "verify":
            bar.update(total=100, progress=85)
        if progress is not None and not msg.status.ended:
            status.update(row_text(progress, label_width=8))
        if msg.status.ended:
            self.final, self.final_status = s, msg.status
            bar.update(total=100, progress=100)
            # the figures matter now: the plan gives way so they fit an 80x24 terminal
            self.query_one("#merge-plan", Static).display = False
            bar.display = False
            rows = describe_merge_result(s, msg.result, status=msg.status, job_dir=self.job_dir)
            self.query_one("#merge-result", Static).update(rows_text(rows))
            self.query_one("#merge-box").scroll_home(animate=False)
            # a behaviour warning (answers cut off) never stops the install: said beside the outcome
            warned = [r.label for r in rows if r.severity is Severity.WARNING]
            status.update(("[b green]Merged and verified.[/]" + (f" [b yellow]Installed with a warning: "
                                                                  f"{escape(', '.join(warned))} (below).[/]" if warned else ""))
                          if msg.status is JobStatus.FINISHED else "[b red]The merge failed.[/]")

    def action_close(self) -> None:
        self.dismiss(self.final.out if self.final and self.final_status is JobStatus.FINISHED else None)


def _snapshot(state: MergeState) -> MergeState:
    """An independent copy for the UI thread (the worker keeps folding into its own)."""
    return replace(state, verification=dict(state.verification))


def _read_result(job_dir: Path) -> dict | None:
    try:
        result = json.loads((job_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def open_merge_dialog(app: App, run_dir_or_adapter: Path) -> None:
    """Open the merge confirmation for a run directory or an adapter directory."""
    app.push_screen(MergeDialog(Path(run_dir_or_adapter)))
