"""Evaluate a tuned model against its base on cases with reference diagnoses. Deterministic measures
(sections with content, basis and differential counts, diagnosis matched as a clinician would accept it,
exam letters, think block, cut-offs, latency), each with its method, n and 95% intervals, and base vs
tuned as paired differences (McNemar's exact test, paired bootstrap), in a JSON + Markdown report.
Every model's answers are saved as JSONL; `medtui eval score ANSWERS.jsonl` rescores them without a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_common, print_json
from ..context import load_context
from ..errors import UserError
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
    _add_synonyms(parser)
    add_common(parser)
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


def run(args: argparse.Namespace) -> int:
    if getattr(args, "eval_action", None) == "score":
        return _score(args)
    from ..evaluate.cases import load_eval_cases
    from ..evaluate.runner import run_evaluation
    from ..infer import SamplingSettings, resolve_source

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
    synonyms = _synonyms(args.synonyms)
    settings = SamplingSettings(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                seed=args.seed).checked()
    tuned = resolve_source(args.model, ctx.runs_dir, ctx.merged_dir)
    sources = {}
    if args.base == "auto":
        if tuned.adapter_dir is not None or tuned.kind == "merged":
            sources["base"] = tuned.base()
    elif args.base != "none":
        sources["base"] = resolve_source(args.base, ctx.runs_dir, ctx.merged_dir).with_template(tuned.template)
    sources["tuned"] = tuned
    progress = None if args.json else (lambda m: print(f"  ... {m}", file=sys.stderr, flush=True))
    report, where = run_evaluation(sources, cases, cases_file, settings, ctx.reports_dir, progress,
                                   samples=args.samples, synonyms=synonyms)
    _print_report(args, report, where)
    return 0
