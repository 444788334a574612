"""Small one-line gauges: GPU memory (used / total with the peak marked) and sparkline histories.

Both are pure functions of their data (``gauge_strip`` / ``spark_strip``) plus a thin widget that
caches its strip; the whole history is bucketed to the widget's width (max of each bucket, so a
short spike is never averaged away).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

BLOCKS = " ▁▂▃▄▅▆▇█"


def fmt_mib(mib: float | None) -> str:
    if mib is None:
        return "-"
    return f"{mib / 1024:.1f}"


@dataclass(frozen=True)
class GaugeData:
    label: str = "VRAM"
    used: float | None = None        # MiB
    total: float | None = None       # MiB
    peak: float | None = None        # MiB
    note: str = ""                   # shown when there is nothing to draw (no GPU)


def gauge_strip(data: GaugeData, width: int, base: Style | None = None) -> Strip:
    """``VRAM ▕█████░░░│░░▏ 18.2/80.0 GiB pk 19.1`` (│ marks the peak)."""
    base = base or Style()
    dim = base + Style(dim=True)
    label = f"{data.label} "
    if data.total is None or not data.total or data.used is None:
        text = data.note or "no GPU readings"
        return Strip([Segment(label, base + Style(bold=True)), Segment(text, dim)]).crop(0, width) \
            .extend_cell_length(width, base)
    value = f" {fmt_mib(data.used)}/{fmt_mib(data.total)} GiB"
    if data.peak is not None:
        value += f" pk {fmt_mib(data.peak)}"
    bar_w = max(0, width - len(label) - len(value) - 2)
    frac = max(0.0, min(1.0, data.used / data.total))
    color = "green" if frac < 0.8 else ("yellow" if frac < 0.95 else "red")
    filled = int(round(frac * bar_w))
    peak_at = None
    if data.peak is not None and bar_w:
        peak_at = min(bar_w - 1, int(round(max(0.0, min(1.0, data.peak / data.total)) * bar_w)) - 1)
    segs = [Segment(label, base + Style(bold=True)), Segment("▕", dim)]
    bar = []
    for i in range(bar_w):
        if i == peak_at and i >= filled:
            bar.append(("│", base + Style(color="red", bold=True)))
        elif i < filled:
            bar.append(("█", base + Style(color=color)))
        else:
            bar.append(("░", dim))
    # merge runs of one style
    run_style, run_chars = None, []
    for ch, st in bar:
        if st != run_style and run_chars:
            segs.append(Segment("".join(run_chars), run_style))
            run_chars = []
        run_style = st
        run_chars.append(ch)
    if run_chars:
        segs.append(Segment("".join(run_chars), run_style))
    segs.append(Segment("▏", dim))
    segs.append(Segment(value, base))
    return Strip(segs).crop(0, width).extend_cell_length(width, base)


def downsample_max(values: Sequence[float | None], n: int) -> list[float | None]:
    """``values`` in ``n`` buckets (the max of each; None where a bucket has no number)."""
    if n <= 0:
        return []
    vals = list(values)
    if len(vals) <= n:
        return vals
    out: list[float | None] = []
    size = len(vals) / n
    for i in range(n):
        chunk = [v for v in vals[int(i * size):int((i + 1) * size)] if v is not None]
        out.append(max(chunk) if chunk else None)
    return out


@dataclass(frozen=True)
class SparkData:
    label: str
    values: tuple[float | None, ...] = ()
    unit: str = ""
    lo: float | None = 0.0           # fixed scale (None: the data's min / max)
    hi: float | None = None
    color: str = "cyan"


def spark_strip(data: SparkData, width: int, base: Style | None = None, label_w: int = 6) -> Strip:
    """``util ▁▂▅▇██ 97%``: the whole history, bucketed to fit."""
    base = base or Style()
    dim = base + Style(dim=True)
    last = next((v for v in reversed(data.values) if v is not None), None)
    value = f" {last:.0f}{data.unit}" if last is not None else " -"
    value = value.rjust(7)
    label = data.label[:label_w].ljust(label_w)
    spark_w = max(0, width - label_w - len(value))
    pts = downsample_max(data.values, spark_w)
    nums = [v for v in pts if v is not None and math.isfinite(v)]
    segs = [Segment(label, base + Style(bold=True))]
    if not nums:
        segs.append(Segment("·" * min(spark_w, 3) if spark_w else "", dim))
    else:
        lo = data.lo if data.lo is not None else min(nums)
        hi = data.hi if data.hi is not None else max(nums)
        if hi <= lo:
            hi = lo + 1.0
        chars = []
        for v in pts:
            if v is None or not math.isfinite(v):
                chars.append(" ")
            else:
                f = max(0.0, min(1.0, (v - lo) / (hi - lo)))
                chars.append(BLOCKS[max(1, int(round(f * 8)))])
        segs.append(Segment("".join(chars), base + Style(color=data.color)))
        segs.append(Segment(" " * (spark_w - len(chars)), base))
    segs.append(Segment(value, base))
    return Strip(segs).crop(0, width).extend_cell_length(width, base)


class _OneLine(Widget):
    def __init__(self, data, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self._data = data
        self._key: tuple | None = None
        self._strip: Strip | None = None

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value) -> None:
        if value != self._data:
            self._data = value
            self._key = None
            self.refresh()

    def _make(self, width: int) -> Strip:  # pragma: no cover - overridden
        raise NotImplementedError

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y != 0:
            return Strip.blank(width, self.rich_style)
        key = (width, self.rich_style)
        if key != self._key or self._strip is None:
            self._strip = self._make(width)
            self._key = key
        return self._strip


class VramGauge(_OneLine):
    DEFAULT_CSS = "VramGauge { height: 1; }"

    def __init__(self, data: GaugeData | None = None, **kw) -> None:
        super().__init__(data or GaugeData(), **kw)

    def _make(self, width: int) -> Strip:
        return gauge_strip(self._data, width, self.rich_style)


class Spark(_OneLine):
    DEFAULT_CSS = "Spark { height: 1; }"

    def __init__(self, data: SparkData, **kw) -> None:
        super().__init__(data, **kw)

    def _make(self, width: int) -> Strip:
        return spark_strip(self._data, width, self.rich_style)
