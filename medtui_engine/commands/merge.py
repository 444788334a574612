"""Merge a run's LoRA adapter into a deployable 16-bit model, verified.

RUN is a run id or run directory (its final adapter, else its newest checkpoint) or any PEFT adapter
directory. The merge runs as a detached job (closing the terminal does not stop it); without
--detach this command follows it and prints the verification and the vLLM command at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import EXIT_FAILED, EXIT_OK, UserError

POLL_S = 0.3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import add_common

    parser.add_argument("source", nargs="?", metavar="RUN|ADAPTER",
                        help="a run id, a run directory, a checkpoint directory or an adapter directory")
    parser.add_argument("--base", metavar="DIR", help="the 16-bit base model (default: the one the run trained on; 'demo' for the demo model)")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: RUN/merged, or the workspace's merged/)")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), help="weights of the merged model (default: bf16, fp16 on GPUs without bf16)")
    parser.add_argument("--force", action="store_true", help="replace an existing output (only once the new one is complete and verified)")
    parser.add_argument("--adapter-only", action="store_true", help="export the adapter for serving with the base (vLLM --enable-lora) instead of merging")
    parser.add_argument("--gguf", action="store_true", help="also write a GGUF file (needs a local llama.cpp; otherwise says what to install)")
    parser.add_argument("--verify-tokens", type=int, metavar="N", help="greedy tokens the stop check may generate (default 1024; 32 for the demo model)")
    parser.add_argument("--accept-no-eos", action="store_true", help="install the model even if its greedy answer does not reach EOS within the limit (recorded in medtui.json)")
    parser.add_argument("--dry-run", action="store_true", help="show what would happen (base, adapter, output, disk) and stop")
    parser.add_argument("--detach", action="store_true", help="start the job and return at once")
    parser.add_argument("--follow", metavar="JOB_DIR", help="follow a merge job started earlier (with --detach or from the TUI)")
    add_common(parser)


def start_merge(plan, workspace: Path, options: dict | None = None) -> Path:
    """Write the job's spec and launch the detached job; returns the job directory."""
    from ..merge.events import JOB_MODULE
    from ..merge.job import new_job_dir, write_job_spec
    from ..runs.jobs import launch_job

    job_dir = new_job_dir(workspace)
    write_job_spec(job_dir, plan, options)
    launch_job(JOB_MODULE, job_dir)
    return job_dir


def describe_plan(plan) -> list[str]:
    from ..merge.plan import human_bytes

    lines = [
        f"adapter   {plan.adapter_dir} ({plan.adapter_kind}{', run ' + plan.run_id if plan.run_id else ''})",
        f"base      {plan.base_dir} ({plan.base_label}, {plan.base_architecture}, {plan.base_params / 1e9:.2f} B params)",
        f"output    {plan.out_dir}{' (replaces the existing one)' if plan.out_exists else ''}",
        f"kind      {'adapter-only export' if plan.adapter_only else 'merged ' + plan.dtype + ' model'}; template {plan.template}",
        f"disk      needs about {human_bytes(plan.disk_needed)}, {human_bytes(plan.disk_free)} free",
    ]
    if not plan.adapter_only:
        lines.append(f"method    {plan.method}: {plan.method_reason}")
    if plan.trained_4bit and not plan.adapter_only:
        lines.append("note      the run asked for a 4-bit load of the base; the merge reads the 16-bit base weights instead")
    return lines


def follow(job_dir: Path, out=sys.stdout, quiet: bool = False):
    """Print the job's progress until its terminal event (or its death); returns the MergeState."""
    from ..merge.events import MergeState, apply_merge_event
    from ..runs.jobs import job_alive
    from ..runs.tailer import EventTailer

    tailer = EventTailer(job_dir / "events.jsonl")
    state = MergeState()
    last_line = ""
    dead_polls = 0
    while True:
        for ev in tailer.read_new():
            apply_merge_event(state, ev)
            line = _progress_line(state, ev)
            if line and line != last_line and not quiet:
                print(line, file=out, flush=True)
                last_line = line
        if state.terminal:
            return state
        if not job_alive(job_dir):
            dead_polls += 1
            if dead_polls > 3:   # let the last bytes land before calling it dead
                state.status = "failed"
                state.error = f"the merge job died without finishing (see {job_dir / 'stdout.log'})"
                return state
        time.sleep(POLL_S)


