"""Check the machine: GPUs (NVML), torch and CUDA, the training libraries, disk, RAM, and whether a
training setting fits in GPU memory. Every line gets a verdict (ok / info / warning / problem) and
the fix in words. Exit 0 unless a problem is found (exit 1)."""

from __future__ import annotations

import argparse
import sys

from ..cli import add_common, print_json
from ..context import load_context
from ..errors import EXIT_FAILED, EXIT_OK, UserError

MARK = {"ok": "ok", "info": "--", "warning": "WARN", "problem": "FAIL"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fit = parser.add_argument_group("will it fit (with --model)")
    fit.add_argument("--model", metavar="DIR|demo", help="estimate peak GPU memory for training this model, and check "
                     "that its generation config, tokenizer and template agree on the tokens that end an answer")
    fit.add_argument("--bits", type=int, choices=(4, 16), default=4, help="4-bit (QLoRA) or 16-bit base weights (default 4)")
    fit.add_argument("--seq", type=int, default=2048, metavar="N", help="max sequence length (default 2048)")
    fit.add_argument("--batch", type=int, default=1, metavar="N", help="per-device micro-batch (default 1)")
    fit.add_argument("--rank", type=int, default=32, metavar="R", help="LoRA rank (default 32)")
    fit.add_argument("--backend", choices=("unsloth", "hf"), default="unsloth", help="training backend (default unsloth)")
    fit.add_argument("--no-gradient-checkpointing", action="store_true")
    fit.add_argument("--gpu", type=int, default=0, metavar="INDEX", help="GPU to compare with (default 0)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for each library probe")
    proof = parser.add_argument_group("offline proof")
    proof.add_argument("--offline-proof", action="store_true",
                       help="instead of the checks: run a real training step and a generation (demo model, CPU or GPU) "
                            "with networking removed, and report the connection attempts seen")
    proof.add_argument("--proof-method", choices=("auto", "namespace", "refuse"), default="auto",
                       help="auto: a network namespace without interfaces where the system allows one, else every "
                            "socket refused (default auto)")
    add_common(parser)


def make_fit(args: argparse.Namespace):
    if not args.model:
        return None
    from ..demo import resolve_model
    from ..fit import estimate_fit
    from ..vram import TrainSetting

    for name in ("seq", "batch", "rank"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    try:
        model_dir = resolve_model(args.model)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    setting = TrainSetting(args.bits, args.seq, args.batch, args.rank, not args.no_gradient_checkpointing, args.backend)

    def fit(nvml):
        est = estimate_fit(model_dir, setting, nvml, args.gpu)
        return est.info, est.line

    return fit


def offline_proof(args: argparse.Namespace) -> int:
    from ..privacy.offline_proof import run_proof
    from ..rows import format_rows

    if not args.json:
        print("medtui check --offline-proof: training one step and generating with networking removed ...",
              file=sys.stderr, flush=True)
    result = run_proof(args.proof_method, timeout=max(args.timeout, 60.0) * 3)
    if args.json:
        print_json(result.as_dict())
    else:
        print(format_rows(result.rows))
        print(f"\nverdict: {'ok' if result.ok else 'problem'}: "
              + (f"{result.attempts} connection attempts; trained and generated offline "
                 f"({result.elapsed_s:.0f} s)" if result.ok else "the offline proof did not pass"))
    return EXIT_OK if result.ok else EXIT_FAILED


def make_stop_lines(args: argparse.Namespace, ctx):
    """With --model: the model's stop-token contract, one line per template it can be used with."""
    if not args.model:
        return None
    from ..demo import resolve_model
    from ..envcheck import stop_token_lines

    model_dir = resolve_model(args.model)   # make_fit already refused a model that is not there
    return lambda: stop_token_lines(model_dir, ctx.settings.template, args.timeout)


def run(args: argparse.Namespace) -> int:
    from ..envcheck import collect

    if args.offline_proof:
        return offline_proof(args)
    ctx = load_context(args.workspace, args.config)
    fit = make_fit(args)
    progress = None if args.json else (lambda m: print(f"  ... {m}", file=sys.stderr, flush=True))
    report = collect(ctx.workspace, {**ctx.settings.as_dict(), "config_file": str(ctx.config_file)},
                     ctx.settings.min_free_disk_gib, args.timeout, progress, fit, make_stop_lines(args, ctx))
    if args.json:
        print_json(report.as_dict())
    else:
        print(f"medtui check: workspace {ctx.workspace}")
        print(f"settings: {ctx.config_file}{'' if ctx.config_file.exists() else ' (not present: defaults)'}")
        section = None
        width = max(len(ln.name) for ln in report.lines)
        for ln in report.lines:
            if ln.section != section:
                section = ln.section
                print(f"\n[{section}]")
            print(f"  {MARK[ln.verdict]:>4}  {ln.name:<{width}}  {ln.value}")
            if ln.fix and ln.verdict != "ok":
                print(f"        {'':<{width}}  -> {ln.fix}")
        print(f"\nverdict: {report.verdict}")
    return EXIT_FAILED if report.verdict == "problem" else EXIT_OK
