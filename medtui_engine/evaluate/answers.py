"""Saved answers: one JSONL file per model, one object a line, so a report can be rescored without a model.

Each line has at least ``id``, ``question``, ``reference_diagnosis`` (a name, a list of names, or null)
and ``answer`` (the model's full output, think block included). ``medtui eval`` also writes ``sample``
(0.. for k samples per case), ``kind`` (flat | clinical | exam), ``exam_answer`` and ``options`` for
exam questions, ``reference_answer``, ``prompt_opened_think`` (the prompt itself ended in ``<think>``),
``stats`` (timing, ``cut_off``), and ``model``, ``template``, ``demo`` describing the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError

REQUIRED = ("id", "question", "reference_diagnosis", "answer")


def prompt_opened_think(row: dict) -> bool:
    """Saved by ``medtui eval``; for other files: the output closes a think block it never opened."""
    if isinstance(row.get("prompt_opened_think"), bool):
        return row["prompt_opened_think"]
    answer = row.get("answer") or ""
    return "</think>" in answer and "<think>" not in answer


def read_answers(path: Path) -> list[dict]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such answers file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; give an answers file (JSONL)") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; an answers file is UTF-8 JSONL") from None
    rows, seen = [], {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {n} is not valid JSON ({exc.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {n} is not an object; each line is one answer with fields "
                            f"{', '.join(REQUIRED)}")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise UserError(f"{path}: line {n} has no field {missing[0]!r}; each line needs {', '.join(REQUIRED)} "
                            "(reference_diagnosis may be null)")
        if not isinstance(row["answer"], str):
            raise UserError(f"{path}: line {n}, field 'answer': expected the model's full output as text")
        if not isinstance(row["question"], str):
            raise UserError(f"{path}: line {n}, field 'question': expected text")
        ref = row["reference_diagnosis"]
        if ref is not None and not (isinstance(ref, str) or (isinstance(ref, list) and all(isinstance(x, str) for x in ref))):
            raise UserError(f"{path}: line {n}, field 'reference_diagnosis': expected a name, a list of names, or null")
        if not isinstance(row["id"], (str, int)) or str(row["id"]) == "":
            raise UserError(f"{path}: line {n}, field 'id': expected a non-empty text or number")
        sample = row.get("sample", 0)
        if not isinstance(sample, int) or sample < 0:
            raise UserError(f"{path}: line {n}, field 'sample': expected a whole number from 0")
        key = (str(row["id"]), sample)
        if key in seen:
            raise UserError(f"{path}: line {n} repeats id {key[0]!r} sample {sample} (first on line {seen[key]}); "
                            "give each sample of a case its own 'sample' number")
        seen[key] = n
        rows.append({**row, "id": str(row["id"]), "sample": sample})
    if not rows:
        raise UserError(f"{path}: no answers found")
    return rows


def write_answers(path: Path, rows: list[dict]) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
