"""``medtui``: with no verb, the terminal UI; with a verb, the headless engine (``medtui check``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Verbs are known without importing the engine's command modules (they stay out of the TUI's start).
from medtui_engine.cli import VERBS


def _tui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medtui",
        description="medtui: the terminal UI. Verbs run headless: " + ", ".join(VERBS) + " (medtui VERB --help).",
    )
    p.add_argument("--workspace", metavar="DIR", help="workspace directory")
    p.add_argument("--config", metavar="FILE", help="settings file")
    p.add_argument("--no-mouse", action="store_true", help="do not capture the mouse (plain SSH terminals)")
    p.add_argument("--screen", metavar="NAME", help="screen to open first (environment, dataset, train, runs, console)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in VERBS:
        from medtui_engine.cli import main as engine_main

        return engine_main(argv)
    args = _tui_parser().parse_args(argv)
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
