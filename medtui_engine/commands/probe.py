"""Probe a model for memorization: does it give back the canaries planted at training time
(`medtui train --canaries FILE`), or the patient identifiers in the rows it trained on? Each is prompted
with the training text before it (a canary: and its first half) and continued greedily; a value counts
when it comes back verbatim. Identifiers are never shown, only their kind, row and field; canaries are
shown as the user wrote them. Writes probe.json (in the run directory for a run, else in --out or the
workspace's reports), which `medtui eval` adds to its report. Exit 0 when nothing came back, 1 when
something did, 2 when the probe could not run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cli import add_common, print_json
from ..errors import EXIT_FAILED, EXIT_OK, UserError
from ..templates import TEMPLATES

EXAMPLES = """examples:
  medtui probe RUN                            the run's canaries and the identifier rows it trained on
  medtui probe BASE_DIR --canaries FILE       the untrained base, on the same canaries
  medtui probe MERGED_DIR --data FILE --json  a merged model, on the rows of FILE"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..privacy.probe import DEFAULT_LIMIT
    from ..train.spec import setting

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("model", metavar="RUN|MODEL_DIR",
                        help="a run (its adapter on its base), a merged model, a plain model directory, or demo")
    parser.add_argument("--canaries", metavar="FILE", help="the canaries to look for (default: the ones the run planted)")
    parser.add_argument("--data", metavar="FILE",
                        help="training rows to look for identifiers in (default: the rows the run trained on)")
    for name, default in (("field_question", "Question"), ("field_cot", "Complex_CoT"), ("field_response", "Response")):
        s = setting(name)
        parser.add_argument(s.flag, dest=name, default=default, metavar=s.metavar,
                            help=f"with --data: {s.label.lower()} (default {default})")
    parser.add_argument("--template", choices=TEMPLATES, help="override the template recorded with the model")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                        help=f"probe at most N identifier occurrences (default {DEFAULT_LIMIT})")
    parser.add_argument("--out", metavar="DIR", help="write probe.json here (default: the run directory for a run, "
                                                     "else a new probe-<time> folder in the workspace's reports)")
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    from ..context import load_context
    from ..offline import skip_cuda_only_packages
    from ..privacy.probe import probe_rows, reproduced_any, resolve_inputs, run_probe, write_probe
    from ..rows import format_rows

    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    ctx = load_context(args.workspace, args.config)
    inputs = resolve_inputs(args.model, ctx.runs_dir, ctx.merged_dir, canaries_file=args.canaries,
                            data_file=args.data, fields=(args.field_question, args.field_cot, args.field_response),
                            template=args.template)
    progress = None if args.json else (lambda m: print(f"  ... {m}", file=sys.stderr, flush=True))
    skip_cuda_only_packages()   # this process loads a model and ends: on a machine without CUDA, a faster start
    result = run_probe(inputs, limit=args.limit, progress=progress)
    if args.out:
        out = Path(args.out).expanduser()
    elif inputs.run_dir is not None and not args.canaries and not args.data:
        out = inputs.run_dir
    else:
        out = ctx.reports_dir / time.strftime("probe-%Y%m%d-%H%M%S")
    path = write_probe(result, out)
    if args.json:
        print_json({"probe_file": str(path), **result})
    else:
        print(format_rows(probe_rows(result)))
        print(f"probe: {path}")
    return EXIT_FAILED if reproduced_any(result) else EXIT_OK
