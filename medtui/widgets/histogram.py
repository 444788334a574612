"""A token-length histogram in text: vertical block bars, an axis, and the max_seq_length mark.

Fed plain tuples (bin edges and counts from the engine's ``Histogram``); draws to its own width
and height, so it stays readable at 80x24. No animation.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

_BLOCKS = " ▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class HistogramData:
    edges: tuple[int, ...]     # len(counts) + 1 bin edges (tokens)
    counts: tuple[int, ...]
    limit: int | None = None   # max_seq_length: marked on the axis; bars past it are drawn in the error colour
    label: str = "tokens per row"


def rebin(edges: tuple[int, ...], counts: tuple[int, ...], bins: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Merge neighbouring bins until at most ``bins`` remain (for narrow terminals)."""
    if len(counts) <= bins or bins < 1:
        return edges, counts
    step = -(-len(counts) // bins)
    new_counts = tuple(sum(counts[i:i + step]) for i in range(0, len(counts), step))
    new_edges = tuple(edges[i] for i in range(0, len(counts), step)) + (edges[-1],)
    return new_edges, new_counts


def render_histogram(data: HistogramData, width: int, height: int) -> Text:
    """The chart as text: ``height - 2`` rows of bars, an axis row and a label row."""
    if not data.counts or sum(data.counts) == 0:
        return Text("no rows measured yet", style="dim")
    bar_rows = max(1, height - 2)
    edges, counts = rebin(data.edges, data.counts, max(1, width // 2))
    col = max(1, min(6, width // len(counts)))
    peak = max(counts)
    out = Text()
    for level in range(bar_rows, 0, -1):
        for i, c in enumerate(counts):
            eighths = round(c / peak * bar_rows * 8) if peak else 0
            filled = eighths - (level - 1) * 8
            ch = _BLOCKS[max(0, min(8, filled))] if c else " "
            if c and filled <= 0 and level == 1:
                ch = _BLOCKS[1]  # a non-empty bin never disappears
            over = data.limit is not None and edges[i] >= data.limit
            out.append((ch * (col - 1) + " ") if col > 1 else ch, style="red" if over else "cyan")
        if level == bar_rows:
            out.append(f" {peak}", style="dim")
        out.append("\n")
    axis = ["─"] * (col * len(counts))
    if data.limit is not None and 0 < data.limit <= edges[-1]:
        pos = min(len(axis) - 1, int(data.limit / edges[-1] * len(axis)))
        axis[pos] = "┃"  # where max_seq_length falls
    out.append("".join(axis) + "\n", style="dim")
    left, right = f"{edges[0]}", f"{edges[-1]} {data.label}"
    gap = max(1, col * len(counts) - len(left) - len(right))
    out.append(left + " " * gap + right, style="dim")
    return out


class TokenHistogram(Widget):
    DEFAULT_CSS = """
    TokenHistogram { height: 10; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._data: HistogramData | None = None

    @property
    def data(self) -> HistogramData | None:
        return self._data

    @data.setter
    def data(self, value: HistogramData | None) -> None:
        self._data = value
        self.refresh()

    def render(self) -> Text:
        if self._data is None:
            return Text("validate a file to see its token lengths", style="dim")
        return render_histogram(self._data, max(10, self.size.width - 8), max(3, self.size.height))
