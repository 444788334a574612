"""Read a job's ``events.jsonl`` as it grows: only new bytes, complete lines only.

A reader keeps a byte offset. A last line without its newline is a write in progress (or the
job died mid-write): it waits until it is complete. When the file becomes shorter than the offset
or is replaced by another file (a different inode), reading restarts from 0 and ``reset`` is set so
the caller can drop what it folded before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Read at most this much per call, so a huge backlog is folded in slices and a UI stays responsive.
DEFAULT_MAX_BYTES = 8 << 20


class EventTailer:
    def __init__(self, path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(path)
        self.offset = 0
        self.max_bytes = max_bytes
        self.bad_lines = 0      # lines that were not a JSON object (skipped)
        self.reset = False      # set by the last read_new() when the file was truncated/replaced
        self.resets = 0
        self.at_end = True      # the last read_new() consumed every complete line the file had then
        self._ino: tuple[int, int] | None = None

    def read_new(self) -> list[dict]:
        """The complete events written since the last call (never raises on bad lines)."""
        self.reset = False
        self.at_end = True
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with fh:
            st = os.fstat(fh.fileno())
            ino = (st.st_dev, st.st_ino)
            if self._ino is not None and (ino != self._ino or st.st_size < self.offset):
                self.offset = 0
                self.reset = True
                self.resets += 1
            self._ino = ino
            if st.st_size <= self.offset:
                return []
            fh.seek(self.offset)
            data = fh.read(min(st.st_size - self.offset, self.max_bytes))
            self.at_end = self.offset + len(data) >= st.st_size
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= self.max_bytes:  # one absurdly long line: skip it rather than stall forever
                self.offset += len(data)
                self.bad_lines += 1
            return []
        self.offset += end + 1
        events: list[dict] = []
        for raw in data[:end].split(b"\n"):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(obj, dict):
                events.append(obj)
            else:
                self.bad_lines += 1
        return events

    def read_all_new(self) -> list[dict]:
        """Like :meth:`read_new` but keeps reading until the current end of the file."""
        out: list[dict] = []
        reset = False
        while True:
            before = self.offset
            batch = self.read_new()
            reset = reset or self.reset
            if self.reset:
                out = []
            out.extend(batch)
            if not batch and self.offset == before:
                break
        self.reset = reset
        return out
