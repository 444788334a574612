"""What a user can do to a run from any screen: start, resume (with these settings: a dialog), stop
(asked first), merge, open in the console. Each goes through the engine, as the CLI does, and reports
in the app's notifications with the engine's own words. The live view and the Runs screen both call these.

Resume (r) continues at once, except after running out of GPU memory: the same settings would fail
again, so it opens "resume with these settings" pre-filled with the failure's advice. R opens that
dialog for any run that can resume.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.binding import Binding

from medtui_engine.train.spec import TrainSpec

from .widgets.confirm import Confirm


def launch_training(runs_dir: Path, spec: TrainSpec, force: bool = False) -> tuple[Path, tuple[str, ...]]:
    """Start a detached training job through the engine (as ``medtui train --detach`` does):
    (run directory, warnings). Raises UserError with the engine's words."""
    from medtui_engine.train.launch import start_run

    started = start_run(runs_dir, spec, force=force)
    return started.run_dir, started.warnings


def resume_training(runs_dir: Path, run_dir: Path, force: bool = False, settings: dict | None = None):
    """Resume a stopped / failed / crashed run from its newest checkpoint, with ``settings`` changed
    (see ``medtui runs resume``); returns the engine's Started (warnings, change)."""
    from medtui_engine.train.launch import resume_run

    return resume_run(runs_dir, run_dir, settings, force=force)


def confirm_stop(run_id: str) -> Confirm:
    """The question asked before a run is stopped: what stopping does, and how to undo it."""
    return Confirm(f"Stop run {run_id}?",
                   "The job finishes its current step, saves a checkpoint and stops. "
                   "You can resume it later from that checkpoint (key r).",
                   yes="Stop", no="Keep training", yes_help="Stop the run", no_help="Keep training")


def ask_stop(app, run_dir: Path, after: Callable[[], None] | None = None) -> None:
    """Confirm, then ask the job to stop gracefully (STOP file + SIGTERM)."""
    from medtui_engine.runs.jobs import job_alive, request_stop

    run_dir = Path(run_dir)
    if not job_alive(run_dir):
        app.notify(f"{run_dir.name} is not running: nothing to stop", severity="warning")
        return

    def done(yes: bool | None) -> None:
        if not yes:
            return
        try:
            request_stop(run_dir)
        except OSError as exc:
            app.notify(f"could not ask {run_dir.name} to stop: {exc}", severity="error")
            return
        app.notify(f"Stopping {run_dir.name}: it saves a checkpoint first")
        if after:
            after()

    app.push_screen(confirm_stop(run_dir.name), done)


def do_resume(app, run_dir: Path, after: Callable[[], None] | None = None, settings: dict | None = None) -> None:
    run_dir = Path(run_dir)
    try:
        started = resume_training(app.ctx.runs_dir, run_dir, settings=settings)
    except Exception as exc:  # the engine's refusal (still running, finished, GPU busy): its words
        app.notify(f"Cannot resume {run_dir.name}: {exc}", severity="warning", timeout=8)
        return
    for w in started.warnings:
        app.notify(w, severity="warning", timeout=8)
    where = f"from {started.resumed_from}" if started.resumed_from else "from the start (no checkpoint was saved)"
    app.notify(f"Resuming {run_dir.name} {where}" + (f" with {started.change}" if started.change else ""))
    if after:
        after()


def resume_dialog_for(run_dir: Path):
    """The "resume with these settings" dialog for a run that can resume (pre-filled with its OOM
    advice, else its settings in force), or the engine's reason why it cannot (a str)."""
    from medtui_engine.jobs.status import JobStatus
    from medtui_engine.runs.store import load_run, newest_checkpoint
    from medtui_engine.train.ddp import plan_for
    from medtui_engine.train.resume import effective_spec

    from .widgets.resume_dialog import ResumeDialog

    run_dir = Path(run_dir)
    _, state = load_run(run_dir)
    if JobStatus(state.status).active:
        return f"{run_dir.name} is still {state.status}"
    if state.status == JobStatus.FINISHED:
        return f"{run_dir.name} already finished; start a new run to train more"
    try:
        spec = effective_spec(run_dir)
    except (OSError, ValueError, TypeError) as exc:
        return f"{run_dir.name}: spec.json cannot be read back ({exc})"
    ckpt = newest_checkpoint(run_dir)
    where = (f"It continues from the checkpoint of step {ckpt.name.rsplit('-', 1)[-1]}" if ckpt
             else "No checkpoint was saved: it starts again from step 0")
    batch = spec.micro_batch * spec.grad_accum
    advice = (state.advice or {}) if state.status == JobStatus.FAILED else {}
    if advice.get("settings"):
        body = (f"It failed at step {state.step}: {state.error}.\n{where}; the effective batch stays {batch} "
                "samples per step. The fields hold the advised setting.")
    else:
        body = f"It is {state.status} at step {state.step}. {where}; the effective batch stays {batch} samples per step."
    return ResumeDialog(run_dir.name, spec, advice.get("settings") or {}, body, plan_for(spec).world)


