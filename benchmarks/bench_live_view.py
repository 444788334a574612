"""``python benchmarks/bench_live_view.py``: how the live view copes with long and fast runs, and what it costs idle.

Prints three measurements (no assertions; the targets are printed beside them):

1. render: a 100,000-step history (100k log events, evals, checkpoints, heartbeats) folded with the
   engine's reducer, turned into one snapshot, and drawn: the charts alone (pure function, at the
   sizes they have on a 100x32 terminal) and the whole live view in a headless app. Target <= 50 ms.
2. keep-up: a writer appends 20 log events a second (the job's own EventWriter) while a headless
   app is attached; every second the lag between the last event written and the last event on the
   screen is sampled. No growing backlog = the lag stays flat.
3. idle: the real ``medtui`` in a pseudo-terminal, attached to a running-but-quiet run, for a few
   seconds; CPU time used / wall time, from /proc. Target <= 5% of one core.

Everything runs in a temporary workspace; nothing is written elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

TOTAL = 100_000


def _events_file(run_dir: Path, steps: int, t0: float = 1_700_000_000.0) -> None:
    """A long run's events.jsonl written directly (fast), valid schema v1."""
    import math
    import random

    rng = random.Random(1)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps({"model": "bench", "model_label": "bench-7b", "data": "bench.jsonl"}))
    seq = 0
    lines = []

    def emit(t: float, type_: str, **fields) -> None:
        nonlocal seq
        lines.append(json.dumps({"v": 1, "seq": seq, "t": round(t, 3), "type": type_, **fields}, separators=(",", ":")))
        seq += 1

    emit(t0, "job_start", pid=1, start_time=1, backend="unsloth", resumed_from=None, versions={})
    emit(t0 + 1, "train_begin", total_steps=steps, start_step=0, epochs=3.0, steps_per_epoch=steps // 3,
         num_examples=steps, train_tokens=steps * 2048, micro_batch=2, grad_accum=8, max_seq_length=2048,
         model="bench", model_label="bench-7b", device="GPU")
    for step in range(1, steps + 1):
        t = t0 + 2 + step
        loss = 0.5 + 2.0 * math.exp(-step / (steps / 5)) + 0.1 * rng.random()
        emit(t, "log", step=step, epoch=step / (steps / 3), loss=round(loss, 4), lr=1e-4 * (1 - step / steps),
             grad_norm=round(0.3 + rng.random(), 3), tokens_per_s=3400.0, elapsed_s=float(step), eta_s=float(steps - step))
        if step % 1000 == 0:
            emit(t, "eval", step=step, epoch=step / (steps / 3), eval_loss=round(loss * 1.05, 4))
        if step % 5000 == 0:
            emit(t, "checkpoint", step=step, path=f"checkpoints/checkpoint-{step}")
        if step % 50 == 0:
            emit(t, "heartbeat", gpus=[{"index": 0, "mem_used_mib": 19000 + rng.random() * 500, "mem_total_mib": 81559.0,
                                        "util_pct": 95.0, "temp_c": 66.0, "power_w": 600.0}],
                 torch_allocated_mib=17000.0, torch_peak_mib=18000.0, rss_mib=5000.0)
    emit(t0 + 3 + steps, "finished", step=steps, adapter="adapter", runtime_s=float(steps), final_loss=0.6)
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "stdout.log").write_text("".join(f"line {i}\n" for i in range(500)))


def bench_render(tmp: Path, steps: int = TOTAL) -> dict:
    from medtui.runwatch import RunWatcher
    from medtui.widgets.curves import render_chart
    from medtui.widgets.run_view import loss_chart, small_chart

    run_dir = tmp / "runs" / "20250101-000000-bench-long"
    _events_file(run_dir, steps)
    w = RunWatcher(run_dir, lambda s: None)
    t = time.perf_counter()
    while True:
        before = w.tailer.offset
        w.poll_once()
        if w.tailer.offset == before:
            break
    fold_s = time.perf_counter() - t
    t = time.perf_counter()
    snap = w.snapshot()
    snap_s = time.perf_counter() - t
    # the sizes the charts get on a 100x32 terminal
    charts = [(loss_chart(snap), 100, 14), (small_chart("lr", snap.lr_x, snap.lr_y, "green", snap), 50, 5),
              (small_chart("grad norm", snap.gn_x, snap.gn_y, "magenta", snap), 50, 5)]
    times, cpu = [], []
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        for data, width, height in charts:
            render_chart(data, width, height)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    app_s, app_cpu_s = asyncio.run(_app_render(tmp, run_dir, snap))
    return {"events": w.folded, "fold_s": fold_s, "snapshot_s": snap_s, "charts_s": statistics.median(times), "charts_cpu_s": statistics.median(cpu),
            "app_update_s": app_s, "app_update_cpu_s": app_cpu_s, "points": snap.state.step, "plotted": len(snap.loss_x)}


