"""The live view's parts without an app: charts, gauges, the log tail and the run watcher."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

from helpers import wait_for

from medtui.runwatch import ACK_TIMEOUT, RunIndex, RunWatcher
from medtui.widgets.curves import GUTTER, ChartData, Series, _bucketize, ema, render_chart
from medtui.widgets.gauges import GaugeData, SparkData, gauge_strip, spark_strip
from medtui_engine.jobs.logtail import LogTailReader
from medtui_engine.runs.events import EventWriter
from medtui_engine.runs.jobs import JOB_FILE, proc_start_time

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
FINISHED = FIXTURES / "20251124-160000-qwen7b"
STOPPED = FIXTURES / "20251124-190000-qwen7b-lr3e-4"


def text(strips) -> list[str]:
    return [s.text for s in strips]


def test_chart_downsamples_a_long_history_to_its_width_and_keeps_a_spike():
    n = 100_000
    xs = list(range(1, n + 1))
    ys = [1.0] * n
    ys[61_234] = 5.0  # one bad step in the middle of 100k
    data = ChartData("Loss", (Series("raw", xs, ys),), points=((50_000, 3.0),), vlines=(25_000, 75_000))
    rows = render_chart(data, 60, 10)
    assert len(rows) == 10
    assert all(r.cell_length == 60 for r in rows)
    plot = text(rows)[1:-1]
    assert plot[0].rstrip().endswith(tuple(chr(c) for c in range(0x2801, 0x2900))), plot[0]  # the spike reaches the top row
    assert any("◆" in line for line in plot)                    # the eval point
    assert text(rows)[-1].count("▲") == 2                        # the two checkpoints on the axis
    assert "Loss" in text(rows)[0] and "raw 1" in text(rows)[0]


def test_chart_draws_few_points_as_a_connected_line_and_says_when_empty():
    data = ChartData("lr", (Series("lr", [1, 2, 3], [3.0, 2.0, 1.0]),), x_range=(0, 10))
    rows = text(render_chart(data, 40, 6))
    plot = [r[GUTTER:] for r in rows[1:-1]]
    # a line from step 1 to 3 goes down-right; nothing is drawn after step 3
    cols = [max((i for i, ch in enumerate(line) if ch.strip()), default=-1) for line in plot]
    assert cols[0] < cols[-1]
    assert max(cols) < 32 * 3 // 10 + 2
    empty = text(render_chart(ChartData("x", empty_text="nothing yet"), 40, 6))
    assert any("nothing yet" in r for r in empty)


def test_log_scale_and_tiny_sizes_do_not_break():
    data = ChartData("Loss", (Series("raw", [1, 2, 3, 4], [10.0, 1.0, 0.1, 0.01]),), log_y=True)
    rows = text(render_chart(data, 50, 8))
    assert "(log)" in rows[0]
    assert "10" in rows[1]
    for w, h in ((1, 1), (5, 2), (12, 3), (200, 60)):
        assert len(render_chart(data, w, h)) == h


def test_bucketing_memo_gives_the_same_result_as_a_fresh_pass():
    xs = list(range(1, 5001))
    ys = [((i * 7919) % 101) / 10 for i in xs]
    memo: dict = {}
    for n in (10, 11, 500, 2000, 2001, 5000):
        got = _bucketize(xs[:n], ys[:n], 0, 5000, 120, memo, "k")
        assert got == _bucketize(xs[:n], ys[:n], 0, 5000, 120)
    # a series that changed under the memo (a resume cut it back) is bucketed afresh
    got = _bucketize(xs[:100], [0.0] * 100, 0, 5000, 120, memo, "k")
    assert got == _bucketize(xs[:100], [0.0] * 100, 0, 5000, 120)


def test_ema_is_debiased():
    assert ema([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]
    out = ema([1.0, 0.0], 0.5)
    assert out[0] == 1.0 and 0 < out[1] < 1.0


def test_gauge_and_spark():
    g = gauge_strip(GaugeData("VRAM", 40 * 1024, 80 * 1024, 60 * 1024), 60)
    assert g.cell_length == 60
    assert "40.0/80.0 GiB" in g.text and "pk 60.0" in g.text and "│" in g.text
    assert "no GPU readings (CPU)" in gauge_strip(GaugeData(note="no GPU readings (CPU)"), 60).text
    s = spark_strip(SparkData("util", tuple([10.0] * 500 + [100.0]), "%", 0, 100), 30)
    assert s.cell_length == 30 and "100%" in s.text and "█" in s.text  # the last spike survives downsampling


def test_log_tail_reads_only_new_bytes_handles_progress_bars_and_truncation(tmp_path: Path):
    log = tmp_path / "stdout.log"
    log.write_bytes(b"one\ntwo\n 10%|#   |\r 50%|##  |\r100%|####|\nhalf")
    r = LogTailReader(log, max_lines=3)
    assert r.poll()
    assert r.snapshot() == ("two", "100%|####|", "half")
    assert not r.poll()
    with open(log, "ab") as fh:
        fh.write(b" a line\n\x1b[31mred\x1b[0m\n")
    assert r.poll()
    assert r.snapshot() == ("100%|####|", "half a line", "red")
    log.write_bytes(b"fresh\n")  # truncated / replaced: start again
    assert r.poll()
    assert r.snapshot() == ("fresh",)


def _copy_run(src: Path, dst_parent: Path, lines: int | None = None) -> Path:
    dst = dst_parent / src.name
    dst.mkdir(parents=True)
    shutil.copy(src / "spec.json", dst / "spec.json")
    shutil.copy(src / "stdout.log", dst / "stdout.log")
    all_lines = (src / "events.jsonl").read_bytes().splitlines(keepends=True)
    (dst / "events.jsonl").write_bytes(b"".join(all_lines[:lines] if lines else all_lines))
    return dst


def test_watcher_follows_appends_torn_lines_and_two_watchers_agree(tmp_path: Path):
    run = _copy_run(FINISHED, tmp_path, lines=50)
    lines = (FINISHED / "events.jsonl").read_bytes().splitlines(keepends=True)
    # this test process plays the job: alive, so the run is "running", not "crashed"
    (run / JOB_FILE).write_text(json.dumps({"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}))
    got_a, got_b = [], []
    a = RunWatcher(run, got_a.append, active_interval=0.02, idle_interval=0.05).start()
    b = RunWatcher(run, got_b.append, active_interval=0.02, idle_interval=0.05).start()
    try:
        def drawn(pred):
            """The UI's side: take each snapshot as it comes (ack), then look."""
            def check():
                for w in (a, b):
                    w.ack()
                return pred()
            return check

        wait_for(drawn(lambda: got_a and got_b and got_a[-1].state.last_seq == 49 and got_b[-1].state.last_seq == 49),
                 "50 events")
        # the job is alive but the recorded events are a year old: stalled, as a hung job would show
        assert got_a[-1].status == "stalled"
        # more events and a torn last line (half of event 60)
        with open(run / "events.jsonl", "ab") as fh:
            fh.write(b"".join(lines[50:60]) + lines[60][:17])
        wait_for(drawn(lambda: got_a[-1].state.last_seq == 59 and got_b[-1].state.last_seq == 59), "the complete lines")
        # the torn line waits: both watchers have read the file again since, and still stop before it
        polls = (a.polls, b.polls)
        wait_for(drawn(lambda: a.polls >= polls[0] + 2 and b.polls >= polls[1] + 2), "two more polls")
        assert got_a[-1].state.last_seq == a.state.last_seq == 59 and b.state.last_seq == 59
        with open(run / "events.jsonl", "ab") as fh:
            fh.write(lines[60][17:] + b"".join(lines[61:]))
        wait_for(drawn(lambda: got_a[-1].status == "finished" and got_b[-1].status == "finished"), "the end")
        snap = got_a[-1]
        assert snap.state.step == 240 and len(snap.loss_x) == 240 and len(snap.ema_y) == 240
        assert snap.state.checkpoints == (80, 160, 240)
        assert snap.log_lines[-1].startswith("finished at step 240")
        assert snap.bad_lines == 0
        # snapshots are immutable copies: the watcher's own lists go on growing independently
        assert isinstance(snap.state.loss_steps, tuple)
    finally:
        a.stop()
        b.stop()


