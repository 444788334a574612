"""Series kept for plotting, without anything of a user interface (the watcher thread builds them)."""

from __future__ import annotations


class Envelope:
    """Streaming min/max decimation of an (x, y) series, kept beside the full series by the watcher
    thread: at most ``MAX_BUCKETS`` buckets of ``size`` consecutive points (size doubles as the run
    grows), each remembered as its first, lowest, highest and last point. Those are real points, in x
    order, so a chart drawn from them shows the same extent and the same spikes as the full series,
    while a 100,000-step history costs the UI thread a few thousand points. O(1) per point added."""

    MAX_BUCKETS = 1024

    def __init__(self) -> None:
        self.size = 1
        # [count, first x, first y, last x, last y, min x, min y, max x, max y]
        self.buckets: list[list[float]] = []

    def add(self, x: float, y: float) -> None:
        bs = self.buckets
        if not bs or bs[-1][0] >= self.size:
            if len(bs) >= self.MAX_BUCKETS:
                self._coarsen()
                bs = self.buckets
            if not bs or bs[-1][0] >= self.size:
                bs.append([1, x, y, x, y, x, y, x, y])
                return
        b = bs[-1]
        b[0] += 1
        b[3], b[4] = x, y
        if y < b[6]:
            b[5], b[6] = x, y
        if y > b[8]:
            b[7], b[8] = x, y

    def _coarsen(self) -> None:
        self.size *= 2
        old, new = self.buckets, []
        for i in range(0, len(old) - 1, 2):
            a, c = old[i], old[i + 1]
            lo = a[5:7] if a[6] <= c[6] else c[5:7]
            hi = a[7:9] if a[8] >= c[8] else c[7:9]
            new.append([a[0] + c[0], a[1], a[2], c[3], c[4], *lo, *hi])
        if len(old) % 2:
            new.append(old[-1])
        self.buckets = new

    def points(self) -> tuple[list[float], list[float]]:
        xs: list[float] = []
        ys: list[float] = []
        for _n, fx, fy, lx, ly, mnx, mny, mxx, mxy in self.buckets:
            for x, y in sorted({(fx, fy), (mnx, mny), (mxx, mxy), (lx, ly)}):
                xs.append(x)
                ys.append(y)
        return xs, ys
