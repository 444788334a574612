"""Write a copy of a data file with every possible patient identifier replaced by a typed
placeholder ([身份证号], [手机号], [邮箱], [病历号], [姓名]); everything else stays byte for byte the
same (encoding, line endings, quoting, structure). Reports the counts by kind, never a value.
The input is only read. Exit 0 when the output was written, 2 when it could not be.
"""

from __future__ import annotations

import argparse

from ..cli import add_common, print_json
from ..errors import EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the data file (JSON, JSONL, CSV or TSV)")
    parser.add_argument("--out", required=True, metavar="NEW", help="the redacted copy to write (a new file)")
    parser.add_argument("--force", action="store_true", help="replace NEW if it exists")
    parser.add_argument("--format", choices=("json", "jsonl", "csv", "tsv"),
                        help="file format (default: from the extension and content)")
    parser.add_argument("--encoding", metavar="NAME", help="text encoding (default: detect UTF-8 / GB18030 / UTF-16)")
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    from ..privacy.gate import KIND_NOUNS
    from ..privacy.redact import PLACEHOLDERS, redact_file

    result = redact_file(args.file, args.out, force=args.force, format=args.format, encoding=args.encoding)
    if args.json:
        print_json(result.as_dict())
        return EXIT_OK
    print(result.summary())
    for kind, n in result.replaced.items():
        print(f"  {n:>6}  {KIND_NOUNS[kind][0 if n == 1 else 1]:<20} -> {PLACEHOLDERS[kind]}")
    return EXIT_OK
