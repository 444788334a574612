"""Line charts drawn with braille dots, downsampled to the widget's width.

A chart is a pure function of its data and its size (:func:`render_chart`), so it can be timed and
tested without an app; :class:`LineChart` is the widget that caches the strips until either
changes. Each series is bucketed into one bucket per dot column (two per cell) with ``bisect`` on
its sorted x values and the C-speed ``min``/``max`` of each slice, so a 100,000-point history costs
a few hundred Python operations, and a spike inside a bucket stays visible as a vertical stroke.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

# dot bits of a braille cell: [column][row]
_BRAILLE = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
GUTTER = 8  # y labels (7) + the axis line
PALETTE = ("cyan", "magenta", "green", "yellow", "bright_blue", "bright_red", "bright_green", "white")


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]          # ascending
    ys: Sequence[float]          # finite numbers, same length as xs
    color: str = "cyan"
    show_last: bool = True       # print the last value in the legend


@dataclass(frozen=True)
class ChartData:
    title: str = ""
    series: tuple[Series, ...] = ()
    points: tuple[tuple[float, float], ...] = ()   # marked points (eval loss), drawn as a diamond
    points_name: str = "eval"
    points_color: str = "yellow"
    vlines: tuple[float, ...] = ()                  # marked x positions (checkpoints), on the axis row
    vlines_name: str = "ckpt"
    vlines_color: str = "bright_magenta"
    x_range: tuple[float, float] | None = None      # default: the data's range
    log_y: bool = False
    empty_text: str = "no data yet"
    note: str = ""                                  # after the legend, dimmed


def fmt_num(v: float | None, digits: int = 3) -> str:
    """A short number: ``digits`` significant digits, scientific when very large or small."""
    if v is None or not math.isfinite(v):
        return "-"
    a = abs(v)
    if a != 0 and (a >= 100_000 or a < 0.01):
        return f"{v:.{digits - 2}e}"
    if a >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}" if a >= 1 or a == 0 else f"{v:.{digits}f}".rstrip("0").rstrip(".")


def fmt_axis(v: float, span: float, width: int = GUTTER - 1) -> str:
    """An axis label with enough decimals to tell the top label from the bottom one."""
    if span > 0 and math.isfinite(v) and 0.01 <= abs(v) < 100_000:
        decimals = min(6, max(0, 1 - math.floor(math.log10(span))))
        text = f"{v:.{decimals}f}"
        if len(text) <= width:
            return text
    return fmt_num(v)


def ema(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (the "smoothing" of training dashboards)."""
    out: list[float] = []
    acc = 0.0
    debias = 1.0
    for v in values:
        acc = weight * acc + (1 - weight) * v
        debias *= weight
        out.append(acc / (1 - debias))
    return out


Bucket = tuple[float, float, float, float]   # first, last, min, max of one dot column




@dataclass
class _BucketMemo:
    """What a previous bucketing of the same series on the same axes found (see _bucketize)."""

    n: int
    last_x: float
    last_y: float
    out: list
    last_col: int
    last_lo: int


def _bucketize(xs: Sequence[float], ys: Sequence[float], x0: float, x1: float, ncols: int,
               memo: dict | None = None, key: object = None) -> list[Bucket | None]:
    """Per dot column: (first, last, min, max) of the values whose x falls into it, or None.

    With ``memo``, a series that only grew since the last call (the same point where the last call
    ended) is bucketed from its last filled column on: a live run's frame costs O(new points)."""
    out: list[Bucket | None] = [None] * ncols
    n = len(xs)
    if not n or ncols <= 0:
        return out
    # column c covers x in [x0 + (c - 0.5) * w, x0 + (c + 0.5) * w)
    w = (x1 - x0) / max(ncols - 1, 1)
    start_col = 0
    lo = bisect_left(xs, x0 - w / 2)
    m = memo.get(key) if memo is not None else None
    if (m is not None and 0 < m.n <= n and xs[m.n - 1] == m.last_x and ys[m.n - 1] == m.last_y
            and len(m.out) == ncols):
        out = m.out[:m.last_col] + [None] * (ncols - m.last_col)
        start_col, lo = m.last_col, m.last_lo
    last_col, last_lo = start_col, lo
    for c in range(start_col, ncols):
        if lo >= n:
            break
        hi = bisect_left(xs, x0 + (c + 0.5) * w, lo)
        if hi > lo:
            chunk = ys[lo:hi]
            out[c] = (chunk[0], chunk[-1], min(chunk), max(chunk))
            last_col, last_lo = c, lo
            lo = hi
    if memo is not None:
        if len(memo) > 32:
            memo.clear()
        memo[key] = _BucketMemo(n, xs[-1], ys[-1], out, last_col, last_lo)
    return out


