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


def run(args: argparse.Namespace) -> int:
    from ..evaluate.review import export_message, export_review, import_message, import_review

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
