"""Small formatters shared by the CLI and the TUI, so one figure is written one way everywhere."""

from __future__ import annotations

import math


def fmt_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (``0:05:12``); ``-`` when unknown, not a number or negative."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
