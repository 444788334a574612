"""List, show, follow, stop or resume training runs.

  medtui runs list                  every run in the workspace, newest first
  medtui runs show RUN              settings, progress, losses, outcome
  medtui runs tail RUN              print its progress from the start and follow it until it ends
  medtui runs stop RUN [--wait]     graceful stop: a checkpoint is saved, then the job ends
  medtui runs resume RUN            continue a stopped, failed or crashed run from its newest checkpoint
  medtui runs resume RUN --micro-batch 2
                                    ... with a smaller micro-batch (the accumulation follows: the effective
                                    batch is kept), or --max-seq-length N, --gradient-checkpointing

RUN is a run id, a unique prefix of one, a run directory, or `last`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from ..cli import add_common, print_json
from ..errors import EXIT_FAILED, EXIT_OK, UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("list", help="every run, newest first")
    add_common(s)
    s = sub.add_parser("show", help="one run's settings, progress and outcome")
    s.add_argument("run", metavar="RUN")
    add_common(s)
    s = sub.add_parser("tail", help="print a run's progress and follow it until it ends")
    s.add_argument("run", metavar="RUN")
    s.add_argument("--no-follow", action="store_true", help="print what is there and return")
    add_common(s)
    s = sub.add_parser("stop", help="stop a run gracefully (a checkpoint is saved)")
    s.add_argument("run", metavar="RUN")
    s.add_argument("--wait", action="store_true", help="wait until the job has saved and ended")
    add_common(s)
    s = sub.add_parser("resume", help="continue a stopped, failed or crashed run from its newest checkpoint")
    s.add_argument("run", metavar="RUN")
    s.add_argument("--detach", action="store_true", help="start the job and return at once")
    s.add_argument("--force", action="store_true", help="start even if a medtui job is training on the same GPU")
    add_resume_setting_arguments(s)
    add_common(s)


def add_resume_setting_arguments(p: argparse.ArgumentParser) -> None:
    """The settings a resume may change, as options; every other training option is accepted too
    (hidden), so that asking to change it is refused with the reason rather than an unknown option."""
    from ..train.resume import RESUMABLE
    from ..train.spec import SETTINGS

    g = p.add_argument_group("settings from here on (the effective batch is kept)")
    g.add_argument("--micro-batch", dest="micro_batch", type=int, metavar="N", default=argparse.SUPPRESS,
                   help="samples per forward pass; alone, the accumulation follows to keep the effective batch")
    g.add_argument("--grad-accum", dest="grad_accum", type=int, metavar="M", default=argparse.SUPPRESS,
                   help="micro-batches per optimizer step (micro-batch x this stays what it was)")
    g.add_argument("--max-seq-length", dest="max_seq_length", type=int, metavar="L", default=argparse.SUPPRESS,
                   help="cut cases longer than L tokens from here on")
    g.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS, help="recompute activations in the backward pass (less memory, slower)")
    types = {"int": int, "float": float}
    for name, st in SETTINGS.items():
        if st.flag is None or name in RESUMABLE:
            continue
        kw: dict = {"dest": name, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        if st.kind == "bool":
            kw["action"] = "store_false" if st.negative else "store_true"
        elif st.kind in types:
            kw["type"] = types[st.kind]
        p.add_argument(st.flag, **kw)


def asked_settings(args) -> dict:
    """The settings given on a `runs resume` line (name -> value), parsed as the setting reads them."""
    from ..train.spec import SETTINGS

    out = {}
    for name, st in SETTINGS.items():
        if hasattr(args, name):
            value = getattr(args, name)
            out[name] = st.parse(value) if st.kind in ("list", "number") else value
    return out


def _run_dir(ctx, ref: str) -> Path:
    from ..runs.store import find_run

    try:
        return find_run(ctx.runs_dir, ref)
    except LookupError as exc:
        raise UserError(f"{exc}; see `medtui runs list`") from None


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


def _loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def state_summary(spec: dict, state) -> dict:
    """The run's state without its long series (for --json and the show screen)."""
    return {
        "run_id": state.run_id, "status": state.status, "step": state.step, "total_steps": state.total_steps,
        "epoch": state.epoch, "epochs": state.epochs, "backend": state.backend, "device": state.device,
        "model": state.model or spec.get("model"), "model_label": state.model_label or spec.get("model_label"),
        "data": spec.get("data"), "template": spec.get("template"), "num_examples": state.num_examples,
        "train_tokens": state.train_tokens, "last_loss": state.last_loss, "best_loss": state.best_loss,
        "eval": state.eval[-5:], "checkpoints": state.checkpoints, "tokens_per_s": state.tokens_per_s,
        "elapsed_s": state.elapsed_s, "eta_s": state.eta_s, "peak_mem_mib": state.peak_mem_mib,
        "torch_peak_mib": state.torch_peak_mib, "rss_mib": state.rss_mib, "resumed": state.resumed,
        "error": state.error, "error_type": state.error_type, "stop_reason": state.stop_reason,
        "adapter": state.adapter, "runtime_s": state.runtime_s, "final_loss": state.final_loss,
        "notices": state.notices, "first_event_t": state.first_event_t, "last_event_t": state.last_event_t,
        "pid": state.pid, "setting_changes": state.setting_changes, "advice": state.advice,
    }