def _progress_line(state, ev: dict) -> str | None:
    kind = ev.get("type")
    if kind == "merge_begin":
        return f"merging {state.adapter} into {state.base} -> {state.out} ({state.dtype}, {state.method})"
    if kind == "merge_progress":
        if state.phase == "merge" and state.method == "peft":
            return "  merge  with PEFT's merge_and_unload ..."
        if state.phase == "merge":
            return f"  merge  {int(state.done)}/{int(state.total)} tensors, {state.bytes_written / 2**30:.2f} GiB written"
        return f"  {state.phase} ..."
    if kind == "merge_written":
        return f"  written in {ev.get('seconds'):.1f} s ({ev.get('shards')} shard(s), on {ev.get('device')}); verifying"
    if kind == "merge_verified":
        v = state.verification
        if "max_abs_logit_diff" in v and v.get("top1_agreement") is not None:
            dec = v.get("top1_agreement_decisive")
            return (f"  verified: max |logit diff| {v.get('max_abs_logit_diff')} (the adapter moves logits by up to "
                    f"{v.get('adapter_effect_max_abs_logit')}), top-1 agreement {v.get('top1_agreement'):.2%} over "
                    f"{v.get('positions')} positions" + (f", {dec:.2%} at the {v.get('decisive_positions')} decisive ones" if dec is not None else "") + (f"; FAILED: {', '.join(v.get('failed_checks'))}" if v.get("failed_checks") else ""))
        return "  verified"
    return None


def summary_lines(state, result: dict | None) -> list[str]:
    lines = []
    v = (result or {}).get("verification") or state.verification or {}
    if state.status == "finished":
        lines.append(f"done: {state.out}")
        if v.get("greedy"):
            g = v["greedy"]
            lines.append(f"  stops: EOS ids {v.get('generation_eos_ids')} in generation_config.json; forced EOS halts "
                         f"generation: {all(h['halted'] for h in v.get('forced_eos', []))}; greedy answer reached EOS by "
                         f"itself: {'yes, after ' + str(g['eos_at']) + ' tokens' if g['reached_eos'] else 'no, within ' + str(g['max_new_tokens'])}"
                         + ("" if v.get("natural_eos_required") else " (random-weight demo: not required)"))
        lines.append(f"  loads with plain transformers (no peft, no unsloth): {v.get('checks', {}).get('loads_without_peft_unsloth', 'n/a')}")
        lines.append(f"  provenance and sha256 of every file: {Path(state.out) / 'medtui.json'}")
        lines.append("serve it with vLLM:")
        lines.append(f"  {state.serve_command}")
        g = (result or {}).get("gguf")
        if isinstance(g, dict):
            lines.append(f"GGUF: {g.get('path')}" if g.get("done") else f"GGUF: not written. {g.get('why')}")
    else:
        lines.append(f"merge failed: {state.error}")
    return lines


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
    from ..merge.plan import make_plan
    from ..merge.serve import GGUF_HELP, find_gguf_converter

    plan = make_plan(args.source, base=args.base, out=args.out, dtype=args.dtype, adapter_only=args.adapter_only,
                     force=args.force, gguf=args.gguf, runs_dir=ctx.runs_dir, merged_dir=ctx.merged_dir)
    if args.dry_run:
        if args.json:
            print_json({"plan": plan.as_dict()})
        else:
            print("\n".join(describe_plan(plan)))
        return EXIT_OK
    if args.gguf and find_gguf_converter() is None and not args.json:
        print(f"note: {GGUF_HELP}", file=sys.stderr)
    options = {"verify_tokens": args.verify_tokens, "require_natural_eos": False if args.accept_no_eos else None}
    job_dir = start_merge(plan, ctx.workspace, options)
    if args.detach:
        if args.json:
            print_json({"job_dir": str(job_dir), "plan": plan.as_dict()})
        else:
            print("\n".join(describe_plan(plan)))
            print(f"merge job started: {job_dir}")
            print(f"follow it with: medtui merge --follow {job_dir}")
        return EXIT_OK
    if not args.json:
        print("\n".join(describe_plan(plan)))
        print(f"job: {job_dir} (Ctrl-C detaches; the merge goes on)")
    return _finish(job_dir, args)


def _finish(job_dir: Path, args) -> int:
    from ..cli import print_json

    try:
        state = follow(job_dir, quiet=args.json)
    except KeyboardInterrupt:
        print(f"\ndetached; the merge goes on. Follow it with: medtui merge --follow {job_dir}", file=sys.stderr)
        return EXIT_OK
    result = None
    try:
        result = json.loads((job_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if args.json:
        print_json({"job_dir": str(job_dir), "status": state.status, "out": state.out, "error": state.error,
                    "serve_command": state.serve_command, "verification": (result or {}).get("verification") or state.verification,
                    "result": result})
    else:
        print("\n".join(summary_lines(state, result)))
    return EXIT_OK if state.status == "finished" else EXIT_FAILED
