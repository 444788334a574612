"""Clinician review of an evaluation report, blinded.

  medtui review export REPORT_DIR [--out DIR] [--seed N]
      write a review pack (review.html, a self-contained page, and review.csv, one row per case to fill):
      each case's answers labelled A and B in an order drawn at random per case, no model named. The key
      that un-blinds it stays in REPORT_DIR (PRIVATE-review-key-*.json): never send it to reviewers.
  medtui review import REPORT_DIR FILLED.csv [--reviewer NAME] [--replace]
      check every row of a filled CSV, un-blind it with the key, and add the clinician's columns (rates with
      n and 95% intervals, paired differences, preferences) to report.json and report.md. Each CSV is one
      reviewer (named after the file unless --reviewer); the report keeps each reviewer and the pooled rates.
      The CSV is only read.
  medtui review judge REPORT_DIR --model DIR|RUN|demo [--rubric FILE] [--max-new-tokens N] [--limit N]
      optional: a local model reads each answer alone with a rubric and answers the same four judgements;
      its columns are labelled as the judge's, apart from the clinicians'.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from ..cli import add_common, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="review_action", metavar="ACTION", required=True)
    s = sub.add_parser("export", help="write a blinded review pack (HTML page + CSV) for clinicians")
    s.add_argument("report", metavar="REPORT_DIR", help="the folder `medtui eval` (or `eval score`) wrote")
    s.add_argument("--out", metavar="DIR", help="where to write the pack (default: REPORT_DIR/review)")
    s.add_argument("--seed", type=int, metavar="N", help="seed of the A/B order (default: drawn at random; "
                   "recorded in the private key either way)")
    add_common(s)
    s = sub.add_parser("import", help="add a filled review CSV to the report as clinician columns")
    s.add_argument("report", metavar="REPORT_DIR", help="the report the pack was exported from")
    s.add_argument("filled", metavar="FILLED.csv", help="the review CSV a clinician filled (only read)")
    s.add_argument("--reviewer", metavar="NAME", help="the reviewer's name (default: the CSV's file name)")
    s.add_argument("--replace", action="store_true",
                   help="replace the judgements of a reviewer already imported from another file")
    add_common(s)
    s = sub.add_parser("judge", help="a local judge model answers the review's judgements (labelled as the judge's)")
    s.add_argument("report", metavar="REPORT_DIR", help="the folder `medtui eval` (or `eval score`) wrote")
    s.add_argument("--model", required=True, metavar="DIR|RUN|demo", help="the judge: a model directory or a run")
    s.add_argument("--rubric", metavar="FILE", help="a rubric text with {question} and {answer} (and optionally "
                   "{reference} and {criteria}) in it (default: the built-in rubric)")
    s.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="longest verdict (default %(default)s)")
    s.add_argument("--limit", type=int, metavar="N", help="only the first N cases (to try a judge out)")
    add_common(s)


def _judge(args: argparse.Namespace) -> int:
    import sys

    from ..context import load_context
    from ..evaluate.judge import judge_message, run_judge

    ctx = load_context(args.workspace, args.config)
    progress = None if args.json else (lambda m: print(f"  ... {m}", file=sys.stderr, flush=True))
    result = run_judge(Path(args.report).expanduser(), args.model,
                       rubric_file=Path(args.rubric).expanduser() if args.rubric else None,
                       max_new_tokens=args.max_new_tokens, runs_dir=ctx.runs_dir, merged_dir=ctx.merged_dir,
                       limit=args.limit, progress=progress)
    if args.json:
        print_json({k: (str(v) if isinstance(v, Path) else v) for k, v in result.items() if k != "report"}
                   | {"judge_block": result["report"]["judge"]["judges"][result["judge"]]})
    else:
        print(judge_message(result))
    return 0


def run(args: argparse.Namespace) -> int:
    from ..evaluate.review import export_message, export_review, import_message, import_review

    if args.review_action == "judge":
        return _judge(args)
    if args.review_action == "export":
        r = export_review(Path(args.report).expanduser(), Path(args.out).expanduser() if args.out else None,
                          args.seed)
        if args.json:
            print_json({k: str(v) if isinstance(v, Path) else v for k, v in asdict(r).items()})
        else:
            print(export_message(r))
        return 0
    r = import_review(Path(args.report).expanduser(), Path(args.filled).expanduser(), args.reviewer, args.replace)
    if args.json:
        print_json({"report_dir": str(r.report_dir), "reviewer": r.reviewer, "csv": str(r.csv), "cases": r.n_cases,
                    "judgements": r.n_judgements, "replaced": r.replaced, "clinician": r.report["clinician"]})
    else:
        print(import_message(r))
    return 0