def ask_resume_with(app, run_dir: Path, after: Callable[[], None] | None = None) -> None:
    """Open "resume with these settings"; resume with what the user confirms."""
    run_dir = Path(run_dir)
    dialog = resume_dialog_for(run_dir)
    if isinstance(dialog, str):
        app.notify(f"Cannot resume {dialog}", severity="warning", timeout=8)
        return

    def done(settings: dict | None) -> None:
        if settings is not None:
            do_resume(app, run_dir, after=after, settings=settings)

    app.push_screen(dialog, done)


def ran_out_of_memory(run_dir: Path) -> bool:
    """The run failed out of GPU memory and its failure advised other settings."""
    from medtui_engine.jobs.status import JobStatus
    from medtui_engine.runs.store import load_run

    _, state = load_run(Path(run_dir))
    return state.status == JobStatus.FAILED and bool((state.advice or {}).get("settings"))


def do_merge(app, run_dir: Path) -> None:
    from .widgets.merge_dialog import open_merge_dialog  # imported when first used: app start stays quick

    open_merge_dialog(app, Path(run_dir))


def do_console(app, run_dir: Path) -> None:
    app.goto("console", run=str(run_dir))


def run_action_bindings(id_prefix: str, which: str) -> list[Binding]:
    """The keys of :class:`RunActions`, for a view whose chosen run is ``which`` ("the run", "this run")."""
    return [
        Binding("s", "stop", "Stop", id=f"{id_prefix}-stop", tooltip=f"Stop {which} gracefully (asks first)"),
        Binding("r", "resume", "Resume", id=f"{id_prefix}-resume",
                tooltip=f"Resume {which} from its newest checkpoint (after running out of memory: with the advised "
                        "settings, shown first); R: with other settings"),
        # off the footer (it is full at 80 columns); r's tooltip names it
        Binding("R", "resume_with", "Resume with...", id=f"{id_prefix}-resume-with", show=False,
                tooltip=f"Resume {which} with other settings: micro-batch, accumulation, max length, checkpointing"),
        Binding("m", "merge", "Merge", id=f"{id_prefix}-merge", tooltip=f"Merge {which}'s adapter into the base model"),
        Binding("o", "console", "Console", id=f"{id_prefix}-console",
                tooltip=f"Open the console with {which}'s adapter"),
    ]


class RunActions:
    """The run keys' actions (stop, resume, merge, console) for a view with a chosen run: the live
    view and the Runs screen mix this in, say which run is chosen (``chosen_run``, which tells the
    user when there is none) and what to refresh after a stop or resume (``after_run_action``)."""

    def chosen_run(self) -> Path | None:
        raise NotImplementedError

    def after_run_action(self) -> None:
        """Called once a stop or resume was asked for (poll now rather than at the next tick)."""

    def action_stop(self) -> None:
        if (rd := self.chosen_run()) is not None:
            ask_stop(self.app, rd, after=self.after_run_action)

    def action_resume(self) -> None:
        if (rd := self.chosen_run()) is not None:
            if ran_out_of_memory(rd):   # the same settings would fail again: show the advised ones first
                ask_resume_with(self.app, rd, after=self.after_run_action)
            else:
                do_resume(self.app, rd, after=self.after_run_action)

    def action_resume_with(self) -> None:
        if (rd := self.chosen_run()) is not None:
            ask_resume_with(self.app, rd, after=self.after_run_action)

    def action_merge(self) -> None:
        if (rd := self.chosen_run()) is not None:
            do_merge(self.app, rd)

    def action_console(self) -> None:
        if (rd := self.chosen_run()) is not None:
            do_console(self.app, rd)
