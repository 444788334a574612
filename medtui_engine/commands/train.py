"""Start a LoRA fine-tune as a detached job.

The job runs in its own session: closing this terminal or dropping SSH does not stop it. Without
--detach this command follows the job's progress and exits with its outcome (0 when it finished
and saved the adapter, 1 when it failed, crashed or was stopped); Ctrl-C only detaches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_common, print_json
from ..errors import EXIT_FAILED, EXIT_OK
from ..train.launch import JOB_MODULE  # noqa: F401 - kept importable from here (the TUI uses it)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options are generated from the settings declared on TrainSpec (one per field that has a flag)."""
    add_setting_arguments(p)
    p.add_argument("--name", help="a short name for the run id (default: the model's name)")
    p.add_argument("--detach", action="store_true", help="start the job and return at once")
    p.add_argument("--force", action="store_true", help="start even if a medtui job is training on the same GPU")
    add_common(p)


_ARG_TYPES = {"int": int, "float": float, "number": float, "text": str, "list": str, "choice": None}


def add_setting_arguments(p: argparse.ArgumentParser) -> None:
    """One option per TrainSpec setting with a flag, in the sections of GROUPS; the option's dest is the
    field's name, its default the field's default."""
    from ..train.spec import GROUPS, SETTINGS, default_value

    sections = {g: (p if g == "" else p.add_argument_group(g)) for g in GROUPS}
    for group in GROUPS:
        # the spec's order, required options first (the usage line starts with --data FILE)
        for name, s in sorted(SETTINGS.items(), key=lambda item: not item[1].cli_required):
            if s.flag is None or s.group != group:
                continue
            kw: dict = {"dest": name, "help": argparse.SUPPRESS if s.hidden else (s.help or None)}
            default = default_value(name)
            if s.kind == "bool":
                # a negative flag turns a setting that is on by default off (--no-4bit), and vice versa
                kw.update(action=_GivenFlag, const=not s.negative, default=default)
                if s.also:  # the other way round too (--4bit): the recipe keeps what was asked
                    sections[group].add_argument(s.also, dest=name, action=_GivenFlag, const=s.negative,
                                                 default=default, help=argparse.SUPPRESS)
            else:
                kw["action"] = _Given
                if s.cli_required:
                    kw["required"] = True
                else:
                    kw["default"] = s.format(default) if s.kind == "list" else default
                if s.choices:
                    kw["choices"] = s.choices
                if _ARG_TYPES[s.kind] not in (None, str):
                    kw["type"] = _ARG_TYPES[s.kind]
                if s.metavar:
                    kw["metavar"] = s.metavar
            sections[group].add_argument(s.flag, **kw)


GIVEN = "_given_settings"   # the namespace attribute listing the settings given on the command line


def _note_given(namespace, dest: str) -> None:
    given = list(getattr(namespace, GIVEN, None) or [])
    if dest not in given:
        given.append(dest)
    setattr(namespace, GIVEN, given)


class _Given(argparse._StoreAction):
    """Store the value and note that the user gave this setting (the auto recipe keeps it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _note_given(namespace, self.dest)


class _GivenFlag(argparse._StoreConstAction):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const)
        _note_given(namespace, self.dest)


def spec_from_args(args) -> object:
    """The TrainSpec the parsed options stand for (fields without a flag keep their defaults); the
    settings given on the command line are listed in ``explicit``."""
    from ..train.spec import SETTINGS, TrainSpec

    values = {}
    for name, s in SETTINGS.items():
        if s.flag is None:
            continue
        value = getattr(args, name)
        values[name] = s.parse(value) if s.kind in ("list", "number") else value
    spec = TrainSpec(**values)
    spec.explicit = [n for n in getattr(args, GIVEN, None) or [] if n in SETTINGS]
    return spec


def check_gpu_free(runs_dir: Path, force: bool) -> tuple[dict, list[str]]:
    """See :func:`medtui_engine.train.launch.pick_gpu`."""
    from ..train.launch import pick_gpu

    return pick_gpu(runs_dir, force)


def attach(run_dir: Path, json_mode: bool = False, past_seq: int = -1) -> int:
    """Follow the job until it ends; Ctrl-C detaches (the job keeps running)."""
    import json
    import signal

    from ..jobs.describe import describe_event, describe_run_status, event_line
    from ..jobs.follow import JobFollower
    from ..jobs.status import JobStatus
    from ..rows import sentence

    run_id = run_dir.name
    follower = JobFollower(run_dir, "train", past_seq=past_seq)
    # Ctrl-C must detach even when this process was started with SIGINT ignored (inherited from a parent
    # that ignores it: a script's background job, or a library's worker setup in the calling process)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for ev in follower.follow():
            if json_mode:
                print(json.dumps(ev, ensure_ascii=False), flush=True)
            elif row := describe_event(ev, follower.state):
                print(event_line(row), flush=True)
    except KeyboardInterrupt:
        print(f"\ndetached: the job keeps running. Re-attach with `medtui runs tail {run_id}`; "
              f"stop it with `medtui runs stop {run_id}`.", file=sys.stderr)
        return EXIT_OK
    finally:
        signal.signal(signal.SIGINT, previous)
    if follower.status is JobStatus.FINISHED:
        return EXIT_OK
    for row in describe_run_status(follower.status, follower.state, run_dir=run_dir, notice=False):
        print(f"run {run_id} {sentence(row)}", file=sys.stderr)
    return EXIT_FAILED


def run(args) -> int:
    from ..context import load_context
    from ..errors import UserError
    from ..train.launch import start_run
    from ..train.spec import SpecError

    ctx = load_context(args.workspace, args.config)
    spec = spec_from_args(args)
    try:
        spec.validate(check_files=True)
    except SpecError as exc:  # the settings' messages, with the flag after each label
        raise UserError(exc.render(flags=True)) from None
    from ..train.launch import prepare_spec
    from ..train.recipe import resolve_recipe

    recipe = resolve_recipe(prepare_spec(spec))   # shown before the job starts; start_run keeps it
    if not args.json:
        print(recipe.text())
    started = start_run(ctx.runs_dir, spec, force=args.force, name=args.name)
    run_dir, pid, warnings = started.run_dir, started.pid, list(started.warnings)
    if args.json and args.detach:
        print_json({"run_id": run_dir.name, "run_dir": str(run_dir), "pid": pid, "warnings": warnings,
                    "recipe": recipe.as_dict()})
        return EXIT_OK
    for w in warnings:
        print(w, file=sys.stderr)
    if not args.json:
        print(f"run {run_dir.name} started (pid {pid}); its files: {run_dir}")
    if args.detach:
        print(f"follow it with `medtui runs tail {run_dir.name}`; stop it with `medtui runs stop {run_dir.name}`")
        return EXIT_OK
    if not args.json:
        print("following its progress (Ctrl-C detaches; the job keeps running)")
    return attach(run_dir, json_mode=args.json)
