"""``medtui``: with no verb, the terminal UI; with a verb, the headless engine (``medtui check``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Verbs are known without importing the engine's command modules (they stay out of the TUI's start).
from medtui_engine.cli import VERBS, add_global_options


def _tui_parser() -> argparse.ArgumentParser:
    verbs = "\n".join(f"  {verb:<9} {what}" for verb, what in VERBS.items())
    p = argparse.ArgumentParser(
        prog="medtui",
        usage="medtui [OPTIONS]                 the terminal UI\n       medtui [OPTIONS] VERB [ARGS]     headless",
        description="medtui: fine-tune a Qwen model into a clinical reasoning assistant, offline. "
        "With no verb, the terminal UI; with a verb, the headless engine.",
        epilog=f"verbs (medtui VERB --help):\n{verbs}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_global_options(p, top_level=True)
    ui = p.add_argument_group("the terminal UI")
    ui.add_argument("--no-mouse", action="store_true", help="do not capture the mouse (plain SSH terminals)")
    ui.add_argument("--screen", metavar="NAME", help="screen to open first (environment, dataset, train, runs, console)")
    ui.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def verb_index(argv: Sequence[str], parser: argparse.ArgumentParser) -> int | None:
    """Where the verb is in ``argv`` (options such as ``--workspace DIR`` may come first), or None."""
    takes_value = {flag for a in parser._actions if a.nargs != 0 for flag in a.option_strings}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return None
        if arg in takes_value:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return i if arg in VERBS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _tui_parser()
    if verb_index(argv, parser) is not None:
        from medtui_engine.cli import main as engine_main

        return engine_main(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        word = next((a for a in extra if not a.startswith("-")), None)
        if word is not None:
            parser.error(f"{word!r} is not a verb; the verbs are {', '.join(VERBS)}")
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    for flag in ("json", "debug"):
        if getattr(args, flag):
            parser.error(f"--{flag} is for the verbs (e.g. medtui runs list --{flag}); the terminal UI does not take it")
    if args.version:
        from medtui_engine import __version__

        print(f"medtui {__version__}")
        return 0
    from medtui_engine.errors import UserError

    from .app import MedtuiApp

    try:
        app = MedtuiApp(mouse=not args.no_mouse, start_mode=args.screen, workspace=args.workspace, config=args.config)
    except UserError as exc:
        print(f"medtui: {exc}", file=sys.stderr)
        return 2
    if args.screen and args.screen not in app.MODES:
        print(f"medtui: no screen called {args.screen!r}; choose one of {', '.join(app.MODES)}", file=sys.stderr)
        return 2
    app.run(mouse=app.mouse_enabled and app.ctx.settings.mouse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
