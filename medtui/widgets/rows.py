"""The engine's rows (:class:`medtui_engine.rows.Row`), styled for the screen: the one place where
a severity becomes a colour. The words are the engine's (the CLI prints the same rows)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text

from medtui_engine.rows import Row, Severity

SEVERITY_STYLE = {
    Severity.OK: "green",
    Severity.INFO: "",
    Severity.WARNING: "yellow",
    Severity.PROBLEM: "bold red",
}


def row_text(row: Row, label_width: int = 12) -> Text:
    """``Label       value  (hint)``: the label bold, the value in its severity's colour, the hint dim."""
    t = Text()
    if row.label:
        t.append(f"{row.label:<{label_width}}", style="bold")
    t.append(row.value, style=SEVERITY_STYLE[Severity(row.severity)])
    if row.hint:
        t.append(f"  ({row.hint})", style="dim")
    return t


def rows_text(rows: Iterable[Row], label_width: int | None = None) -> Text:
    rows = list(rows)
    if label_width is None:
        label_width = max((len(r.label) for r in rows), default=0) + 2
    return Text("\n").join(row_text(r, label_width) for r in rows)


def sentence_text(row: Row, base: str = "italic") -> Text:
    """The row as one sentence (value; hint), for a status line: problems in red, warnings in
    yellow, the rest in ``base``."""
    severity = Severity(row.severity)
    style = "red" if severity is Severity.PROBLEM else f"{base} yellow" if severity is Severity.WARNING else base
    return Text(f"{row.value}; {row.hint}" if row.hint else row.value, style=style)