def _columns(buckets: list[tuple[float, float, float, float] | None]) -> list[tuple[float, float] | None]:
    """Per dot column the (low, high) span to draw: a bucket's min..max, joined to the previous
    column's last value so the line is continuous, with empty columns between two points
    interpolated."""
    n = len(buckets)
    spans: list[tuple[float, float] | None] = [None] * n
    filled = [i for i, b in enumerate(buckets) if b is not None]
    prev_i: int | None = None
    for i in filled:
        b = buckets[i]
        assert b is not None
        lo, hi = b[2], b[3]
        if prev_i is not None:
            last = buckets[prev_i][1]  # type: ignore[index]
            first = b[0]
            gap = i - prev_i
            if gap > 1:
                for k in range(1, gap):
                    a = last + (first - last) * (k - 0.5) / gap
                    z = last + (first - last) * (k + 0.5) / gap
                    spans[prev_i + k] = (min(a, z), max(a, z))
                mid = last + (first - last) * (gap - 0.5) / gap
                lo, hi = min(lo, mid), max(hi, mid)
            else:
                lo, hi = min(lo, last), max(hi, last)
        spans[i] = (lo, hi)
        prev_i = i
    return spans


def _tr(v: float, log_y: bool) -> float | None:
    if log_y:
        return math.log10(v) if v > 0 else None
    return v


