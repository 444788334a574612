"""How fast the TUI draws its first frame: ``python benchmarks/bench_startup.py [--runs N]``.

Two measurements, both from a fresh interpreter each time:
- headless: process start -> ``import medtui.app`` -> the app mounted and its first frame composed
  (Textual's headless driver), as a child process that reports its own clock;
- terminal (when tmux is installed): ``medtui`` started in a real pseudo-terminal, polled until the
  screen shows the app's title bar; this includes the interpreter's own start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

_CHILD = r"""
import time, sys
t0 = time.perf_counter()
import asyncio
from medtui.app import MedtuiApp
t_import = time.perf_counter() - t0
async def main():
    app = MedtuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        t_frame = time.perf_counter() - t0
        heavy = [m for m in ("torch", "transformers", "trl", "peft", "datasets", "unsloth") if m in sys.modules]
        print("STARTUP", t_import, t_frame, ",".join(heavy), flush=True)
asyncio.run(main())
"""


def headless_once() -> tuple[float, float, str]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t
    for line in out.stdout.splitlines():
        if line.startswith("STARTUP"):
            _, imp, frame, *heavy = line.split(" ")
            return float(imp), float(frame), (heavy[0] if heavy else "")
    raise RuntimeError(f"child failed after {wall:.1f}s: {out.stderr[-800:]}")


def terminal_once(medtui_cmd: list[str]) -> float | None:
    if not shutil.which("tmux"):
        return None
    name = f"medtui-bench-{os.getpid()}-{time.time_ns()}"
    sock = ["-L", name]  # a private tmux server per run: never touches the user's sessions
    t = time.perf_counter()
    subprocess.run(["tmux", *sock, "new-session", "-d", "-s", name, "-x", "80", "-y", "24", *medtui_cmd], check=True)
    try:
        while time.perf_counter() - t < 30:
            screen = subprocess.run(["tmux", *sock, "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout
            if "medtui" in screen and "Environment" in screen:
                return time.perf_counter() - t
            time.sleep(0.02)
        return None
    finally:
        subprocess.run(["tmux", *sock, "kill-server"], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    headless = [headless_once() for _ in range(args.runs)]
    exe = Path(sys.executable).with_name("medtui")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "medtui"]
    terminal = [t for t in (terminal_once(cmd) for _ in range(args.runs)) if t is not None]
    result = {
        "runs": args.runs,
        "import_medtui_app_s": round(statistics.median(h[0] for h in headless), 3),
        "first_frame_headless_s": round(statistics.median(h[1] for h in headless), 3),
        "first_frame_terminal_s": round(statistics.median(terminal), 3) if terminal else None,
        "heavy_modules_imported": sorted({m for h in headless for m in h[2].split(",") if m}),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repo root on the path
    sys.exit(main())