def _app(tmp: Path):
    """The real app, opening on Runs (``medtui --screen runs``)."""
    from medtui.app import MedtuiApp

    return MedtuiApp(workspace=str(tmp), start_mode="runs")


async def _app_render(tmp: Path, run_dir: Path, snap) -> float:
    """Time from handing the snapshot to the live view until the screen is redrawn (median of 5)."""
    app = _app(tmp)
    out = []
    async with app.run_test(size=(100, 32)) as pilot:
        app.goto("train", run=str(run_dir))
        view = await _attached_view(app, pilot)
        view.detach()  # the bench hands snapshots in itself
        for _ in range(5):
            # a cold start, as on attach: no cached strips, no remembered bucketing
            for w in view.query("LineChart"):
                w._cache_key = None  # type: ignore[attr-defined]
                w._memo.clear()  # type: ignore[attr-defined]
            for w in view.query("VramGauge, Spark"):
                w._key = None  # type: ignore[attr-defined]
            t, c = time.perf_counter(), time.process_time()
            view.apply(snap)
            await pilot.pause()  # one refresh cycle: layout + render of every changed widget
            for w in view.query("LineChart, VramGauge, Spark, LogTail"):
                for y in range(w.size.height):  # every line drawn (cached if the refresh did it)
                    w.render_line(y)
            out.append((time.perf_counter() - t, time.process_time() - c))
    return statistics.median(o[0] for o in out), statistics.median(o[1] for o in out)


async def _attached_view(app, pilot, timeout: float = 60.0):
    """The live view once it shows its first snapshot and the app has settled."""
    from medtui.widgets.run_view import RunView

    t = time.monotonic()
    while time.monotonic() - t < timeout:
        await pilot.pause(0.1)
        views = app.screen.query(RunView)
        if views and views.first().snapshot is not None:
            break
    await pilot.pause(1.0)
    return app.screen.query_one(RunView)


def bench_keep_up(tmp: Path, rate: float = 20.0, seconds: float = 12.0) -> dict:
    return asyncio.run(_keep_up(tmp, rate, seconds))


