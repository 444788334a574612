"""Loading a data set of cases: read the file, map its columns to question / reasoning / answer,
and keep every usable row as a ``Case``. Rows that cannot be used are kept aside with the reason.

This is what training uses too (``load_cases`` + ``split_cases`` + ``templates.render_case``), so
the rows validated are exactly the rows trained on. The input file is only ever read.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .findings import Finding, finding
from .readers import RawTable, read_table

# The mapped fields, in the order they appear in the template.
FIELDS = ("question", "cot", "response")
FIELD_TITLES = {"question": "Question", "cot": "Complex_CoT", "response": "Response"}

# Names tried (case-insensitively, in order) when no explicit mapping is given.
ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("Question", "question", "input", "instruction", "prompt", "query", "问题", "病例"),
    "cot": ("Complex_CoT", "cot", "reasoning", "think", "thinking", "thought", "rationale",
            "chain_of_thought", "思考过程", "推理"),
    "response": ("Response", "response", "answer", "output", "completion", "回答", "答案"),
}


@dataclass(frozen=True)
class Case:
    """One usable row after mapping."""

    row: int           # 1-based row in the source file (JSONL: line number; JSON/CSV/Parquet: record index)
    question: str
    cot: str           # "" when Complex_CoT is absent
    response: str
    extra: dict        # unmapped fields (ignored for training)


@dataclass(frozen=True)
class FieldMapping:
    """Which column holds each field. ``cot=None``: no reasoning column (empty think block)."""

    question: str = "Question"
    cot: str | None = "Complex_CoT"
    response: str = "Response"

    def as_dict(self) -> dict[str, str | None]:
        return {"question": self.question, "cot": self.cot, "response": self.response}


@dataclass
class LoadedDataset:
    path: Path
    format: str                     # json | jsonl | csv | tsv | parquet | arrow
    encoding: str                   # utf-8, utf-8-sig, gb18030, utf-16, or "binary" (Parquet/Arrow)
    mapping: FieldMapping           # resolved: the real column names used
    cases: list[Case]
    skipped: list[Finding]          # rows not usable, one finding each (row, field, kind, why)
    columns: list[str]              # every column seen, in first-seen order
    extra_columns: list[str]        # columns not mapped (listed, ignored for training)
    notices: list[Finding] = field(default_factory=list)  # file-level and non-fatal row notes
    total_rows: int = 0             # rows in the file, usable or not
    sha256: str = ""                # of the input bytes, recorded with a run
    size_bytes: int = 0
    note: str = ""                  # how a container was read (a key, a split)

    @property
    def skipped_rows(self) -> list[int]:
        return sorted({f.row for f in self.skipped})

    def case_by_row(self, row: int) -> Case | None:
        lo, hi = 0, len(self.cases)
        while lo < hi:  # cases are in row order
            mid = (lo + hi) // 2
            if self.cases[mid].row < row:
                lo = mid + 1
            else:
                hi = mid
        return self.cases[lo] if lo < len(self.cases) and self.cases[lo].row == row else None


def parse_mapping(spec: str) -> dict[str, str | None]:
    """``question=Q,cot=Reasoning,response=A`` (``cot=`` or ``cot=-`` means: no reasoning column)."""
    out: dict[str, str | None] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in FIELDS:
            raise UserError(f"--map: '{part}' is not FIELD=COLUMN with FIELD one of {', '.join(FIELDS)}")
        value = value.strip()
        if not value or value == "-":
            if key != "cot":
                raise UserError(f"--map: {key} needs a column name")
            out[key] = None
        else:
            out[key] = value
    return out


def mapping_from(spec: str | dict | None) -> FieldMapping | None:
    """A mapping from a ``--map`` string or dict; fields not given keep their defaults."""
    if spec is None or spec == "":
        return None
    values = parse_mapping(spec) if isinstance(spec, str) else dict(spec)
    return FieldMapping(**{**FieldMapping().as_dict(), **values})


def _columns_of(table: RawTable) -> list[str]:
    seen: dict[str, None] = {}
    for raw in table.rows:
        if raw.record is not None:
            for key in raw.record:
                if key not in seen:
                    seen[key] = None
    return list(seen)


def _find_column(columns: list[str], names: tuple[str, ...]) -> str | None:
    exact = set(columns)
    for name in names:
        if name in exact:
            return name
    lower = {c.lower().strip(): c for c in reversed(columns)}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    return None


def resolve_mapping(path: Path, columns: list[str], mapping: FieldMapping | None) -> FieldMapping:
    """The real column names to use; raises UserError naming the columns when a field cannot be found."""
    shown = ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else "")
    resolved: dict[str, str | None] = {}
    for name in FIELDS:
        if mapping is not None:
            wanted = getattr(mapping, name)
            if wanted is None:
                resolved[name] = None
                continue
            col = _find_column(columns, (wanted,))
            # An explicit non-default column that is absent is a mistake; the defaults fall back to aliases.
            if col is None and wanted == getattr(FieldMapping(), name):
                col = _find_column(columns, ALIASES[name])
            if col is None and (name != "cot" or wanted != FieldMapping().cot):
                raise UserError(f"{path}: no column '{wanted}' for {FIELD_TITLES[name]}; the columns are: {shown}")
        else:
            col = _find_column(columns, ALIASES[name])
        if col is None and name != "cot":
            raise UserError(
                f"{path}: no column for {FIELD_TITLES[name]} (tried {', '.join(ALIASES[name][:6])}); "
                f"the columns are: {shown}; name it with --map {name}=COLUMN")
        resolved[name] = col
    used = [c for c in resolved.values() if c is not None]
    if len(set(used)) != len(used):
        raise UserError(f"{path}: one column is mapped to two fields ({resolved}); give each field its own column")
    return FieldMapping(resolved["question"], resolved["cot"], resolved["response"])  # type: ignore[arg-type]


_TYPE_NAMES = {"int": "number", "float": "number", "bool": "true/false value", "list": "list", "dict": "object"}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value).__name__, type(value).__name__)


def _field_problem(row: int, name: str, column: str, value: object) -> Finding | None:
    label = f"{FIELD_TITLES[name]} (column '{column}')" if column != FIELD_TITLES[name] else FIELD_TITLES[name]
    if value is None:
        return finding("null_field", row, name, f"{label} is null")
    if not isinstance(value, str):
        return finding("not_string", row, name, f"{label} is a {_type_name(value)}, not text")
    if not value.strip():
        return finding("empty_field", row, name, f"{label} is empty" if not value else f"{label} is whitespace only")
    return None


def load_cases(path: str | Path, mapping: FieldMapping | None = None, *, format: str | None = None,
               encoding: str | None = None) -> LoadedDataset:
    """Read and map a data file. Raises ``UserError`` (naming the file and what to do) when unreadable."""
    path = Path(path).expanduser()
    table = read_table(path, format, encoding)
    columns = _columns_of(table)
    if not columns and not table.rows:
        raise UserError(f"{path}: no rows; nothing to validate")
    if not columns:
        # Nothing parsed as a record: keep going so every bad row is reported.
        resolved = mapping or FieldMapping()
    else:
        resolved = resolve_mapping(path, columns, mapping)
    mapped = {c for c in resolved.as_dict().values() if c is not None}
    extra_columns = [c for c in columns if c not in mapped]

    notices = list(table.notices)
    if resolved.cot is None and columns:
        notices.append(finding("no_cot_column", 0, "cot",
                               "no reasoning column (Complex_CoT or an alias): the <think> block will be empty in every row"))
    if extra_columns:
        notices.append(finding("unmapped_columns", 0, "",
                               f"{len(extra_columns)} column(s) not used for training: {', '.join(extra_columns[:12])}"
                               + (" ..." if len(extra_columns) > 12 else "")))

    cases: list[Case] = []
    skipped: list[Finding] = []
    qcol, ccol, rcol = resolved.question, resolved.cot, resolved.response
    for raw in table.rows:
        rec = raw.record
        if rec is None:
            if raw.problem is not None:
                skipped.append(raw.problem)
            continue
        problem = None
        for name, col in (("question", qcol), ("response", rcol)):
            if col not in rec:
                problem = finding("missing_field", raw.row, name,
                                  f"{FIELD_TITLES[name]} (column '{col}') is missing from this row")
            else:
                problem = _field_problem(raw.row, name, col, rec[col])
            if problem:
                break
        if problem:
            skipped.append(problem)
            continue
        cot = ""
        if ccol is not None:
            value = rec.get(ccol)
            if ccol not in rec:
                notices.append(finding("missing_field", raw.row, "cot", f"Complex_CoT (column '{ccol}') is missing: the think block will be empty", severity="warning"))
            elif value is None or (isinstance(value, str) and not value.strip()):
                kind = "null_field" if value is None else "empty_field"
                notices.append(finding(kind, raw.row, "cot", "Complex_CoT is " + ("null" if value is None else "empty")
                                       + ": the think block will be empty", severity="warning",
                                       hint="fill in the reasoning, or accept an empty <think> block for this row"))
            elif not isinstance(value, str):
                skipped.append(finding("not_string", raw.row, "cot", f"Complex_CoT is a {_type_name(value)}, not text"))
                continue
            else:
                cot = value
        extra = {k: v for k, v in rec.items() if k not in mapped} if extra_columns else {}
        cases.append(Case(raw.row, rec[qcol], cot, rec[rcol], extra))

    digest, size = _digest(path)
    return LoadedDataset(path=path, format=table.format, encoding=table.encoding, mapping=resolved, cases=cases,
                         skipped=skipped, columns=columns, extra_columns=extra_columns, notices=notices,
                         total_rows=len(table.rows), sha256=digest, size_bytes=size, note=table.note)


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


def split_cases(cases: list[Case], eval_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Deterministic train/eval split: the same cases, fraction and seed always give the same split.

    Both parts keep the file's row order. With a fraction above 0 and at least two cases, the eval
    part has at least one case and the train part keeps at least one.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"eval fraction must be at least 0 and below 1, got {eval_fraction}")
    n = len(cases)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    eval_idx = set(order[:n_eval])
    train = [c for i, c in enumerate(cases) if i not in eval_idx]
    evals = [c for i, c in enumerate(cases) if i in eval_idx]
    return train, evals


def split_record(dataset: LoadedDataset, train: list[Case], evals: list[Case], eval_fraction: float,
                 seed: int) -> dict[str, object]:
    """What a run records about its data (spec.json): enough to rebuild the exact split."""
    return {
        "path": str(dataset.path),
        "format": dataset.format,
        "encoding": dataset.encoding,
        "sha256": dataset.sha256,
        "mapping": dataset.mapping.as_dict(),
        "rows_total": dataset.total_rows,
        "rows_usable": len(dataset.cases),
        "rows_skipped": dataset.skipped_rows,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "train_rows": len(train),
        "eval_rows": [c.row for c in evals],
    }
