"""Benchmarks that print numbers (never pass/fail). Each one says what it measures and on what.

  medtui bench dataset [--records N]    validate + measure a generated Chinese data set (CPU)
  medtui bench train OUT_DIR [...]      the product's job runner vs bare Unsloth / HF (GPU)
  medtui bench merge OUT_DIR [...]      merge + save of a 7B-shape model vs plain PEFT (GPU)
  medtui bench infer OUT_DIR [...]      decode tokens/s and time to first token (GPU)

The TUI's own benchmarks (first frame, rendering a long history) are ``python -m medtui.bench_startup``
and ``python -m medtui.bench``: the engine does not import the TUI.
"""

from __future__ import annotations

import argparse
import importlib

from ..errors import UserError

BENCHES = {
    "dataset": "medtui_engine.bench_dataset",
    "train": "medtui_engine.bench_train",
    "merge": "medtui_engine.bench_merge",
    "infer": "medtui_engine.bench_infer",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("which", choices=sorted(BENCHES), help="which benchmark")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own arguments (see its --help)")


def run(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(BENCHES[args.which])
    except ModuleNotFoundError as exc:
        raise UserError(f"the {args.which} benchmark is not available in this installation ({exc})") from None
    return int(module.main(list(args.rest)) or 0)
