"""The tail of a job's ``stdout.log``: read new bytes from an offset, keep a capped list of lines.

Progress bars rewrite their line with ``\\r``: only the text after the last ``\\r`` of a line is
kept, and an unfinished last line is shown as it is so far. ANSI escapes and other control
characters are dropped (a view is not a terminal). Used in the TUI's watcher threads; the widget
that draws the lines is ``medtui.widgets.logtail.LogTail``.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

MAX_LINES = 200            # kept in memory and handed to the UI
MAX_LINE_CHARS = 400       # a longer line is cut (nobody reads a 10 kB line in a 80-column pane)
FIRST_READ_BYTES = 256 << 10   # attaching to a long run: start this far from the end


def _clean(line: str) -> str:
    if "\r" in line:
        parts = [p for p in line.split("\r") if p.strip()]
        line = parts[-1] if parts else ""
    line = line.replace("\t", "    ")
    # drop ANSI escapes and other control characters: the pane is not a terminal
    out = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\x1b":
            j = i + 1
            if j < len(line) and line[j] == "[":
                j += 1
                while j < len(line) and not ("@" <= line[j] <= "~"):
                    j += 1
            i = j + 1
            continue
        if ch >= " " or ch == "\t":
            out.append(ch)
        i += 1
    return "".join(out)[:MAX_LINE_CHARS]


class LogTailReader:
    """Reads only the new bytes of a growing text file; keeps the last ``max_lines`` lines."""

    def __init__(self, path: str | os.PathLike[str], max_lines: int = MAX_LINES) -> None:
        self.path = Path(path)
        self.offset: int | None = None
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.partial = ""
        self._ino: tuple[int, int] | None = None

    def poll(self, max_bytes: int = 1 << 20) -> bool:
        """Read what was appended; True when the visible lines changed."""
        try:
            fh = open(self.path, "rb")
        except OSError:
            return False
        with fh:
            st = os.fstat(fh.fileno())
            ino = (st.st_dev, st.st_ino)
            if self.offset is None:
                self.offset = max(0, st.st_size - FIRST_READ_BYTES)
            elif ino != self._ino or st.st_size < self.offset:
                self.offset = 0
                self.lines.clear()
                self.partial = ""
            self._ino = ino
            if st.st_size <= self.offset:
                return False
            # a huge backlog: only the end matters for a tail
            if st.st_size - self.offset > max_bytes:
                self.offset = st.st_size - max_bytes
                self.partial = ""
            fh.seek(self.offset)
            data = fh.read(st.st_size - self.offset)
        self.offset += len(data)
        text = self.partial + data.decode("utf-8", errors="replace")
        pieces = text.split("\n")
        self.partial = pieces.pop()
        for piece in pieces:
            self.lines.append(_clean(piece))
        return True

    def snapshot(self) -> tuple[str, ...]:
        tail = _clean(self.partial) if self.partial else ""
        if not tail:
            return tuple(self.lines)
        return (*self.lines, tail)[-(self.lines.maxlen or 1):]
