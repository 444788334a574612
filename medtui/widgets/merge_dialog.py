"""The merge confirmation: what will be merged, where, in which dtype, the disk it needs, then the
detached merge job's progress and its verification, in one modal.

The plan is read from files (no torch) in a worker thread; the job runs in its own process, so
closing this dialog or the TUI does not stop it. Events reach the dialog through a polling worker
that posts immutable snapshots; widgets are only touched on the UI thread.
"""

from __future__ import annotations

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

from medtui_engine.merge.events import MergeState, apply_merge_event
from medtui_engine.merge.plan import MergePlan, OutputExists, human_bytes, make_plan

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class PlanRequest:
    source: str
    dtype: str | None
    adapter_only: bool
    force: bool


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
        def __init__(self, state: MergeState) -> None:
            super().__init__()
            self.state = state

    def __init__(self, source: Path) -> None:
        super().__init__()
        self.source = Path(source)
        self.request = PlanRequest(str(source), None, False, False)
        self.plan: MergePlan | None = None
        self.job_dir: Path | None = None
        self.final: MergeState | None = None

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
                             runs_dir=ctx.runs_dir, merged_dir=ctx.merged_dir)
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
        p = msg.plan
        rows = [
            ("Base model", f"{escape(p.base_dir)}  [dim]({escape(p.base_label)}, {p.base_architecture}, {p.base_params / 1e9:.2f} B params)[/]"),
            ("Adapter", f"{escape(p.adapter_dir)}  [dim]({p.adapter_kind}{', run ' + p.run_id if p.run_id else ''}, r={p.lora.get('r')})[/]"),
            ("Output", escape(p.out_dir) + ("  [yellow](replaces the existing one)[/]" if p.out_exists else "")),
            ("Writes", "adapter only (serve with vLLM --enable-lora)" if p.adapter_only else
             f"merged {p.dtype} weights (safetensors), tokenizer, chat template, generation config, medtui.json"),
            ("Dtype", p.dtype + ("" if p.adapter_only else "  [dim](d switches bf16/fp16)[/]")),
            ("Disk", f"needs about {human_bytes(p.disk_needed)}, {human_bytes(p.disk_free)} free"),
            ("Template", p.template),
        ]
        if not p.adapter_only:
            rows.append(("Method", escape(p.method_reason)))
        if p.trained_4bit and not p.adapter_only:
            rows.append(("Note", "the run asked for a 4-bit load; the merge reads the 16-bit base weights"))
        box.update("\n".join(f"[b]{k:<11}[/]{v}" for k, v in rows))
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
        from medtui_engine.commands.merge import start_merge

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
        from medtui_engine.runs.jobs import job_alive
        from medtui_engine.runs.tailer import EventTailer

        tailer = EventTailer(job_dir / "events.jsonl")
        state = MergeState()
        dead = 0
        worker = get_current_worker()
        while not worker.is_cancelled:
            for ev in tailer.read_new():
                apply_merge_event(state, ev)
            if not state.terminal and not job_alive(job_dir):
                dead += 1
                if dead > 3:
                    state.status = "failed"
                    state.error = f"the merge job died without finishing (see {job_dir / 'stdout.log'})"
            self.post_message(self.Progressed(_snapshot(state)))
            if state.terminal:
                return
            time.sleep(POLL_SECONDS)

    @on(Progressed)
    def _on_progress(self, msg: Progressed) -> None:
        s = msg.state
        bar = self.query_one(ProgressBar)
        status = self.query_one("#merge-status", Static)
        if s.phase == "merge" and s.total:
            bar.update(total=100, progress=80 * s.fraction)
            status.update(f"Merging: {int(s.done)}/{int(s.total)} tensors, {s.bytes_written / 2**30:.2f} GiB written")
        elif s.phase == "verify":
            bar.update(total=100, progress=85)
            status.update("Verifying: loading the merged model with plain transformers and comparing it with base + adapter ...")
        if s.terminal:
            self.final = s
            bar.update(total=100, progress=100)
            # the figures matter now: the plan gives way so they fit an 80x24 terminal
            self.query_one("#merge-plan", Static).display = False
            bar.display = False
            self.query_one("#merge-result", Static).update(self._result_text(s))
            self.query_one("#merge-box").scroll_home(animate=False)
            status.update("[b green]Merged and verified.[/]" if s.status == "finished" else "[b red]The merge failed.[/]")

    def _result_text(self, s: MergeState) -> str:
        if s.status != "finished":
            return f"[b red]{escape(s.error or 'unknown error')}[/]\nNothing was installed at the output; details in {escape(str(self.job_dir))}/stdout.log"
        v = s.verification or {}
        lines = [f"[b]Output[/]      {escape(s.out)}"]
        if v.get("top1_agreement") is not None:
            dec = v.get("top1_agreement_decisive")
            lines.append(f"[b]Logits[/]      max |diff| vs base+adapter {v.get('max_abs_logit_diff')} (the adapter itself moves "
                         f"them by up to {v.get('adapter_effect_max_abs_logit')}); top-1 agreement {v.get('top1_agreement'):.2%}"
                         + (f", {dec:.0%} at {v.get('decisive_positions')} decisive positions" if dec is not None else ""))
            g = v.get("greedy") or {}
            forced = all(h.get("halted") for h in v.get("forced_eos") or [])
            natural = f"yes, after {g.get('eos_at')} tokens" if g.get("reached_eos") else f"no, within {g.get('max_new_tokens')}"
            note = "" if v.get("natural_eos_required") else " [dim](random-weight demo: not required)[/]"
            lines.append(f"[b]Stops[/]       EOS ids {v.get('generation_eos_ids')}; forced EOS halts: {'yes' if forced else 'NO'}; "
                         f"greedy reached EOS by itself: {natural}{note}")
            lines.append("[b]Loads[/]       with plain transformers, no peft/unsloth: "
                         f"{'yes' if (v.get('checks') or {}).get('loads_without_peft_unsloth') else 'NO'}")
        lines.append(f"[b]Serve[/]       {escape(s.serve_command or '')}")
        return "\n".join(lines)

    def action_close(self) -> None:
        self.dismiss(self.final.out if self.final and self.final.status == "finished" else None)


def _snapshot(state: MergeState) -> MergeState:
    """An independent copy for the UI thread (the worker keeps folding into its own)."""
    return replace(state, verification=dict(state.verification))


def open_merge_dialog(app: App, run_dir_or_adapter: Path) -> None:
    """Open the merge confirmation for a run directory or an adapter directory."""
    app.push_screen(MergeDialog(Path(run_dir_or_adapter)))
