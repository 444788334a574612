"""Load, map, validate and measure a data set of cases, as training will see it.

Exit status: 0 when the data is clean or has warnings only (go), 1 when it has errors (no-go),
2 when the file (or the model's tokenizer) cannot be read. Possible patient identifiers are shown
masked. The input file is only read, never changed.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import add_common, print_json
from ..errors import EXIT_USAGE, UserError

_SEVERITY_LABEL = {"error": "ERROR", "warning": "warn ", "info": "info "}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="JSON, JSONL, CSV/TSV, Parquet, or a datasets.save_to_disk directory")
    parser.add_argument("--model", metavar="DIR", help="model whose tokenizer measures the rows: a directory or 'demo' "
                        "(default: the settings' default_model)")
    parser.add_argument("--template", choices=("seed", "chat"), help="prompt format (default: the settings' template)")
    parser.add_argument("--max-seq-length", type=int, default=8192, metavar="N",
                        help="longest row the trainer keeps, in tokens (default: %(default)s)")
    parser.add_argument("--map", metavar="FIELD=COL,...", dest="mapping",
                        help="columns for the fields, e.g. question=input,cot=reasoning,response=output (cot=- for none)")
    parser.add_argument("--format", choices=("json", "jsonl", "csv", "tsv", "parquet", "arrow"),
                        help="file format (default: from the extension and content)")
    parser.add_argument("--encoding", metavar="NAME", help="text encoding (default: detect UTF-8 / GB18030 / UTF-16)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="per-device batch size (default 1)")
    parser.add_argument("--grad-accum", type=int, default=8, metavar="N", help="gradient accumulation steps (default 8)")
    parser.add_argument("--devices", type=int, default=1, metavar="N", help="GPUs training together (default 1)")
    parser.add_argument("--tokens-per-second", type=float, metavar="T",
                        help="training throughput you expect (e.g. from medtui bench); gives an epoch time estimate")
    parser.add_argument("--eval-fraction", type=float, default=0.0, metavar="F",
                        help="share of rows held out for evaluation (counts for steps per epoch)")
    parser.add_argument("--no-measure", action="store_true", help="skip token measurement (no tokenizer needed)")
    parser.add_argument("--all", action="store_true", help="list every finding (default: the first 40)")
    add_common(parser)


def _int_at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise UserError(f"{name} must be at least {low}, got {value}")


def run(args: argparse.Namespace) -> int:
    from ..context import load_context
    from ..dataset.load import mapping_from
    from ..dataset.validate import validate_file

    ctx = load_context(args.workspace, args.config, create=False)
    for name in ("batch_size", "grad_accum", "devices"):
        _int_at_least("--" + name.replace("_", "-"), getattr(args, name), 1)
    _int_at_least("--max-seq-length", args.max_seq_length, 16)
    if not 0.0 <= args.eval_fraction < 1.0:
        raise UserError(f"--eval-fraction must be at least 0 and below 1, got {args.eval_fraction}")
    if args.tokens_per_second is not None and args.tokens_per_second <= 0:
        raise UserError("--tokens-per-second must be above 0")
    template = args.template or ctx.settings.template
    model = None if args.no_measure else (args.model or ctx.settings.default_model or "demo")
    progress = None if args.json or not sys.stderr.isatty() else _progress_line
    report = validate_file(
        args.file, mapping_from(args.mapping), model=model, template=template,
        max_seq_length=args.max_seq_length, batch_size=args.batch_size,
        grad_accum=args.grad_accum, devices=args.devices, tokens_per_second=args.tokens_per_second,
        eval_fraction=args.eval_fraction, format=args.format, encoding=args.encoding, progress=progress)
    if progress:
        sys.stderr.write("\r\033[K")
    if args.json:
        print_json(report.as_dict())
    else:
        print_text(report, limit=None if args.all else 40)
    return report.exit_code


def _progress_line(stage: str, done: int, total: int) -> None:
    pct = f" {100 * done // total}%" if total > 1 else ""
    sys.stderr.write(f"\r\033[K{stage}…{pct}")
    sys.stderr.flush()


def print_text(report, limit: int | None = 40) -> None:  # report: a ValidationReport (imported lazily)
    from ..dataset.load import FIELD_TITLES
    from ..dataset.measure import format_duration
    from ..sections import SECTION_LABELS

    ds = report.dataset
    print(f"{ds.path}: {ds.format}, {ds.encoding}, {ds.total_rows} rows ({len(ds.cases)} usable), "
          f"sha256 {ds.sha256[:12]}…" + (f"; {ds.note}" if ds.note else ""))
    mapped = ", ".join(f"{FIELD_TITLES[k]} <- {v if v else '(none)'}" for k, v in ds.mapping.as_dict().items())
    print(f"mapping: {mapped}")
    if ds.extra_columns:
        print(f"ignored columns: {', '.join(ds.extra_columns)}")
    m = report.measurement
    if m:
        print(f"tokens ({report.model}, template {report.template}): total {m.total_tokens:,}, "
              f"p50 {m.p50}, p95 {m.p95}, max {m.max}; trained (think+answer+EOS) {m.trained_tokens:,}")
        if m.too_long:
            print(f"too long: {m.too_long} row(s) over max_seq_length {m.max_seq_length} "
                  f"(by up to {m.too_long_max_over}, mean {m.too_long_mean_over} tokens)")
        else:
            print(f"too long: none over max_seq_length {m.max_seq_length}")
    if ds.cases:
        rates = ", ".join(f"{SECTION_LABELS[k]} {v:.0%}" for k, v in report.section_rates.items())
        print(f"answer sections: {rates}; all five {report.all_sections_rate:.0%}; "
              f"three elements {report.three_elements_rate:.0%}")
    est = report.estimate
    if est:
        line = (f"epoch: {est.steps_per_epoch} optimizer steps ({est.train_rows} rows / batch {est.batch_size} x "
                f"accum {est.grad_accum} x {est.devices} device(s)), {est.tokens_per_epoch:,} tokens")
        if est.epoch_seconds is not None:
            line += f", ~{format_duration(est.epoch_seconds)} at {est.tokens_per_second:,.0f} tokens/s"
        print(line)
    findings = report.sorted_findings()
    print(f"findings: {report.errors} error(s), {report.warnings} warning(s), {report.infos} note(s)")
    shown = findings if limit is None else findings[:limit]
    for f in shown:
        print(f"  {_SEVERITY_LABEL[f.severity]} {f.where:<22} {f.kind}: {f.message}")
        print(f"        -> {f.hint}")
    if len(shown) < len(findings):
        print(f"  … {len(findings) - len(shown)} more (--all lists every one, --json gives them all)")
    print(report.summary)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(EXIT_USAGE)
