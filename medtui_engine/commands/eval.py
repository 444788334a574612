"""Evaluate a tuned model against its base on cases with reference diagnoses. Deterministic measures
(sections present, basis and differential counts, diagnosis match tiers, think block, cut-offs,
latency), each with its method, n and 95% intervals, in a JSON + Markdown report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_common, print_json
from ..context import load_context
from ..errors import UserError
from ..paths import project_data_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR|RUN|demo", help="the tuned model: a merged dir, a run, or an adapter")
    parser.add_argument("--base", default="auto", metavar="DIR|auto|none",
                        help="compare with: auto (the tuned model's base), a model dir, or none")
    parser.add_argument("--cases", metavar="FILE", help="case file (JSONL/JSON/CSV; default: data/demo_eval.jsonl)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N cases")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.3)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.cases import load_eval_cases
    from ..evaluate.report import DISCLAIMER
    from ..evaluate.runner import run_evaluation
    from ..infer import SamplingSettings, resolve_source

    ctx = load_context(args.workspace, args.config)
    cases_file = Path(args.cases).expanduser() if args.cases else project_data_dir() / "demo_eval.jsonl"
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    cases = load_eval_cases(cases_file, args.limit)
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
    report, where = run_evaluation(sources, cases, cases_file, settings, ctx.reports_dir, progress)
    if args.json:
        print_json({"report_dir": str(where), **{k: v for k, v in report.items() if k != "models"},
                    "summary": {n: m["summary"] for n, m in report["models"].items()}})
    else:
        print((where / "report.md").read_text(encoding="utf-8"))
        print(f"report: {where}/report.md and report.json")
        print(DISCLAIMER)
    return 0