def test_watcher_never_has_more_than_one_snapshot_in_flight(tmp_path: Path):
    run = tmp_path / "20250101-000000-fast"
    run.mkdir()
    (run / JOB_FILE).write_text(json.dumps({"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}))
    delivered = []
    w = RunWatcher(run, delivered.append, active_interval=0.01, idle_interval=0.02, max_rate=100)
    writer = EventWriter(run / "events.jsonl")
    stop = threading.Event()

    def write():
        step = 0
        while not stop.is_set():
            step += 1
            writer.emit("log", step=step, epoch=0.0, loss=1.0, lr=1e-4, grad_norm=1.0, tokens_per_s=1.0,
                        elapsed_s=1.0, eta_s=1.0)
            time.sleep(0.002)

    th = threading.Thread(target=write)
    th.start()
    started = time.monotonic()
    w.start()
    try:
        # the watcher keeps folding what the job writes while the UI has not acked its first snapshot...
        wait_for(lambda: delivered and w.polls >= 20 and w.folded > delivered[0].state.events + 50,
                 "the watcher to fold on without an ack")
        # ...but hands over no more than one snapshot per ACK_TIMEOUT: none is queued behind the first
        elapsed = time.monotonic() - started
        assert 1 <= len(delivered) <= 1 + int(elapsed / ACK_TIMEOUT), (len(delivered), elapsed)
        before = len(delivered)
        w.ack()
        wait_for(lambda: len(delivered) > before, "the next snapshot once the UI acked")
    finally:
        stop.set()
        th.join()
        w.stop()
        writer.close()
    # the newest snapshot carries everything folded so far: nothing is queued behind it
    assert w.folded >= delivered[-1].state.events


def test_run_index_folds_incrementally_and_resolves_status(tmp_path: Path):
    runs = tmp_path / "runs"
    _copy_run(FINISHED, runs)
    part = _copy_run(STOPPED, runs, lines=20)
    idx = RunIndex(runs)
    rows = idx.refresh()
    assert [r.summary.run_id for r in rows] == [STOPPED.name, FINISHED.name]  # newest first
    assert rows[1].summary.status == "finished" and rows[1].summary.step == 240
    assert rows[0].summary.status == "crashed"  # no job and no terminal event
    with open(part / "events.jsonl", "ab") as fh:
        fh.write(b"".join((STOPPED / "events.jsonl").read_bytes().splitlines(keepends=True)[20:]))
    rows = idx.refresh()
    assert rows[0].summary.status == "stopped" and rows[0].summary.step == 150
    assert len(rows[0].loss_x) == 150


def test_envelope_keeps_extremes_and_ends_with_bounded_points():
    import random

    from medtui_engine.series import Envelope

    rng = random.Random(3)
    env = Envelope()
    ys = [rng.random() for _ in range(100_000)]
    ys[54_321], ys[777] = 5.0, -3.0  # one spike each way must survive decimation
    for x, y in enumerate(ys):
        env.add(x, y)
    px, py = env.points()
    assert len(px) <= 4 * Envelope.MAX_BUCKETS and len(env.buckets) <= Envelope.MAX_BUCKETS
    assert px == sorted(px) and (px[0], px[-1]) == (0, 99_999) and py[-1] == ys[-1]
    assert (max(py), min(py)) == (5.0, -3.0)
    assert all(ys[int(x)] == y for x, y in zip(px, py, strict=True))  # only real points
    assert sum(b[0] for b in env.buckets) == len(ys)
