"""Merge a run's LoRA adapter into a deployable 16-bit model, verified.

RUN is a run id or run directory (its final adapter, else its newest checkpoint) or any PEFT adapter
directory. The merge runs as a detached job (closing the terminal does not stop it); without
--detach this command follows it and prints the verification and the vLLM command at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import EXIT_FAILED, EXIT_OK, UserError

POLL_S = 0.3
ACCEPT_NO_EOS_NOTE = ("--accept-no-eos is no longer needed and does nothing: a model whose answers do not stop by "
                      "themselves is installed with a warning (the cut-off rate is in medtui.json)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_common

    parser.add_argument("source", nargs="?", metavar="RUN|ADAPTER",
                        help="a run id, a run directory, a checkpoint directory or an adapter directory")
    parser.add_argument("--base", metavar="DIR", help="the 16-bit base model (default: the one the run trained on; 'demo' for the demo model)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: RUN/merged, or the workspace's merged/)")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), help="weights of the merged model (default: bf16, fp16 on GPUs without bf16)")
    parser.add_argument("--force", action="store_true", help="replace an existing output (only once the new one is complete and verified)")
    parser.add_argument("--adapter-only", action="store_true", help="export the adapter for serving with the base (vLLM --enable-lora) instead of merging")
    from ..merge.gguf_export import DEFAULT_GGUF, GGUF_TYPES

    parser.add_argument("--gguf", nargs="?", const=DEFAULT_GGUF, metavar="TYPES",
                        help=f"also write GGUF files for llama.cpp and Ollama, each with a Modelfile, verified against the "
                             f"merged model: comma-separated types from {', '.join(GGUF_TYPES)} (default {DEFAULT_GGUF})")
    parser.add_argument("--verify-tokens", type=int, metavar="N", help="greedy tokens each probe answer may take before it counts as cut off (default 1024; 32 for the demo model)")
    # kept so that scripts written for earlier versions still run: a model that does not stop by itself
    # is now installed with a warning, so there is nothing left to accept
    parser.add_argument("--accept-no-eos", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="show what would happen (base, adapter, output, disk) and stop")
    parser.add_argument("--detach", action="store_true", help="start the job and return at once")
    parser.add_argument("--follow", metavar="JOB_DIR", help="follow a merge job started earlier (with --detach or from the TUI)")
    add_common(parser)


def follow(job_dir: Path, out=sys.stdout, quiet: bool = False):
    """Print the job's progress until it ends (its terminal event, or its death); returns the
    follower (its ``state`` and ``status``)."""
    from ..jobs.describe import describe_event, event_line
    from ..jobs.follow import JobFollower

    follower = JobFollower(job_dir, "merge")
    last_line = ""
    for ev in follower.follow(poll_s=POLL_S):
        row = describe_event(ev, follower.state)
        line = event_line(row) if row else ""
        if line and line != last_line and not quiet:
            print(line, file=out, flush=True)
            last_line = line
    return follower


def run(args: argparse.Namespace) -> int:
    from ..cli import print_json
    from ..context import load_context

    ctx = load_context(args.workspace, args.config)
    if args.follow:
        job_dir = Path(args.follow).expanduser()
        if not (job_dir / "spec.json").is_file():
            raise UserError(f"{job_dir} is not a merge job directory")
        return _finish(job_dir, args)
    if not args.source:
        raise UserError("name what to merge: a run id, a run directory or an adapter directory (see --help)")
    from ..jobs.describe import describe_merge_plan
    from ..merge.launch import start_merge
    from ..merge.plan import make_plan
    from ..rows import format_rows

    plan = make_plan(args.source, base=args.base, out=args.out, dtype=args.dtype, adapter_only=args.adapter_only,
                     force=args.force, gguf=args.gguf, runs_dir=ctx.runs_dir, merged_dir=ctx.merged_dir)
    if args.dry_run:
        if args.json:
            print_json({"plan": plan.as_dict()})
        else:
            print(format_rows(describe_merge_plan(plan)))
        return EXIT_OK
    if args.accept_no_eos and not args.json:
        print(f"note: {ACCEPT_NO_EOS_NOTE}", file=sys.stderr)
    options = {"verify_tokens": args.verify_tokens}
    job_dir = start_merge(plan, ctx.workspace, options)
    if args.detach:
        if args.json:
            print_json({"job_dir": str(job_dir), "plan": plan.as_dict()})
        else:
            print(format_rows(describe_merge_plan(plan)))
            print(f"merge job started: {job_dir}")
            print(f"follow it with: medtui merge --follow {job_dir}")
        return EXIT_OK
    if not args.json:
        print(format_rows(describe_merge_plan(plan)))
        print(f"job: {job_dir} (Ctrl-C detaches; the merge goes on)")
    return _finish(job_dir, args)


def _finish(job_dir: Path, args) -> int:
    from ..cli import print_json
    from ..jobs.describe import describe_merge_result
    from ..jobs.status import JobStatus
    from ..rows import format_rows

    try:
        follower = follow(job_dir, quiet=args.json)
    except KeyboardInterrupt:
        print(f"\ndetached; the merge goes on. Follow it with: medtui merge --follow {job_dir}", file=sys.stderr)
        return EXIT_OK
    state, status = follower.state, follower.status
    result = None
    try:
        result = json.loads((job_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    rows = describe_merge_result(state, result, status=status, job_dir=job_dir)
    if args.json:
        error = state.error or (rows[0].value if status is not JobStatus.FINISHED else None)
        print_json({"job_dir": str(job_dir), "status": status, "out": state.out, "error": error,
                    "serve_command": state.serve_command, "verification": (result or {}).get("verification") or state.verification,
                    "warnings": (result or {}).get("warnings") or [],
                    "result": result})
    else:
        print(format_rows(rows))
    return EXIT_OK if status is JobStatus.FINISHED else EXIT_FAILED
