"""Evaluate a tuned model against its base on cases with reference diagnoses. Deterministic measures
(sections with content, basis and differential counts, diagnosis matched as a clinician would accept it,
exam letters, think block, cut-offs, latency), each with its method, n and 95% intervals, and base vs
tuned as paired differences (McNemar's exact test, paired bootstrap), in a JSON + Markdown report.
Every model's answers are saved as JSONL; `medtui eval score ANSWERS.jsonl` rescores them without a model.

The evaluation runs as a detached job (closing the terminal does not stop it); without --detach this
command follows it and prints the report at the end (Ctrl-C only detaches).

  medtui eval list                  every evaluation job, newest first, with how it stands
  medtui eval stop JOB [--wait]     stop it (the answers given so far are kept)
  medtui eval resume JOB            continue it: only the answers not on file are given
  medtui eval tail JOB              follow it (and print the report once it is written)

JOB is an evaluation job's id (eval-...), a unique prefix of one, its directory, or `last`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_common, print_json
from ..context import load_context
from ..errors import EXIT_FAILED, EXIT_OK, UserError
from ..paths import project_data_dir


def _add_synonyms(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--synonyms", metavar="FILE",
                        help="extra diagnosis synonyms: a UTF-8 TSV file, one group of names a line, tab-separated "
                             "(added to the shipped defaults)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR|RUN|demo", help="the tuned model: a merged dir, a run, or an adapter")
    parser.add_argument("--base", default="auto", metavar="DIR|auto|none",
                        help="compare with: auto (the tuned model's base), a model dir, or none")
    parser.add_argument("--cases", metavar="FILE",
                        help="case file (JSONL/JSON/CSV: flat cases, clinical records with QA_pairs, or multiple-choice "
                             "questions; default: data/demo_eval.jsonl)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N cases")
    parser.add_argument("--samples", type=int, default=1, metavar="K",
                        help="answers per case (seeds seed, seed+1, ...); the report averages each case's samples")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.3)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, metavar="N",
                        help="cases decoded together (default: on a GPU as many as fit, up to 64; on the CPU one "
                             "at a time); greedy answers are the same either way, within numerics")
    parser.add_argument("--repetition-penalty", type=float, metavar="P",
                        help="1 = off (default: the model's generation config; the same on every decode path)")
    _add_synonyms(parser)
    parser.add_argument("--detach", action="store_true", help="start the job and return at once")
    add_common(parser)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="eval_action", metavar="ACTION")
    score = sub.add_parser("score", help="rescore saved answers (answers-*.jsonl) without a model",
                           description="Score saved answers (one JSON object a line with id, question, "
                           "reference_diagnosis and answer, the full output) and write the same report. With --base, "
                           "the two files are paired by case id (McNemar, paired bootstrap).")
    score.add_argument("answers", metavar="ANSWERS.jsonl", help="the answers to score (the tuned model's, when paired)")
    score.add_argument("--base", dest="base_answers", metavar="BASE_ANSWERS.jsonl",
                       help="the base model's answers on the same cases, for paired statistics")
    score.add_argument("--out", metavar="DIR", help="write report.json, report.md and the answers here "
                       "(default: a new eval-score-<time> folder in the workspace's reports)")
    _add_synonyms(score)
    add_common(score)
    s = sub.add_parser("list", help="every evaluation job of the workspace, newest first")
    add_common(s)
    s = sub.add_parser("stop", help="stop an evaluation job (the answers given so far are kept)")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--wait", action="store_true", help="wait until the job has ended")
    add_common(s)
    s = sub.add_parser("resume", help="continue a stopped, failed or crashed evaluation job without redoing "
                       "the answers on file")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--detach", action="store_true", help="start the job and return at once")
    add_common(s)
    s = sub.add_parser("tail", help="follow an evaluation job until it ends; print its report")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--no-follow", action="store_true", help="print what is there and return")
    add_common(s)


def _synonyms(path: str | None):
    from ..evaluate.matching import load_synonyms

    return load_synonyms(Path(path).expanduser() if path else None)


def _print_report(args, report: dict, where: Path) -> None:
    from ..evaluate.report import DISCLAIMER

    if args.json:
        print_json({"report_dir": str(where), "disclaimer": DISCLAIMER, **{k: v for k, v in report.items() if k not in ("models", "paired")},
                    "summary": {n: m["summary"] for n, m in report["models"].items()},
                    **({"paired": report["paired"]} if "paired" in report else {})})
    else:
        # report.md opens with the disclaimer; say it once
        print((where / "report.md").read_text(encoding="utf-8"))
        print(f"report: {where}/report.md and report.json; answers: {where}/answers-*.jsonl")


def _score(args: argparse.Namespace) -> int:
    from ..evaluate.runner import score_answer_files

    ctx = load_context(args.workspace, args.config)
    synonyms = _synonyms(args.synonyms)
    report, where = score_answer_files(Path(args.answers).expanduser(),
                                       Path(args.base_answers).expanduser() if args.base_answers else None,
                                       Path(args.out).expanduser() if args.out else None, ctx.reports_dir, synonyms)
    _print_report(args, report, where)
    return 0


def attach(job_dir: Path, args, past_seq: int = -1, live: bool = True) -> int:
    """Follow the job, printing its progress (stderr), then its report (stdout) once it is written.
    Exit 0 when it finished, 1 when it stopped, failed or crashed; Ctrl-C detaches."""
    import json

    from ..jobs.describe import describe_eval_status, describe_event, event_line
    from ..jobs.follow import JobFollower
    from ..jobs.status import JobStatus
    from ..rows import sentence

    follower = JobFollower(job_dir, "eval", past_seq=past_seq)
    try:
        for ev in follower.follow(live=live, poll_s=0.3):
            if args.json:
                continue
            if row := describe_event(ev, follower.state):
                print(event_line(row), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"\ndetached: the evaluation goes on. Follow it with `medtui eval tail {job_dir.name}`; "
              f"stop it with `medtui eval stop {job_dir.name}`.", file=sys.stderr)
        return EXIT_OK
    state, status = follower.state, follower.status
    if status is JobStatus.FINISHED and state.report_dir:
        where = Path(state.report_dir)
        _print_report(args, json.loads((where / "report.json").read_text(encoding="utf-8")), where)
        return EXIT_OK
    rows = describe_eval_status(status, state, job_dir=job_dir)
    if args.json:
        print_json({"job_dir": str(job_dir), "status": status, "done": state.done, "total": state.total,
                    "error": state.error, "outcome": [r.as_dict() for r in rows]})
    else:
        for row in rows:
            print(f"evaluation {job_dir.name} {sentence(row)}", file=sys.stderr)
    return EXIT_OK if not live and status.active else EXIT_FAILED


def _stop(args) -> int:
    import time

    from ..evaluate.job import find_eval_job
    from ..runs.jobs import job_alive, request_stop

    ctx = load_context(args.workspace, args.config)
    job_dir = find_eval_job(ctx.workspace, args.job)
    if not job_alive(job_dir):
        raise UserError(f"evaluation {job_dir.name} is not running; nothing to stop")
    request_stop(job_dir)
    if not args.wait:
        if args.json:
            print_json({"job": job_dir.name, "stop_requested": True})
        else:
            print(f"stop requested: evaluation {job_dir.name} drops the answer in progress and ends; "
                  f"`medtui eval resume {job_dir.name}` continues it")
        return EXIT_OK
    while job_alive(job_dir):
        time.sleep(0.3)
    from ..jobs.describe import describe_eval_status
    from ..jobs.follow import JobFollower
    from ..jobs.status import JobStatus
    from ..rows import sentence

    follower = JobFollower(job_dir, "eval")
    follower.poll()
    rows = describe_eval_status(follower.status, follower.state, job_dir=job_dir)
    if args.json:
        print_json({"job": job_dir.name, "status": follower.status, "done": follower.state.done,
                    "total": follower.state.total, "outcome": [r.as_dict() for r in rows]})
    else:
        for row in rows:
            print(f"evaluation {job_dir.name} {sentence(row)}")
    return EXIT_OK if follower.status in (JobStatus.STOPPED, JobStatus.FINISHED) else EXIT_FAILED


def _list(args) -> int:
    from ..evaluate.job import list_eval_jobs
    from ..jobs.describe import describe_eval_status
    from ..jobs.follow import JobFollower
    from ..rows import sentence

    ctx = load_context(args.workspace, args.config)
    out = []
    for job_dir in list_eval_jobs(ctx.workspace):
        follower = JobFollower(job_dir, "eval")
        follower.poll()
        rows = describe_eval_status(follower.status, follower.state, job_dir=job_dir)
        out.append({"job": job_dir.name, "job_dir": str(job_dir), "status": follower.status, "done": follower.state.done,
                    "total": follower.state.total, "report_dir": follower.state.report_dir,
                    "outcome": sentence(rows[0]) if rows else ""})
    if args.json:
        print_json(out)
    elif not out:
        print(f"no evaluation jobs yet in {ctx.workspace / 'jobs'}; start one with `medtui eval --model DIR|RUN|demo`")
    else:
        width = max(len(j["job"]) for j in out)
        for j in out:
            print(f"{j['job']:{width}}  {j['status']:9}  {j['outcome']}")
    return EXIT_OK


def _resume(args) -> int:
    from ..evaluate.job import find_eval_job, resume_eval

    ctx = load_context(args.workspace, args.config)
    job_dir = find_eval_job(ctx.workspace, args.job)
    past = resume_eval(job_dir)
    if args.detach:
        if args.json:
            print_json({"job": job_dir.name, "job_dir": str(job_dir), "resumed": True})
        else:
            print(f"evaluation {job_dir.name} resumed; follow it with `medtui eval tail {job_dir.name}`")
        return EXIT_OK
    if not args.json:
        print(f"evaluation {job_dir.name} resumed (Ctrl-C detaches; the job goes on)", file=sys.stderr)
    return attach(job_dir, args, past_seq=past)


def _tail(args) -> int:
    from ..evaluate.job import find_eval_job

    ctx = load_context(args.workspace, args.config)
    return attach(find_eval_job(ctx.workspace, args.job), args, live=not args.no_follow)


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "eval_action", None)
    if action is not None:
        return {"score": _score, "list": _list, "stop": _stop, "resume": _resume, "tail": _tail}[action](args)
    from ..evaluate.cases import load_eval_cases
    from ..evaluate.job import eval_sources, start_eval
    from ..infer import SamplingSettings

    if not args.model:
        raise UserError("give the model to evaluate with --model DIR|RUN|demo (or rescore saved answers with "
                        "`medtui eval score ANSWERS.jsonl`)")
    ctx = load_context(args.workspace, args.config)
    cases_file = Path(args.cases).expanduser() if args.cases else project_data_dir() / "demo_eval.jsonl"
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.samples < 1 or args.samples > 100:
        raise UserError("--samples must be a whole number from 1 to 100")
    cases = load_eval_cases(cases_file, args.limit)
    synonyms = Path(args.synonyms).expanduser() if args.synonyms else None
    _synonyms(args.synonyms)  # a bad synonyms file is the user's to fix now, not the job's to fail on
    settings = SamplingSettings(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                seed=args.seed, repetition_penalty=args.repetition_penalty).checked()
    sources = eval_sources(args.model, args.base, ctx.runs_dir, ctx.merged_dir)
    job_dir = start_eval(ctx.workspace, ctx.reports_dir, sources, cases, cases_file.resolve(), settings,
                         samples=args.samples, synonyms=synonyms.resolve() if synonyms else None, batch=args.batch)
    if args.detach:
        if args.json:
            print_json({"job": job_dir.name, "job_dir": str(job_dir)})
        else:
            print(f"evaluation {job_dir.name} started: {len(cases)} cases, {', '.join(sources)}")
            print(f"follow it with `medtui eval tail {job_dir.name}`; stop it with `medtui eval stop {job_dir.name}`")
        return EXIT_OK
    if not args.json:
        print(f"evaluation {job_dir.name} started (Ctrl-C detaches; the job goes on)", file=sys.stderr)
    return attach(job_dir, args)
