"""Start a LoRA fine-tune as a detached job.

The job runs in its own session: closing this terminal or dropping SSH does not stop it. Without
--detach this command follows the job's progress and exits with its outcome (0 when it finished
and saved the adapter, 1 when it failed, crashed or was stopped); Ctrl-C only detaches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_common, print_json
from ..errors import EXIT_FAILED, EXIT_OK
from ..train.launch import JOB_MODULE  # noqa: F401 - kept importable from here (the TUI uses it)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..train.spec import BACKENDS, OPTIMIZERS, PRECISIONS, SCHEDULERS, TrainSpec

    d = TrainSpec()
    p.add_argument("--data", metavar="FILE", required=True, help="training cases (JSON, JSONL, CSV, Parquet)")
    p.add_argument("--model", metavar="DIR|demo", default="demo", help="local model directory, or 'demo' (default)")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend, help="auto: Unsloth where installed and a GPU is present, else hf")
    p.add_argument("--template", choices=("seed", "chat"), default=d.template, help="prompt format (default: seed)")
    p.add_argument("--mask-prompt", action="store_true", help="train on the reasoning and answer only (no loss on the prompt)")
    p.add_argument("--name", help="a short name for the run id (default: the model's name)")
    g = p.add_argument_group("data fields")
    g.add_argument("--field-question", default=d.field_question, metavar="NAME")
    g.add_argument("--field-cot", default=d.field_cot, metavar="NAME", help="reasoning field ('' for none)")
    g.add_argument("--field-response", default=d.field_response, metavar="NAME")
    g.add_argument("--limit-rows", type=int, default=0, metavar="N", help="use only the first N cases (a quick trial)")
    g.add_argument("--eval-fraction", type=float, default=d.eval_fraction, metavar="F", help="hold out this share for eval loss (default 0)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-r", type=int, default=d.lora_r, metavar="R")
    g.add_argument("--lora-alpha", type=float, default=d.lora_alpha, metavar="A")
    g.add_argument("--lora-dropout", type=float, default=d.lora_dropout, metavar="P")
    g.add_argument("--target-modules", default=",".join(d.target_modules), metavar="LIST")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=d.epochs)
    g.add_argument("--max-steps", type=int, default=0, metavar="N", help="stop after N optimizer steps (0: by epochs)")
    g.add_argument("--lr", type=float, default=d.learning_rate, metavar="LR")
    g.add_argument("--micro-batch", type=int, default=d.micro_batch, metavar="N")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, metavar="N")
    g.add_argument("--max-seq-length", type=int, default=d.max_seq_length, metavar="N")
    g.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, metavar="F")
    g.add_argument("--scheduler", choices=SCHEDULERS, default=d.scheduler)
    g.add_argument("--optim", choices=OPTIMIZERS, default=d.optim)
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision, help="auto: bf16 where supported, else fp16; fp32 on the CPU")
    g.add_argument("--no-4bit", action="store_true", help="load the base model in 16-bit instead of 4-bit")
    g.add_argument("--no-gradient-checkpointing", action="store_true")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("checkpoints and evaluation")
    g.add_argument("--save-steps", type=int, default=0, metavar="N", help="also checkpoint every N steps (0: epochs only)")
    g.add_argument("--no-save-epoch", action="store_true", help="no checkpoint at the end of each epoch")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, metavar="K")
    g.add_argument("--eval-steps", type=int, default=0, metavar="N", help="eval every N steps (0: each epoch)")
    g.add_argument("--heartbeat", type=float, default=d.heartbeat_s, metavar="SECONDS", help=argparse.SUPPRESS)
    p.add_argument("--detach", action="store_true", help="start the job and return at once")
    p.add_argument("--force", action="store_true", help="start even if a medtui job is training on the same GPU")
    add_common(p)


def spec_from_args(args) -> object:
    from ..train.spec import TrainSpec, parse_targets

    return TrainSpec(
        model=args.model, data=args.data, field_question=args.field_question, field_cot=args.field_cot,
        field_response=args.field_response, limit_rows=args.limit_rows, template=args.template,
        mask_prompt=args.mask_prompt, backend=args.backend, lora_r=args.lora_r,
        lora_alpha=int(args.lora_alpha) if float(args.lora_alpha).is_integer() else args.lora_alpha,
        lora_dropout=args.lora_dropout, target_modules=parse_targets(args.target_modules),
        load_in_4bit=not args.no_4bit, gradient_checkpointing=not args.no_gradient_checkpointing,
        precision=args.precision, micro_batch=args.micro_batch, grad_accum=args.grad_accum, epochs=args.epochs,
        max_steps=args.max_steps, learning_rate=args.lr, max_seq_length=args.max_seq_length,
        warmup_ratio=args.warmup_ratio, scheduler=args.scheduler, optim=args.optim, seed=args.seed,
        eval_fraction=args.eval_fraction, eval_steps=args.eval_steps, save_steps=args.save_steps,
        save_every_epoch=not args.no_save_epoch, keep_checkpoints=args.keep_checkpoints, heartbeat_s=args.heartbeat,
    )


def check_gpu_free(runs_dir: Path, force: bool) -> tuple[dict, list[str]]:
    """See :func:`medtui_engine.train.launch.pick_gpu`."""
    from ..train.launch import pick_gpu

    return pick_gpu(runs_dir, force)


def attach(run_dir: Path, json_mode: bool = False, past_seq: int = -1) -> int:
    """Follow the job until it ends; Ctrl-C detaches (the job keeps running)."""
    import json

    from ..jobs.describe import describe_event, describe_run_status, event_line
    from ..jobs.follow import JobFollower
    from ..jobs.status import JobStatus
    from ..rows import sentence

    run_id = run_dir.name
    follower = JobFollower(run_dir, "train", past_seq=past_seq)
    try:
        for ev in follower.follow():
            if json_mode:
                print(json.dumps(ev, ensure_ascii=False), flush=True)
            elif row := describe_event(ev, follower.state):
                print(event_line(row), flush=True)
    except KeyboardInterrupt:
        print(f"\ndetached: the job keeps running. Re-attach with `medtui runs tail {run_id}`; "
              f"stop it with `medtui runs stop {run_id}`.", file=sys.stderr)
        return EXIT_OK
    if follower.status is JobStatus.FINISHED:
        return EXIT_OK
    for row in describe_run_status(follower.status, follower.state, run_dir=run_dir, notice=False):
        print(f"run {run_id} {sentence(row)}", file=sys.stderr)
    return EXIT_FAILED


def run(args) -> int:
    from ..context import load_context
    from ..train.launch import start_run

    ctx = load_context(args.workspace, args.config)
    started = start_run(ctx.runs_dir, spec_from_args(args), force=args.force, name=args.name)
    run_dir, pid, warnings = started.run_dir, started.pid, list(started.warnings)
    if args.json and args.detach:
        print_json({"run_id": run_dir.name, "run_dir": str(run_dir), "pid": pid, "warnings": warnings})
        return EXIT_OK
    for w in warnings:
        print(w, file=sys.stderr)
    if not args.json:
        print(f"run {run_dir.name} started (pid {pid}); its files: {run_dir}")
    if args.detach:
        print(f"follow it with `medtui runs tail {run_dir.name}`; stop it with `medtui runs stop {run_dir.name}`")
        return EXIT_OK
    if not args.json:
        print("following its progress (Ctrl-C detaches; the job keeps running)")
    return attach(run_dir, json_mode=args.json)
