"""Benchmarks that print numbers (never pass/fail). Each one says what it measures and on what.

  medtui bench dataset [--records N]    validate + measure a generated Chinese data set (CPU)
  medtui bench train OUT_DIR [...]      the product's job runner vs bare Unsloth / HF (GPU)
  medtui bench merge OUT_DIR [...]      merge + save of a 7B-shape model vs plain PEFT (GPU)
  medtui bench infer OUT_DIR [...]      decode tokens/s and time to first token (GPU)
  medtui bench eval OUT_DIR [...]       evaluation cases/minute, one at a time vs batched (GPU)
  medtui bench startup [--runs N]       the TUI's first frame, headless and in a terminal
  medtui bench live-view [...]          the live view on a 100,000-step history, keeping up, idle

The benchmarks are tools of the source tree, in its top-level benchmarks/ directory (each also runs
as ``python benchmarks/bench_NAME.py``); they are not part of an installed package. This entry runs
one in its own process, with this source tree first on the path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ..errors import UserError

BENCHES = {
    "dataset": "bench_dataset.py",
    "train": "bench_train.py",
    "merge": "bench_merge.py",
    "infer": "bench_infer.py",
    "eval": "bench_eval.py",
    "startup": "bench_startup.py",
    "live-view": "bench_live_view.py",
}
SOURCE_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = SOURCE_ROOT / "benchmarks"
NOT_HERE = (f"the benchmarks are tools of medtui's source tree (its benchmarks/ directory), not part of an "
            f"installed package; there is none beside this installation ({BENCH_DIR} is absent): run them from "
            f"a checkout of the source")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    if not BENCH_DIR.is_dir():
        parser.epilog = f"Not available here: {NOT_HERE}."
    parser.add_argument("which", choices=list(BENCHES), help="which benchmark")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own arguments (see its --help)")


def run(args: argparse.Namespace) -> int:
    script = BENCH_DIR / BENCHES[args.which]
    if not script.is_file():
        raise UserError(NOT_HERE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, str(script), *args.rest], env=env).returncode
