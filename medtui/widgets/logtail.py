"""The tail of a job's ``stdout.log``, drawn: :class:`LogTail` only draws the last lines it is given.

The I/O half, :class:`medtui_engine.jobs.logtail.LogTailReader`, runs in the watcher thread.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget


class LogTail(Widget):
    """Shows the last lines of a log, newest at the bottom, cut to the widget's width."""

    DEFAULT_CSS = """
    LogTail {
        height: 1fr;
        color: $text-muted;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self._lines: tuple[str, ...] = ()
        self.empty_text = "(no output yet)"

    @property
    def lines(self) -> tuple[str, ...]:
        return self._lines

    @lines.setter
    def lines(self, value: tuple[str, ...]) -> None:
        if value != self._lines:
            self._lines = tuple(value)
            self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        base = self.rich_style
        shown = self._lines[-height:] if height else ()
        if not shown:
            text = self.empty_text if y == 0 else ""
            return Strip([Segment(text, base + Style(dim=True))]).crop(0, width).extend_cell_length(width, base)
        # bottom-aligned: the newest line on the last row
        idx = y - (height - len(shown))
        if idx < 0:
            return Strip.blank(width, base)
        return Strip([Segment(shown[idx], base)]).crop(0, width).extend_cell_length(width, base)
