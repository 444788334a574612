"""The headless engine's command line: ``medtui VERB ...`` (the TUI is ``medtui`` with no verb).

Each verb lives in ``medtui_engine.commands.<verb>`` with ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import nothing heavy at module scope.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, UserError

# verb -> one-line help. The order is the order of the README and of `medtui --help`.
VERBS: dict[str, str] = {
    "check": "check the machine: GPUs, drivers, libraries, disk, and whether a training setting fits",
    "validate": "load, map, validate and measure a data set of cases",
    "redact": "write a copy of a data file with possible patient identifiers replaced by placeholders",
    "train": "start a LoRA fine-tune (detached job)",
    "runs": "list, show, tail, stop or resume training runs",
    "merge": "merge a run's adapter into a 16-bit model, verified",
    "ask": "ask a model a case; compare base and tuned",
    "eval": "evaluate a tuned model against its base on reference cases (detached job; stop, resume)",
    "review": "blinded clinician review of an evaluation: export a pack, import the filled CSV",
    "probe": "probe a model for memorization: planted canaries, identifiers from its training rows",
    "bench": "benchmarks that print numbers",
    "demo": "build (or rebuild) the embedded demo model and show where it is",
}


def available_verbs() -> list[str]:
    return [v for v in VERBS if importlib.util.find_spec(f"medtui_engine.commands.{v}") is not None]


# The options every verb takes. Each is accepted before or after the verb (`medtui --workspace DIR runs list`
# and `medtui runs list --workspace DIR`); given on both sides, the one after the verb wins.
GLOBAL_OPTIONS: dict[str, dict] = {
    "--workspace": {"metavar": "DIR", "help": "workspace directory (default: $MEDTUI_WORKSPACE, the settings file, or the user data dir)"},
    "--config": {"metavar": "FILE", "help": "settings file (default: $MEDTUI_CONFIG or the user config dir)"},
    "--json": {"action": "store_true", "help": "machine-readable output"},
    "--debug": {"action": "store_true", "help": "show tracebacks of internal errors"},
}
GLOBAL_OPTIONS_TITLE = "global options (before or after the verb; after it wins)"


def add_global_options(parser: argparse.ArgumentParser, *, top_level: bool = False, json_flag: bool = True,
                       hidden: bool = False) -> None:
    """Add the global options that ``parser`` does not have yet (``hidden``: accepted, not in its help).

    On the top-level parser they carry the defaults. After a verb their default is SUPPRESS: one given
    only before the verb is then kept, and one given after it replaces the value from before.
    """
    target = parser.add_argument_group(GLOBAL_OPTIONS_TITLE) if top_level else parser
    for flag, kw in GLOBAL_OPTIONS.items():
        if (flag == "--json" and not json_flag) or flag in parser._option_string_actions:
            continue
        default = (False if kw.get("action") == "store_true" else None) if top_level else argparse.SUPPRESS
        target.add_argument(flag, default=default, **{**kw, **({"help": argparse.SUPPRESS} if hidden else {})})


def add_common(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    """Options every verb takes (also accepted before the verb: see GLOBAL_OPTIONS)."""
    add_global_options(parser, json_flag=json_flag)


def _add_global_options_below(parser: argparse.ArgumentParser) -> None:
    """A verb's parser and each of its sub-parsers (``runs --json list``) accept the global options; where the
    verb did not add them itself (with add_common), they are accepted without being listed in its help."""
    add_global_options(parser, hidden=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_global_options_below(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medtui",
        description="medtui: fine-tune a Qwen model into a clinical reasoning assistant, offline. "
        "Run with no verb for the terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"medtui {__version__}")
    add_global_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in available_verbs():
        module = importlib.import_module(f"medtui_engine.commands.{verb}")
        p = sub.add_parser(verb, help=VERBS[verb], description=(module.__doc__ or VERBS[verb]).strip())
        module.add_arguments(p)
        _add_global_options_below(p)
    return parser


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def _crash_log(exc: BaseException) -> Path | None:
    from .paths import home_dir

    try:
        path = home_dir() / "crash.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return EXIT_USAGE
    module = importlib.import_module(f"medtui_engine.commands.{args.verb}")
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"medtui {args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"medtui {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug, not a user mistake: one line here, the details in the log
        if getattr(args, "debug", False):
            raise
        where = _crash_log(exc)
        print(f"medtui {args.verb}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if where:
            print(f"  details were written to {where} (run with --debug to see them here)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
