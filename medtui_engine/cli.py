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
    "eval": "evaluate a tuned model against its base on reference cases",
    "bench": "benchmarks that print numbers",
    "demo": "build (or rebuild) the embedded demo model and show where it is",
}


def available_verbs() -> list[str]:
    return [v for v in VERBS if importlib.util.find_spec(f"medtui_engine.commands.{v}") is not None]


def add_common(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    """Options every verb takes."""
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--workspace", metavar="DIR", help="workspace directory (default: $MEDTUI_WORKSPACE, the settings file, or the user data dir)")
    parser.add_argument("--config", metavar="FILE", help="settings file (default: $MEDTUI_CONFIG or the user config dir)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medtui",
        description="medtui: fine-tune a Qwen model into a clinical reasoning assistant, offline. "
        "Run with no verb for the terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"medtui {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in available_verbs():
        module = importlib.import_module(f"medtui_engine.commands.{verb}")
        p = sub.add_parser(verb, help=VERBS[verb], description=(module.__doc__ or VERBS[verb]).strip())
        module.add_arguments(p)
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
