"""What a user can do to a run from any screen: start, resume, stop (asked first), merge, open in the
console. Each goes through the engine, as the CLI does, and reports in the app's notifications with
the engine's own words. The live view and the Runs screen both call these.
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


def resume_training(runs_dir: Path, run_dir: Path, force: bool = False) -> tuple[str, ...]:
    """Resume a stopped / failed / crashed run from its newest checkpoint; returns the warnings."""
    from medtui_engine.train.launch import resume_run

    started = resume_run(runs_dir, run_dir, force=force)
    return started.warnings


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


def do_resume(app, run_dir: Path, after: Callable[[], None] | None = None) -> None:
    run_dir = Path(run_dir)
    try:
        warnings = resume_training(app.ctx.runs_dir, run_dir)
    except Exception as exc:  # the engine's refusal (still running, finished, GPU busy): its words
        app.notify(f"Cannot resume {run_dir.name}: {exc}", severity="warning", timeout=8)
        return
    for w in warnings:
        app.notify(w, severity="warning", timeout=8)
    app.notify(f"Resuming {run_dir.name} from its newest checkpoint")
    if after:
        after()


def do_merge(app, run_dir: Path) -> None:
    from .widgets.merge_dialog import open_merge_dialog  # imported when first used: app start stays quick

    open_merge_dialog(app, Path(run_dir))


def do_console(app, run_dir: Path) -> None:
    app.goto("console", run=str(run_dir))


def run_action_bindings(id_prefix: str, which: str) -> list[Binding]:
    """The keys of :class:`RunActions`, for a view whose chosen run is ``which`` ("the run", "this run")."""
    return [
        Binding("s", "stop", "Stop", id=f"{id_prefix}-stop", tooltip=f"Stop {which} gracefully (asks first)"),
        Binding("r", "resume", "Resume", id=f"{id_prefix}-resume", tooltip=f"Resume {which} from its newest checkpoint"),
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
            do_resume(self.app, rd, after=self.after_run_action)

    def action_merge(self) -> None:
        if (rd := self.chosen_run()) is not None:
            do_merge(self.app, rd)

    def action_console(self) -> None:
        if (rd := self.chosen_run()) is not None:
            do_console(self.app, rd)