async def _keep_up(tmp: Path, rate: float, seconds: float) -> dict:
    from medtui_engine.runs.events import EventWriter
    from medtui_engine.runs.jobs import JOB_FILE, proc_start_time

    run_dir = tmp / "runs" / "20250101-000001-bench-fast"
    run_dir.mkdir(parents=True)
    # the "job" is this process: alive, so the run shows as running
    (run_dir / JOB_FILE).write_text(json.dumps({"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}))
    writer = EventWriter(run_dir / "events.jsonl")
    total = int(rate * seconds) + 10
    writer.emit("job_start", pid=os.getpid(), start_time=None, backend="hf", resumed_from=None, versions={})
    writer.emit("train_begin", total_steps=total, start_step=0, epochs=1.0, steps_per_epoch=total, num_examples=total,
                train_tokens=0, micro_batch=1, grad_accum=1, max_seq_length=256, model="bench", model_label="bench",
                device="cpu")
    stop = threading.Event()
    written = {"seq": 0}

    def write() -> None:
        step = 0
        next_t = time.monotonic()
        while not stop.is_set():
            step += 1
            ev = writer.emit("log", step=step, epoch=step / total, loss=2.0 / (1 + step / 50), lr=1e-4, grad_norm=0.5,
                             tokens_per_s=1000.0, elapsed_s=step / rate, eta_s=(total - step) / rate)
            written["seq"] = ev["seq"]
            next_t += 1 / rate
            time.sleep(max(0.0, next_t - time.monotonic()))

    app = _app(tmp)
    lags, applied = [], []
    async with app.run_test(size=(100, 32)) as pilot:
        app.goto("train", run=str(run_dir))
        view = await _attached_view(app, pilot)
        th = threading.Thread(target=write, daemon=True)
        th.start()
        start_applied = view.applied
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            await pilot.pause(1.0)
            shown = view.snapshot.state.last_seq if view.snapshot else -1
            lags.append(written["seq"] - shown)
            applied.append(view.applied)
        stop.set()
        th.join()
        await pilot.pause(1.5)
        final_lag = written["seq"] - (view.snapshot.state.last_seq if view.snapshot else -1)
        frames = view.applied - start_applied
    writer.close()
    half = len(lags) // 2
    return {"rate": rate, "seconds": seconds, "lags": lags, "final_lag": final_lag,
            "frames_per_s": frames / (seconds + 1.5),
            "growing": statistics.mean(lags[half:]) > statistics.mean(lags[:half]) + rate}


def bench_idle(tmp: Path, seconds: float = 10.0) -> dict:
    """The real TUI in a pty, attached to a quiet running run; its CPU use over ``seconds``."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    from medtui_engine.runs.events import EventWriter
    from medtui_engine.runs.jobs import JOB_FILE, proc_start_time

    run_dir = tmp / "runs" / "20250101-000002-bench-idle"
    run_dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (run_dir / JOB_FILE).write_text(json.dumps({"pid": sleeper.pid, "start_time": proc_start_time(sleeper.pid)}))
        with EventWriter(run_dir / "events.jsonl") as w:
            w.emit("job_start", pid=sleeper.pid, start_time=None, backend="hf", resumed_from=None, versions={})
            w.emit("train_begin", total_steps=1000, start_step=0, epochs=1.0, steps_per_epoch=1000, num_examples=1000,
                   train_tokens=0, micro_batch=1, grad_accum=1, max_seq_length=256, model="bench", model_label="bench",
                   device="cpu")
            for step in range(1, 200):
                w.emit("log", step=step, epoch=step / 1000, loss=2.0 / (1 + step / 50), lr=1e-4, grad_norm=0.5,
                       tokens_per_s=1000.0, elapsed_s=float(step), eta_s=float(1000 - step))
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 32, 100, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", MEDTUI_WORKSPACE=str(tmp))
        proc = subprocess.Popen([sys.executable, "-m", "medtui", "--screen", "runs"], stdin=slave, stdout=slave,
                                stderr=slave, env=env, start_new_session=True, close_fds=True)
        os.close(slave)
        got = bytearray()
        done = threading.Event()

        def drain() -> None:
            while not done.is_set():
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                got.extend(data)
                del got[:-65536]
        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 90
        while b"bench-idle" not in got and time.monotonic() < deadline:  # the run is in the table
            time.sleep(0.2)
        time.sleep(1.0)
        os.write(master, b"\r")  # enter: attach to the highlighted (only) run
        deadline = time.monotonic() + 60
        while b"RUNNING" not in got and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)  # let the first frames settle: idle means after that

        def cpu() -> float:
            with open(f"/proc/{proc.pid}/stat") as fh:
                parts = fh.read().rsplit(")", 1)[1].split()
            return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

        c0, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu(), time.monotonic()
        os.write(master, b"\x11")  # ctrl+q
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        done.set()
        os.close(master)
        return {"cpu_pct": 100 * (c1 - c0) / (t1 - t0), "seconds": t1 - t0, "attached": b"RUNNING" in got}
    finally:
        sleeper.kill()
        sleeper.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_live_view.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=TOTAL, help="steps in the long history (default 100000)")
    ap.add_argument("--rate", type=float, default=20.0, help="log events per second in the keep-up test")
    ap.add_argument("--seconds", type=float, default=12.0, help="length of the keep-up and idle measurements")
    ap.add_argument("--only", choices=("render", "keepup", "idle"), help="run one measurement")

    a = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times stretch with load)")
    with tempfile.TemporaryDirectory(prefix="medtui-bench-") as d:
        tmp = Path(d)
        os.environ.setdefault("MEDTUI_HOME", str(tmp / "home"))
        os.environ["MEDTUI_CONFIG"] = str(tmp / "no-config.toml")
        if a.only in (None, "render"):
            r = bench_render(tmp, a.steps)
            print(f"render  {r['points']:,}-step history ({r['events']:,} events, {r['plotted']:,} loss points plotted): fold {r['fold_s'] * 1000:.0f} ms "
                  f"(once, on attach), snapshot {r['snapshot_s'] * 1000:.1f} ms, charts {r['charts_s'] * 1000:.1f} ms wall / "
                  f"{r['charts_cpu_s'] * 1000:.1f} ms CPU, "
                  f"whole live view redrawn {r['app_update_s'] * 1000:.1f} ms wall / "
                  f"{r['app_update_cpu_s'] * 1000:.1f} ms CPU (target <= 50 ms)")
        if a.only in (None, "keepup"):
            k = bench_keep_up(tmp, a.rate, a.seconds)
            print(f"keep-up {k['rate']:.0f} steps/s for {k['seconds']:.0f} s: lag (events behind) each second "
                  f"{k['lags']}, after the writer stopped {k['final_lag']}; {k['frames_per_s']:.1f} frames/s; "
                  f"{'GROWING backlog' if k['growing'] else 'no growing backlog'}")
        if a.only in (None, "idle"):
            i = bench_idle(tmp, a.seconds)
            print(f"idle    attached TUI in a pty: {i['cpu_pct']:.1f}% of one core over {i['seconds']:.0f} s "
                  f"(target <= 5%){'' if i['attached'] else ' (WARNING: the live view was not seen)'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repo root on the path
    sys.exit(main())
