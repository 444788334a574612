"""Build (or rebuild) the embedded demo model: a tiny Qwen3 with random weights and the real Qwen
tokenizer. Its answers are noise; it exists so every screen and verb works offline."""

from __future__ import annotations

import argparse

from ..cli import add_common, print_json
from ..demo import DEMO_LABEL, ensure_demo_model
from ..paths import project_data_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rebuild", action="store_true", help="build it again even if cached")
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    path = ensure_demo_model(rebuild=args.rebuild)
    data = project_data_dir()
    info = {"model": str(path), "label": DEMO_LABEL, "data": str(data) if data.exists() else None}
    if args.json:
        print_json(info)
    else:
        print(f"demo model ({DEMO_LABEL}): {path}")
        if info["data"]:
            print(f"demo data: {data}")
    return 0