def render_chart(data: ChartData, width: int, height: int, base: Style | None = None,
                 show_axis: bool = True, memo: dict | None = None) -> list[Strip]:
    """The chart as ``height`` strips of ``width`` cells: a legend row, the plot, an x-axis row."""
    base = base or Style()
    width = max(1, width)
    height = max(1, height)
    dim = base + Style(dim=True)
    rows: list[Strip] = []

    legend = _legend(data, base, dim)
    rows.append(_fit(legend, width, base))
    axis_rows = 1 if (show_axis and height >= 4) else 0
    ph = height - 1 - axis_rows
    if ph <= 0:
        return rows[:height]
    pw = width - GUTTER
    if pw < 4:
        return rows + [Strip.blank(width, base)] * ph + ([Strip.blank(width, base)] * axis_rows)

    series = [s for s in data.series if len(s.xs)]
    log_y = data.log_y and all(min(s.ys) > 0 for s in series if len(s.ys))
    if data.x_range is not None:
        x0, x1 = data.x_range
    elif series:
        x0 = min(s.xs[0] for s in series)
        x1 = max(s.xs[-1] for s in series)
    else:
        x0, x1 = 0.0, 1.0
    if x1 <= x0:
        x1 = x0 + 1.0
    ncols = pw * 2
    nrows = ph * 4

    per_series = []
    ymin, ymax = math.inf, -math.inf
    for i, s in enumerate(series):
        if log_y:
            ys = [math.log10(v) for v in s.ys]
        else:
            ys = s.ys
        spans = _columns(_bucketize(s.xs, ys, x0, x1, ncols, memo, (i, s.name, x0, x1, ncols, log_y)))
        for sp in spans:
            if sp is not None:
                ymin = min(ymin, sp[0])
                ymax = max(ymax, sp[1])
        per_series.append((s, spans))
    marks = []
    for x, y in data.points:
        ty = _tr(y, log_y)
        if ty is None or not math.isfinite(ty) or x < x0 or x > x1:
            continue
        ymin, ymax = min(ymin, ty), max(ymax, ty)
        marks.append((x, ty))

    if not math.isfinite(ymin):
        body = [Strip.blank(width, base) for _ in range(ph)]
        msg = data.empty_text[: width - 2]
        mid = ph // 2
        body[mid] = _fit([Segment(" " * max(0, (width - len(msg)) // 2), base), Segment(msg, dim)], width, base)
        rows.extend(body)
        if axis_rows:
            rows.append(_axis_row(data, x0, x1, pw, base, dim))
        return rows

    if ymax - ymin < 1e-12:
        pad = abs(ymax) * 0.05 or 0.5
        ymin, ymax = ymin - pad, ymax + pad

    def yrow(v: float) -> int:
        r = (nrows - 1) - int(round((v - ymin) / (ymax - ymin) * (nrows - 1)))
        return min(nrows - 1, max(0, r))

    bits = [[0] * pw for _ in range(ph)]
    owner = [[-1] * pw for _ in range(ph)]
    for si, (_s, spans) in enumerate(per_series):
        for c, sp in enumerate(spans):
            if sp is None:
                continue
            top, bottom = yrow(sp[1]), yrow(sp[0])
            cell_x, sub_x = divmod(c, 2)
            col_bits = _BRAILLE[sub_x]
            for r in range(top, bottom + 1):
                cy, sub_y = divmod(r, 4)
                bits[cy][cell_x] |= col_bits[sub_y]
                owner[cy][cell_x] = si
    point_cells: set[tuple[int, int]] = set()
    for x, ty in marks:
        c = int(round((x - x0) / (x1 - x0) * (ncols - 1)))
        point_cells.add((yrow(ty) // 4, min(pw - 1, c // 2)))

    styles = [base + Style(color=s.color) for s, _ in per_series]
    pstyle = base + Style(color=data.points_color, bold=True)
    labels = {0: ymax, ph - 1: ymin}
    if ph >= 5:
        labels[(ph - 1) // 2] = ymin + (ymax - ymin) * (1 - ((ph - 1) // 2) / (ph - 1))
    for cy in range(ph):
        segs: list[Segment] = []
        lab = labels.get(cy)
        if lab is not None:
            text = fmt_num(10 ** lab) if log_y else fmt_axis(lab, ymax - ymin)
            segs.append(Segment(text[: GUTTER - 1].rjust(GUTTER - 1) + "┤", dim))
        else:
            segs.append(Segment(" " * (GUTTER - 1) + "│", dim))
        run_style: Style | None = None
        run_text: list[str] = []
        for cx in range(pw):
            if (cy, cx) in point_cells:
                ch, st = "◆", pstyle
            else:
                b = bits[cy][cx]
                ch = chr(0x2800 + b) if b else " "
                st = styles[owner[cy][cx]] if b else base
            if st is not run_style:
                if run_text:
                    segs.append(Segment("".join(run_text), run_style))
                run_style, run_text = st, []
            run_text.append(ch)
        if run_text:
            segs.append(Segment("".join(run_text), run_style))
        rows.append(Strip(segs, width))
    if axis_rows:
        rows.append(_axis_row(data, x0, x1, pw, base, dim))
    return rows


def _axis_row(data: ChartData, x0: float, x1: float, pw: int, base: Style, dim: Style) -> Strip:
    line = ["─"] * pw
    vstyle = base + Style(color=data.vlines_color, bold=True)
    marked: set[int] = set()
    for x in data.vlines:
        if x0 <= x <= x1:
            c = int(round((x - x0) / (x1 - x0) * (pw * 2 - 1))) // 2
            marked.add(min(pw - 1, c))
    left = fmt_num(x0)
    right = fmt_num(x1)
    segs = [Segment(" " * (GUTTER - 1) + "└", dim)]
    labels: dict[int, str] = {}
    if pw > len(left) + len(right) + 4:
        for i, ch in enumerate(left):
            labels[i + 1] = ch
        for i, ch in enumerate(right):
            labels[pw - 1 - len(right) + i] = ch
    for cx in range(pw):
        if cx in marked:
            segs.append(Segment("▲", vstyle))
        elif cx in labels:
            segs.append(Segment(labels[cx], dim))
        else:
            segs.append(Segment(line[cx], dim))
    # one segment per style run: fewer escape sequences on a slow link
    segs = list(Segment.simplify(segs))
    return Strip(segs, GUTTER + pw)


def _legend(data: ChartData, base: Style, dim: Style) -> list[Segment]:
    segs = [Segment(data.title, base + Style(bold=True))]
    for s in data.series:
        segs.append(Segment("  ━ ", base + Style(color=s.color)))
        label = s.name
        if s.show_last and len(s.ys):
            label += " " + fmt_num(s.ys[-1], 4)
        segs.append(Segment(label, base))
    if data.points:
        segs.append(Segment("  ◆ ", base + Style(color=data.points_color, bold=True)))
        segs.append(Segment(f"{data.points_name} {fmt_num(data.points[-1][1], 4)}", base))
    if data.vlines:
        segs.append(Segment("  ▲ ", base + Style(color=data.vlines_color, bold=True)))
        segs.append(Segment(f"{data.vlines_name} {fmt_num(data.vlines[-1])}", base))
    if data.log_y:
        segs.append(Segment("  (log)", dim))
    if data.note:
        segs.append(Segment("  " + data.note, dim))
    return segs


def _fit(segs: list[Segment], width: int, base: Style) -> Strip:
    return Strip(segs).crop(0, width).extend_cell_length(width, base)


class LineChart(Widget):
    """A braille line chart of one or more series; set :attr:`data` to redraw."""

    DEFAULT_CSS = """
    LineChart {
        height: 8;
        min-height: 3;
    }
    """

    def __init__(self, data: ChartData | None = None, *, show_axis: bool = True, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(name=name, id=id, classes=classes)
        self._data = data or ChartData()
        self.show_axis = show_axis
        self._cache_key: tuple | None = None
        self._cache: list[Strip] = []
        self._memo: dict = {}   # per-series bucketing, reused while a series only grows

    @property
    def data(self) -> ChartData:
        return self._data

    @data.setter
    def data(self, value: ChartData) -> None:
        if value is not self._data:
            self._data = value
            self._cache_key = None
            self.refresh()

    def strips(self, width: int, height: int) -> list[Strip]:
        key = (width, height, self.show_axis, id(self._data), self.rich_style)
        if key != self._cache_key:
            self._cache = render_chart(self._data, width, height, self.rich_style, self.show_axis, self._memo)
            self._cache_key = key
        return self._cache

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        rows = self.strips(width, height)
        if 0 <= y < len(rows):
            return rows[y]
        return Strip.blank(width, self.rich_style)
