"""Facts as rows: (label, value, severity, hint), formatted once in the engine.

The ``describe_*`` functions (:mod:`medtui_engine.jobs.describe`) return rows; the CLI prints them
with :func:`format_rows` and the TUI styles them (``medtui/widgets/rows.py``), so a fact is worded
in one place and both front ends say the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    """How much a row matters (the same scale as the environment check's verdicts)."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    PROBLEM = "problem"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


@dataclass(frozen=True)
class Row:
    label: str                        # a short name: "base", "output", "stops"
    value: str                        # the fact, as a sentence or a figure
    severity: Severity = Severity.INFO
    hint: str = ""                    # what the user can do about it (empty when nothing)

    def as_dict(self) -> dict:
        return {"label": self.label, "value": self.value, "severity": str(self.severity), "hint": self.hint}


def worst(rows: Iterable[Row]) -> Severity:
    return max((r.severity for r in rows), key=lambda s: s.rank, default=Severity.OK)


def sentence(row: Row) -> str:
    """The row as one sentence: the value, then the hint after a semicolon (no label)."""
    return f"{row.value}; {row.hint}" if row.hint else row.value


def format_row(row: Row, width: int = 10) -> str:
    """One row as plain text: the label in a column of ``width``, then the value; the hint after
    ``->`` on a line of its own when there is one."""
    label = f"{row.label:<{width}}" if row.label else ""
    text = f"{label}{row.value}" if label else row.value
    if row.hint:
        text += f"\n{'':<{width}}-> {row.hint}"
    return text


def format_rows(rows: Iterable[Row], width: int | None = None) -> str:
    """Rows as plain text for a terminal (the labels aligned)."""
    rows = list(rows)
    if width is None:
        width = max((len(r.label) for r in rows), default=0)
        width = width + 2 if width else 0
    return "\n".join(format_row(r, width) for r in rows)