def do_list(ctx, args) -> int:
    from ..runs.store import list_runs

    runs = list_runs(ctx.runs_dir)
    if args.json:
        print_json([r.as_dict() for r in runs])
        return EXIT_OK
    if not runs:
        print(f"no runs yet in {ctx.runs_dir}; start one with `medtui train --data FILE --model DIR|demo`")
        return EXIT_OK
    width = max(len("RUN"), *(len(r.run_id) for r in runs))  # whole ids: they are what users copy
    print(f"{'RUN':{width}} {'STATUS':9} {'STEP':>11} {'LOSS':>8} {'BEST':>8}  {'STARTED':16}  MODEL")
    for r in runs:
        step = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
        print(f"{r.run_id:{width}} {r.status:9} {step:>11} {_loss(r.last_loss):>8} {_loss(r.best_loss):>8}  "
              f"{_when(r.started):16}  {r.model_label}")
    return EXIT_OK


def do_show(ctx, args) -> int:
    from ..fmt import fmt_duration
    from ..jobs.describe import describe_fit, describe_run_status
    from ..privacy.audit import describe_data_audit, read_data_record
    from ..rows import format_rows
    from ..runs.store import load_run
    from ..train.resume import describe_resumes, settings_in_force

    run_dir = _run_dir(ctx, args.run)
    spec, state = load_run(run_dir)
    summary = state_summary(spec, state)
    now = settings_in_force(spec, state.setting_changes)   # spec.json keeps the first settings
    data_record = read_data_record(run_dir)
    if args.json:
        print_json({"run_dir": str(run_dir), "spec": spec, "settings_now": now,
                    "state": summary, "data_record": data_record})
        return EXIT_OK
    total = f"/{state.total_steps}" if state.total_steps else ""
    print(f"run      {run_dir.name}   ({run_dir})")
    print(f"status   {state.status}" + (f" (resumed {state.resumed}x)" if state.resumed else ""))
    print(f"model    {summary['model_label'] or summary['model']}")
    print(f"data     {spec.get('data')}  ({state.num_examples} cases, {state.train_tokens:,} tokens)")
    print(format_rows(describe_data_audit(spec, data_record), width=9))
    print(f"setting  backend {state.backend or spec.get('backend')}, template {spec.get('template')}, "
          f"LoRA r={spec.get('lora_r')} alpha={spec.get('lora_alpha')}, lr {spec.get('learning_rate')}, "
          f"batch {now.get('micro_batch')} x {now.get('grad_accum')}, max length {now.get('max_seq_length')}"
          + ("" if now.get("gradient_checkpointing") is not False else ", no gradient checkpointing"))
    if (spec.get("resolved_recipe") or {}).get("summary"):
        print(f"recipe   {spec['resolved_recipe']['summary']}")
    if state.setting_changes:
        print(format_rows(describe_resumes(state.setting_changes), width=9))
    if fit := describe_fit(state):
        print(format_rows([fit], width=9))
    print(f"progress step {state.step}{total}, epoch {state.epoch:.2f}, elapsed {fmt_duration(state.elapsed_s)}, "
          f"ETA {fmt_duration(state.eta_s)}, {('-' if state.tokens_per_s is None else f'{state.tokens_per_s:,.0f}')} tok/s")
    print(f"loss     last {_loss(state.last_loss)}, best {_loss(state.best_loss)}"
          + (f", eval {_loss(state.eval[-1][1])} at step {state.eval[-1][0]}" if state.eval else ""))
    if state.peak_mem_mib or state.torch_peak_mib:
        print(f"memory   GPU peak {state.peak_mem_mib or '-'} MiB (torch peak {state.torch_peak_mib or '-'} MiB)")
    if state.checkpoints:
        print(f"checkpoints at steps {', '.join(map(str, state.checkpoints[-6:]))}")
    for note in state.notices[-3:]:
        print(f"note     {note}")
    rows = describe_run_status(state.status, state, run_dir=run_dir, notice=False)
    if rows:
        print(format_rows(rows, width=9))
    return EXIT_OK


