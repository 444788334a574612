"""Reading an evaluation case file: JSONL, a JSON array, or CSV; one case a row."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

QUESTION_KEYS = ("Question", "question", "case", "input", "instruction")
REFERENCE_KEYS = ("reference_diagnosis", "diagnosis", "answer_diagnosis")
ANSWER_KEYS = ("reference_answer", "Response", "response", "answer")


@dataclass(frozen=True)
class EvalCase:
    id: str
    question: str
    reference_diagnosis: list[str] | str | None
    reference_answer: str | None


def _first(rec: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in rec and rec[k] not in (None, ""):
            return rec[k]
    return None


def _rows(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such case file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".csv" or suffix == ".tsv":
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        return [(i, dict(r)) for i, r in enumerate(reader, start=2)]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON array of cases")
        return list(enumerate(data, start=1))
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {n} is not valid JSON ({exc.msg}); fix or remove that line") from None
    return rows


def load_eval_cases(path: Path, limit: int | None = None) -> list[EvalCase]:
    cases = []
    for row, rec in _rows(path):
        if not isinstance(rec, dict):
            raise UserError(f"{path}: row {row} is not an object with fields")
        q = _first(rec, QUESTION_KEYS)
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"{path}: row {row} has no question (field 'Question'); every case needs one")
        cases.append(EvalCase(str(rec.get("id") or f"row-{row}"), q.strip(), _first(rec, REFERENCE_KEYS),
                              _first(rec, ANSWER_KEYS)))
        if limit and len(cases) >= limit:
            break
    if not cases:
        raise UserError(f"{path}: no cases found")
    return cases
