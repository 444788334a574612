"""Events, the tailer, the reducer and the run store: plain files, no training."""

from __future__ import annotations

import json
import os
import time

import pytest

from medtui_engine.runs.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    EventWriter,
    last_seq,
    read_events,
    validate_event,
)
from medtui_engine.runs.state import RunState, apply_event, fold
from medtui_engine.runs.tailer import EventTailer


def _log(w: EventWriter, step: int, loss: float = 1.0) -> dict:
    return w.emit("log", step=step, epoch=step / 10, loss=loss, lr=1e-4, grad_norm=0.5, tokens_per_s=100.0,
                  elapsed_s=float(step), eta_s=10.0)


def test_writer_lines_validate_and_sequence(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as w:
        w.emit("job_start", pid=1, start_time=2, backend="hf", resumed_from=None, versions={"torch": "x"})
        w.emit("train_begin", total_steps=3, start_step=0, epochs=1.0, steps_per_epoch=3, num_examples=3,
               train_tokens=30, micro_batch=1, grad_accum=1, max_seq_length=64, model="m", model_label="m", device="cpu")
        _log(w, 1, float("nan"))  # NaN is not JSON: written as null
        w.emit("heartbeat", gpus=[{"index": 0, "mem_used_mib": 1.0, "mem_total_mib": 2.0, "util_pct": 3.0,
                                   "temp_c": 40.0, "power_w": 50.0}], torch_allocated_mib=None, torch_peak_mib=None, rss_mib=9.0)
        w.emit("finished", step=3, adapter="a", runtime_s=1.0, final_loss=0.5)
    lines = path.read_text().splitlines()
    assert len(lines) == 5
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == [0, 1, 2, 3, 4]
    assert all(e["v"] == SCHEMA_VERSION for e in events)
    assert events[2]["loss"] is None
    for e in events:
        assert validate_event(e) == [], e
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # a new writer (a resumed job) continues the sequence
    with EventWriter(path) as w:
        assert w.emit("job_start", pid=1, start_time=None, backend="hf", resumed_from=3, versions={})["seq"] == 5


def test_validate_event_names_problems(tmp_path):
    assert validate_event([]) != []
    probs = validate_event({"v": 1, "seq": 0, "t": 1.0, "type": "log", "step": "3"})
    assert any("step" in p for p in probs) and any("loss" in p for p in probs)
    assert any("unknown event type" in p for p in validate_event({"v": 1, "seq": 0, "t": 1.0, "type": "nope"}))
    assert any("v must be" in p for p in validate_event({"v": 2, "seq": 0, "t": 1.0, "type": "checkpoint", "step": 1, "path": "p"}))
    assert set(EVENT_TYPES) >= {"job_start", "train_begin", "log", "eval", "checkpoint", "heartbeat", "finished", "stopped", "failed"}
    with EventWriter(tmp_path / "e.jsonl") as w, pytest.raises(ValueError):
        w.emit("bogus")


def test_writer_after_torn_line_starts_a_fresh_line(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as w:
        _log(w, 1)
    with open(path, "ab") as fh:
        fh.write(b'{"v":1,"seq":1,"t":1,"type":"lo')  # the job died mid-write
    assert last_seq(path) == 0
    with EventWriter(path) as w:
        assert _log(w, 2)["seq"] == 1
    events = read_events(path)
    assert [e["step"] for e in events] == [1, 2]


def test_tailer_reads_only_new_complete_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    tailer = EventTailer(path)
    assert tailer.read_new() == []  # no file yet
    with EventWriter(path) as w:
        _log(w, 1)
        _log(w, 2)
    assert [e["step"] for e in tailer.read_new()] == [1, 2]
    assert tailer.read_new() == []
    # a torn last line waits until its newline arrives
    line = json.dumps({"v": 1, "seq": 2, "t": 1.0, "type": "log", "step": 3}).encode()
    with open(path, "ab") as fh:
        fh.write(line[:10])
    assert tailer.read_new() == []
    with open(path, "ab") as fh:
        fh.write(line[10:] + b"\n")
    assert [e["step"] for e in tailer.read_new()] == [3]
    # garbage lines are skipped and counted, never raised
    with open(path, "ab") as fh:
        fh.write(b"not json\n[1,2]\n\xff\xfe\n")
        fh.write(json.dumps({"v": 1, "seq": 3, "t": 1.0, "type": "log", "step": 4}).encode() + b"\n")
    assert [e["step"] for e in tailer.read_new()] == [4]
    assert tailer.bad_lines == 3


def test_tailer_restarts_on_truncated_or_replaced_file(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as w:
        for s in range(5):
            _log(w, s)
    tailer = EventTailer(path)
    assert len(tailer.read_new()) == 5 and not tailer.reset
    path.write_text(json.dumps({"v": 1, "seq": 0, "t": 1.0, "type": "log", "step": 99}) + "\n")  # truncated
    got = tailer.read_new()
    assert tailer.reset and [e["step"] for e in got] == [99]
    # replaced by another file (new inode) of greater size
    other = tmp_path / "other.jsonl"
    with EventWriter(other) as w:
        for s in range(10):
            _log(w, 100 + s)
    os.replace(other, path)
    got = tailer.read_new()
    assert tailer.reset and len(got) == 10 and got[0]["step"] == 100


def test_tailer_reads_a_backlog_in_slices(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as w:
        for s in range(2000):
            _log(w, s)
    tailer = EventTailer(path, max_bytes=4096)
    first = tailer.read_new()
    assert 0 < len(first) < 2000
    rest = tailer.read_all_new()
    assert len(first) + len(rest) == 2000


def _begin(start_step: int, total: int = 100) -> dict:
    return {"type": "train_begin", "t": 1.0, "total_steps": total, "start_step": start_step, "epochs": 1.0}


def test_reducer_folds_a_resumed_run():
    evs = [{"type": "job_start", "t": 1.0, "pid": 5, "resumed_from": None, "backend": "hf"}, _begin(0)]
    evs += [{"type": "log", "t": 2.0, "step": s, "loss": 10.0 - s, "lr": 1e-4, "grad_norm": 1.0, "epoch": s / 10} for s in range(1, 8)]
    evs += [{"type": "checkpoint", "t": 3.0, "step": 5, "path": "c5"}]
    st = fold(evs)
    assert st.status == "running" and st.step == 7 and st.best_loss == 3.0 and st.last_loss == 3.0
    # the job died at step 7; resume from the step-5 checkpoint drops points 6 and 7 and continues
    evs2 = [{"type": "job_start", "t": 4.0, "pid": 6, "resumed_from": 5, "backend": "hf"}, _begin(5)]
    evs2 += [{"type": "log", "t": 5.0, "step": s, "loss": 20.0 - s} for s in range(6, 9)]
    evs2 += [{"type": "finished", "t": 6.0, "step": 8, "adapter": "a", "runtime_s": 1.0, "final_loss": 12.0}]
    fold(evs2, st)
    assert st.resumed == 1 and st.status == "finished" and st.terminal
    assert st.loss_steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert st.loss_values[5:] == [14.0, 13.0, 12.0]
    assert [s for s, _ in st.lr] == [1, 2, 3, 4, 5]
    assert st.checkpoints == [5] and st.adapter == "a" and st.eta_s == 0.0


def test_reducer_tolerates_odd_events_and_tracks_heartbeats():
    st = RunState()
    for ev in ({}, {"type": "log"}, {"type": "log", "step": "x"}, {"type": "mystery", "t": 9.0},
               {"type": "heartbeat", "t": 10.0, "gpus": [{"index": 0, "mem_used_mib": 100.0, "mem_total_mib": 200.0}]},
               {"type": "heartbeat", "t": 15.0, "gpus": [{"index": 0, "mem_used_mib": 50.0}], "torch_peak_mib": 7.0},
               {"type": "failed", "t": 16.0, "step": 0, "error": "boom", "error_type": "E", "traceback_tail": ""}):
        apply_event(st, ev)
    assert st.events == 7 and st.hb_t == [10.0, 15.0] and st.peak_mem_mib == 100.0 and st.torch_peak_mib == 7.0
    assert st.status == "failed" and st.error == "boom" and st.last_event_t == 16.0


def test_fold_100k_log_events_is_fast():
    events = [{"v": 1, "seq": i, "t": float(i), "type": "log", "step": i, "loss": 1.0 / (i + 1), "lr": 1e-4,
               "grad_norm": 1.0, "epoch": i / 1000, "tokens_per_s": 1.0, "elapsed_s": 1.0, "eta_s": 1.0}
              for i in range(100_000)]
    t = time.perf_counter()
    st = fold(events)
    print(f"\nfolded 100,000 log events in {time.perf_counter() - t:.3f} s")
    assert st.step == 99_999 and len(st.loss_steps) == 100_000 and len(st.lr) == 100_000
