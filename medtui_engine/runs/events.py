"""The events a job writes to its ``events.jsonl``: schema v1, one JSON object per line.

The job is the only writer. Every event carries ``v`` (schema version), ``seq`` (0, 1, 2, ... over
the whole file, continued across resumes), ``t`` (unix time) and ``type``. Readers (the TUI, the
CLI, tests) fold them with :mod:`medtui_engine.runs.state`; unknown fields are ignored so the
schema can grow without breaking old readers.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

SCHEMA_VERSION = 1

TERMINAL_TYPES = frozenset({"finished", "stopped", "failed"})

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))

# type -> {field: accepted python types}. Every listed field is required (it may be None where
# the types allow it); other fields are allowed.
EVENT_TYPES: dict[str, dict[str, tuple]] = {
    "job_start": {"pid": (int,), "start_time": _OPT_NUM, "backend": (str,), "resumed_from": _OPT_NUM,
                  "versions": (dict,)},
    "train_begin": {"total_steps": (int,), "start_step": (int,), "epochs": _NUM, "steps_per_epoch": (int,),
                    "num_examples": (int,), "train_tokens": (int,), "micro_batch": (int,), "grad_accum": (int,),
                    "max_seq_length": (int,), "model": (str,), "model_label": (str,), "device": (str,)},
    "log": {"step": (int,), "epoch": _OPT_NUM, "loss": _OPT_NUM, "lr": _OPT_NUM, "grad_norm": _OPT_NUM,
            "tokens_per_s": _OPT_NUM, "elapsed_s": _OPT_NUM, "eta_s": _OPT_NUM},
    "eval": {"step": (int,), "epoch": _OPT_NUM, "eval_loss": _OPT_NUM},
    "checkpoint": {"step": (int,), "path": (str,)},
    "heartbeat": {"gpus": (list,), "torch_allocated_mib": _OPT_NUM, "torch_peak_mib": _OPT_NUM,
                  "rss_mib": _OPT_NUM},
    # something the user should know that is not an error (4-bit impossible on the CPU, rows truncated)
    "notice": {"message": (str,), "level": (str,)},
    # the fit probe before the first step: the measured peak beside the estimate, or why it was skipped
    # (``skipped``, ``fits``, ``oom`` are extra booleans; figures in fit.probe_sentence)
    "fit_probe": {"message": (str,)},
    "finished": {"step": (int,), "adapter": (str,), "runtime_s": _OPT_NUM, "final_loss": _OPT_NUM},
    "stopped": {"step": (int,), "checkpoint": _OPT_STR, "reason": (str,)},
    # optional: ``advice`` ({"settings": {...}, "text": "..."}) and ``checkpoint`` after running out of memory
    "failed": {"step": _OPT_NUM, "error": (str,), "error_type": (str,), "traceback_tail": (str,)},
    # a resume that changed settings (spec.json keeps the first ones): the new values, the old, in words
    "resume_settings": {"step": _OPT_NUM, "settings": (dict,), "previous": (dict,), "change": (str,)},
}

# Merge jobs write the same schema with their own progress events (and the shared terminal ones).
MERGE_EVENT_TYPES: dict[str, dict[str, tuple]] = {
    # the job started: what it merges (booleans are extra fields: the validator's types exclude bool)
    "merge_begin": {"pid": (int,), "base": (str,), "adapter": (str,), "out": (str,), "dtype": (str,),
                    "method": (str,), "tensors_total": _OPT_NUM, "bytes_total": _OPT_NUM},
    # phase: merge | save | verify | install ; done/total in that phase's units
    "merge_progress": {"phase": (str,), "done": _NUM, "total": _NUM, "bytes_written": _OPT_NUM},
    # the model is written (before verification): timings and where it is being written
    "merge_written": {"seconds": _NUM, "bytes": _NUM, "shards": (int,), "device": (str,)},
    # verification figures (the same record goes into medtui.json)
    "merge_verified": {"max_abs_logit_diff": _OPT_NUM, "top1_agreement": _OPT_NUM, "failed_checks": (list,)},
    # one GGUF file written (in the merge's partial directory; ``file`` is where it will be once installed)
    "gguf_written": {"gguf_type": (str,), "file": (str,), "bytes": _NUM, "seconds": _NUM},
    # that file loaded back in a fresh process and compared with the merged model (``passed`` is an extra bool)
    "gguf_verified": {"gguf_type": (str,), "max_abs_logit_diff": _OPT_NUM, "tolerance": _OPT_NUM},
}
EVENT_TYPES.update(MERGE_EVENT_TYPES)

HEARTBEAT_GPU_FIELDS = ("index", "mem_used_mib", "mem_total_mib", "util_pct", "temp_c", "power_w")


def validate_event(obj: object) -> list[str]:
    """Problems with one decoded event (empty when it is valid schema v1)."""
    if not isinstance(obj, dict):
        return [f"an event must be a JSON object, not {type(obj).__name__}"]
    problems: list[str] = []
    if obj.get("v") != SCHEMA_VERSION:
        problems.append(f"v must be {SCHEMA_VERSION}, got {obj.get('v')!r}")
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        problems.append(f"seq must be a non-negative integer, got {seq!r}")
    t = obj.get("t")
    if not isinstance(t, _NUM) or isinstance(t, bool) or not math.isfinite(t):
        problems.append(f"t must be a unix time, got {t!r}")
    etype = obj.get("type")
    fields = EVENT_TYPES.get(etype) if isinstance(etype, str) else None
    if fields is None:
        problems.append(f"unknown event type {etype!r}")
        return problems
    for name, types in fields.items():
        if name not in obj:
            problems.append(f"{etype}: missing field '{name}'")
            continue
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"{etype}: field '{name}' has type {type(value).__name__}")
        elif isinstance(value, float) and not math.isfinite(value) and name not in {"loss", "grad_norm", "eval_loss", "final_loss"}:
            problems.append(f"{etype}: field '{name}' is not finite")
    if etype == "heartbeat" and isinstance(obj.get("gpus"), list):
        for i, gpu in enumerate(obj["gpus"]):
            if not isinstance(gpu, dict):
                problems.append(f"heartbeat: gpus[{i}] is not an object")
                continue
            missing = [f for f in HEARTBEAT_GPU_FIELDS if f not in gpu]
            if missing:
                problems.append(f"heartbeat: gpus[{i}] lacks {', '.join(missing)}")
    return problems


def _clean(value):
    """JSON has no NaN/inf: write them as null (a NaN loss is still visible as a gap)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def last_seq(path: str | os.PathLike[str]) -> int:
    """The ``seq`` of the last complete, decodable event in ``path`` (-1 when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            block = 1 << 16
            pos = size
            tail = b""
            while pos > 0:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                tail = fh.read(step) + tail
                lines = tail.split(b"\n")
                # the first piece may be partial (unless we reached the start); the last is
                # partial unless the file ends with a newline
                complete = lines[1:-1] if pos > 0 else lines[:-1]
                for raw in reversed(complete):
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(obj, dict) and isinstance(obj.get("seq"), int):
                        return obj["seq"]
                if pos == 0:
                    break
    except FileNotFoundError:
        return -1
    return -1


class EventWriter:
    """Appends events to one ``events.jsonl``. Thread-safe (the heartbeat thread writes too).

    Each line is flushed as it is written, so readers see it at once; terminal events are also
    fsynced, so a power cut after "finished" cannot lose it. Opening an existing file continues its
    sequence numbers (a resumed job appends to the same file).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seq = last_seq(self.path) + 1
        # a torn last line (the previous job died mid-write) must not glue onto our first event
        needs_newline = False
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    needs_newline = fh.read(1) != b"\n"
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fh = os.fdopen(fd, "ab", buffering=0)
        if needs_newline:
            self._fh.write(b"\n")

    @property
    def next_seq(self) -> int:
        return self._seq

    def emit(self, type: str, **fields) -> dict:  # noqa: A002 - the schema's field name
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        with self._lock:
            event = {"v": SCHEMA_VERSION, "seq": self._seq, "t": round(time.time(), 3), "type": type}
            event.update(_clean(fields))
            line = json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
            # one write() of the whole line on an O_APPEND fd: readers never see two events interleaved
            self._fh.write(line.encode("utf-8"))
            if type in TERMINAL_TYPES:
                os.fsync(self._fh.fileno())
            self._seq += 1
        return event

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_events(path: str | os.PathLike[str]) -> list[dict]:
    """Every complete, decodable event in a file (a torn last line is left out)."""
    from .tailer import EventTailer

    return EventTailer(path).read_all_new()
