"""The demo cases the console offers (``data/console_cases.json``: [{title, question}])."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..paths import project_data_dir

CASES_FILE = "console_cases.json"


@dataclass(frozen=True)
class DemoCase:
    title: str
    question: str


def load_console_cases(path: Path | None = None) -> list[DemoCase]:
    """The bundled cases; an absent file gives an empty list, a damaged one a clear message."""
    path = Path(path) if path else project_data_dir() / CASES_FILE
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the demo cases {path}: {exc}") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of {{title, question}} objects")
    out = []
    for i, item in enumerate(data, 1):
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise UserError(f"{path}, case {i}: needs a non-empty 'question' text")
        out.append(DemoCase(str(item.get("title") or f"case {i}"), item["question"].strip()))
    return out


def pick_case(cases: list[DemoCase], which: str) -> DemoCase:
    """A case by 1-based number or by title."""
    if which.isdigit() and 1 <= int(which) <= len(cases):
        return cases[int(which) - 1]
    for c in cases:
        if c.title == which:
            return c
    names = ", ".join(f"{i} {c.title}" for i, c in enumerate(cases, 1)) or "none bundled"
    raise UserError(f"no demo case {which!r}; choose a number or title: {names}")
