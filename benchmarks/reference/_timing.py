"""What the reference scripts share (plain transformers; no medtui code): their command line, and a
streamer that notes when each new token arrives, as a user of ``generate`` would time it."""

from __future__ import annotations

import argparse
import time

from transformers.generation.streamers import BaseStreamer


def reference_parser(four_bit: bool = True) -> argparse.ArgumentParser:
    """MODEL_DIR PROMPT_FILE [--new-tokens N] [--4bit]: what bench_infer.py passes every reference."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("prompt_file")
    ap.add_argument("--new-tokens", type=int, default=256)
    if four_bit:
        ap.add_argument("--4bit", dest="four_bit", action="store_true")
    return ap


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
