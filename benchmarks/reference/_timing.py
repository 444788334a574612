"""Timing shared by the reference scripts (plain transformers; no medtui code): a streamer that notes
when each new token arrives, as a user of ``generate`` would time it."""

from __future__ import annotations

import time

from transformers.generation.streamers import BaseStreamer


class Clock(BaseStreamer):
    def __init__(self):
        self.start = time.perf_counter()
        self.prompt_seen = False
        self.times: list[float] = []

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate hands the prompt over first
            self.prompt_seen = True
            return
        now = time.perf_counter()
        self.times.extend([now] * int(value.numel()))

    def end(self) -> None:
        pass

    def figures(self) -> dict:
        t = self.times
        n = len(t)
        total = (t[-1] - self.start) if t else None
        return {"output_tokens": n, "ttft_ms": round((t[0] - self.start) * 1000, 1) if t else None,
                "decode_tok_s": round((n - 1) / (t[-1] - t[0]), 1) if n > 1 and t[-1] > t[0] else None,
                "overall_tok_s": round(n / total, 1) if total else None, "total_s": round(total, 2) if total else None}