def do_tail(ctx, args) -> int:
    from ..jobs.describe import describe_event, event_line
    from ..jobs.follow import JobFollower

    run_dir = _run_dir(ctx, args.run)
    follower = JobFollower(run_dir, "train")
    try:
        for ev in follower.follow(live=not args.no_follow):
            if args.json:
                print(json.dumps(ev, ensure_ascii=False), flush=True)
            elif row := describe_event(ev, follower.state):
                print(event_line(row), flush=True)
    except KeyboardInterrupt:
        print("\nstopped following; the job keeps running", file=sys.stderr)
        return EXIT_OK
    if not args.json and not follower.status.terminal:
        print(f"status: {follower.status}")
    return EXIT_OK


def do_stop(ctx, args) -> int:
    from ..jobs.status import JobStatus
    from ..runs.jobs import job_alive, request_stop
    from ..runs.store import load_run

    run_dir = _run_dir(ctx, args.run)
    if not job_alive(run_dir):
        _, state = load_run(run_dir)
        raise UserError(f"run {run_dir.name} is not running (it is {state.status}); nothing to stop")
    request_stop(run_dir)
    if not args.wait:
        if args.json:
            print_json({"run_id": run_dir.name, "stop_requested": True})
        else:
            print(f"stop requested: run {run_dir.name} saves a checkpoint at the end of its current step, then ends")
        return EXIT_OK
    while job_alive(run_dir):
        time.sleep(0.5)
    _, state = load_run(run_dir)
    if args.json:
        print_json({"run_id": run_dir.name, "status": state.status, "step": state.step,
                    "checkpoint": state.last_checkpoint})
    else:
        print(f"run {run_dir.name} {state.status} at step {state.step}"
              + (f"; checkpoint {state.last_checkpoint}" if state.last_checkpoint else ""))
    return EXIT_OK if state.status in (JobStatus.STOPPED, JobStatus.FINISHED) else EXIT_FAILED


def do_resume(ctx, args) -> int:
    from ..train.launch import resume_run
    from .train import attach

    started = resume_run(ctx.runs_dir, _run_dir(ctx, args.run), asked_settings(args), force=args.force)
    run_dir = started.run_dir
    where = f"checkpoint {started.resumed_from}" if started.resumed_from else "the start (no checkpoint was saved)"
    if args.json and args.detach:
        print_json({"run_id": run_dir.name, "pid": started.pid, "from": started.resumed_from,
                    "settings": started.settings or {}, "change": started.change, "warnings": list(started.warnings)})
        return EXIT_OK
    for w in started.warnings:
        print(w, file=sys.stderr)
    if not args.json:
        print(f"run {run_dir.name} resumed from {where} (pid {started.pid})"
              + (f" with {started.change}" if started.change else ""))
    if args.detach:
        return EXIT_OK
    return attach(run_dir, json_mode=args.json, past_seq=started.past_seq)


def run(args) -> int:
    from ..context import load_context

    ctx = load_context(args.workspace, args.config)
    return {"list": do_list, "show": do_show, "tail": do_tail, "stop": do_stop, "resume": do_resume}[args.action](ctx, args)
