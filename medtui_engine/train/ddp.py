"""Several processes for one run (DDP), started through torchrun; one job to every view.

The design: the job process (``python -m medtui_engine.train.job RUN_DIR --nproc N``, the pid in
``job.json``, the leader of its own process group) stays the job. It writes ``job_start``, then
runs ``python -m torch.distributed.run`` (torchrun) as its child, which starts the N ranks
(``python -m medtui_engine.train.job RUN_DIR --worker``). While the ranks run, global rank 0 is
the only writer of ``events.jsonl``, checkpoints and the adapter; every rank writes its own
``rank-N.log``. The job watches the ranks: when one dies before it has said it is done, the job
kills every process of its group and writes the one ``failed`` event with that rank's error. A
stop reaches every rank through the STOP file; the ranks agree on the step to stop at (a tiny
all-reduce each step), so they save one checkpoint and end together.

Nothing heavy is imported at module scope (the launcher imports this module).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

RANK_LOG = "rank-{rank}.log"
START_MARK = "MEDTUI_RANK_START "
DONE_MARK = "MEDTUI_RANK_DONE "
ERROR_MARK = "MEDTUI_RANK_ERROR "
GPUS_RULE = "must be all, a count of GPUs (e.g. 2) or GPU indices separated by commas (e.g. 0,1)"
STOP_TIMEOUT_S = 600.0   # a stop that has not ended every rank by then: the job's processes are killed


# ------------------------------------------------------------------ the `gpus` setting

def parse_gpus(text: str) -> str | int | list[int]:
    """'all' -> 'all'; '2' -> 2 (a count); '0,1' or '3,' -> [0, 1] / [3] (indices). ValueError otherwise."""
    raw = str(text).strip().lower()
    if raw == "all":
        return "all"
    if raw.isdigit() and "," not in raw:
        n = int(raw)
        if n < 1:
            raise ValueError(GPUS_RULE)
        return n
    parts = [p.strip() for p in raw.split(",")]
    if len([p for p in parts if p]) >= 1 and "," in raw and all(p.isdigit() for p in parts if p):
        idx = [int(p) for p in parts if p]
        if len(set(idx)) != len(idx):
            raise ValueError(GPUS_RULE + " (each index once)")
        return idx
    raise ValueError(GPUS_RULE)


def gpus_ok(text: str) -> bool:
    try:
        parse_gpus(text)
    except ValueError:
        return False
    return True


def asked_count(gpus: str) -> int | None:
    """How many GPUs the setting asks for, when it says so without looking at the machine."""
    value = parse_gpus(gpus)
    if value == "all":
        return None
    return value if isinstance(value, int) else len(value)


def resolve_gpus(gpus: str, available: list[int]) -> list[int]:
    """The NVML indices to train on, from the setting and the GPUs this process may use. UserError
    when the machine has fewer than asked or an index is not there."""
    value = parse_gpus(gpus)
    if value == "all":
        if not available:
            raise UserError("--gpus all: this machine has no usable NVIDIA GPU; for several processes on the "
                            "CPU (gloo) use --nproc N")
        return list(available)
    if isinstance(value, int):
        if value > len(available):
            have = f"only {len(available)}" if available else "none"
            raise UserError(f"--gpus {value}: {value} GPUs asked for, this machine has {have} usable"
                            + ("" if available else "; for several processes on the CPU (gloo) use --nproc N"))
        return list(available[:value])
    missing = [i for i in value if i not in available]
    if missing:
        raise UserError(f"--gpus {gpus}: GPU {', '.join(map(str, missing))} is not on this machine (or hidden by "
                        f"CUDA_VISIBLE_DEVICES); the usable GPUs are: {', '.join(map(str, available)) or 'none'}")
    return list(value)


def split_batch(micro_batch: int, grad_accum: int, world: int) -> tuple[int, str | None]:
    """(grad accumulation per process, notice). The effective batch stays what was asked:
    micro_batch x grad_accum = micro_batch x (grad_accum / world) x world. UserError when it cannot."""
    if world <= 1:
        return grad_accum, None
    if grad_accum % world:
        raise UserError(
            f"the effective batch (micro batch {micro_batch} x grad accumulation {grad_accum} = "
            f"{micro_batch * grad_accum}) cannot be shared by {world} processes: make --grad-accum a multiple "
            f"of {world} (e.g. {world * max(1, round(grad_accum / world))}), or train on fewer GPUs")
    per = grad_accum // world
    return per, (f"{world} processes: grad accumulation {grad_accum} -> {per} per process, so micro batch "
                 f"{micro_batch} x {per} x {world} processes = effective batch {micro_batch * grad_accum}, as asked")


@dataclass(frozen=True)
class Plan:
    nproc: int                     # processes on this box (torchrun's --nproc_per_node)
    world: int                     # processes over all boxes
    gpu_indices: tuple[int, ...]   # NVML indices (empty: the CPU)

    @property
    def distributed(self) -> bool:
        return self.world > 1


def plan_for(spec, available: list[int] | None = None) -> Plan:
    """How many processes the spec asks for on this box. ``available``: usable NVML indices
    (read here when None). One process (the single-GPU or CPU job) when nothing more is asked."""
    nnodes = max(1, int(getattr(spec, "nnodes", 1) or 1))
    if getattr(spec, "nproc", 0):
        return Plan(int(spec.nproc), int(spec.nproc) * nnodes, ())
    if str(spec.gpus).strip() == "1" and nnodes == 1:
        return Plan(1, 1, ())
    if available is None:
        available = usable_gpus()
    idx = resolve_gpus(spec.gpus, available)
    return Plan(len(idx), len(idx) * nnodes, tuple(idx))


def usable_gpus() -> list[int]:
    from ..gpu import read_nvml, visible_gpu_indices

    info = read_nvml(with_processes=False)
    if not info.available:
        return []
    visible = visible_gpu_indices()
    return [g.index for g in info.gpus if visible is None or g.index in visible]


# ------------------------------------------------------------------ torchrun

def torchrun_argv(module: str, run_dir: Path, nproc: int, spec, extra: list[str]) -> list[str]:
    """``python -m torch.distributed.run ...`` for this box: standalone on one box; torchrun's own
    multi-node settings passed through unchanged when there are several."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    nnodes = int(getattr(spec, "nnodes", 1) or 1)
    if nnodes > 1:
        # torchrun's static rendezvous honours --node_rank: box 0 holds global rank 0 (the run's writer)
        argv += ["--nnodes", str(nnodes), "--node_rank", str(spec.node_rank), "--rdzv_endpoint", spec.rdzv_endpoint]
        if spec.rdzv_id:
            argv += ["--rdzv_id", spec.rdzv_id]
    else:
        argv += ["--standalone"]
    return argv + ["-m", module, str(run_dir), "--worker", *extra]


def rank_env() -> tuple[int, int, int]:
    """(global rank, local rank, world size) as torchrun set them; (0, 0, 1) outside torchrun."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent ends (no orphan rank if torchrun is killed)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the job's process-group kill still applies
        pass


def init_worker(run_dir: Path) -> tuple[int, int, int]:
    """In a rank: die with torchrun, send this rank's output to rank-N.log, join the process group
    (nccl on GPUs, gloo on the CPU). Returns (rank, local rank, world)."""
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # torchrun ended before the line above
        os._exit(1)
    rank, local, world = rank_env()
    fd = os.open(run_dir / RANK_LOG.format(rank=rank), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    mark(START_MARK, rank=rank, pid=os.getpid(), local_rank=local, world=world)
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return rank, local, world


def mark(prefix: str, **fields) -> None:
    """One machine-readable line in this rank's log (the job reads them)."""
    print(prefix + json.dumps({"t": round(time.time(), 3), **fields}, ensure_ascii=False), flush=True)


def any_rank(flag: bool) -> bool:
    """True on every rank when any rank says True (a stop seen by one rank is the stop of all)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return bool(flag)
    import torch

    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_ranks() -> list[dict]:
    """Every rank's pid, host and device, gathered on all ranks (for train_begin)."""
    import socket

    dist = sys.modules.get("torch.distributed")
    me = {"rank": rank_env()[0], "pid": os.getpid(), "host": socket.gethostname()}
    if dist is None or not dist.is_initialized():
        return [me]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, me)
    return out


def finish_worker() -> None:
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass


class NullWriter:
    """The event writer of ranks other than 0: events are only printed to the rank's log."""

    next_seq = 0

    def emit(self, type: str, **fields) -> dict:  # noqa: A002
        return {"type": type, **fields}

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ the job watching its ranks

def _rank_lines(run_dir: Path, offsets: dict[int, int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for path in run_dir.glob("rank-*.log"):
        try:
            rank = int(path.stem.split("-")[1])
            with open(path, "rb") as fh:
                fh.seek(offsets.get(rank, 0))
                out[rank] = fh.read().decode("utf-8", "replace").splitlines()
        except (ValueError, OSError):
            continue
    return out


def _marks(lines: list[str], prefix: str) -> list[dict]:
    found = []
    for line in lines:
        if line.startswith(prefix):
            try:
                found.append(json.loads(line[len(prefix):]))
            except ValueError:
                pass
    return found


def _group_pids(me: int) -> list[int]:
    """Every process of this job but the job itself: its descendants, and (as the group's leader)
    every member of its process group, orphans included."""
    pgid = os.getpgrp()
    leader = pgid == me
    children: dict[int, list[int]] = {}
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
            rest = data[data.rindex(b")") + 2:].split()
            ppid, pgrp = int(rest[1]), int(rest[2])
        except (OSError, ValueError, IndexError):
            continue
        pid = int(entry)
        children.setdefault(ppid, []).append(pid)
        if leader and pgrp == pgid and pid != me:
            members.append(pid)
    todo, seen = [me], set()
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return sorted(seen | set(members))


def kill_rest(me: int | None = None) -> list[int]:
    """SIGKILL every other process of this job (torchrun and the ranks); returns their pids."""
    me = os.getpid() if me is None else me
    pids = _group_pids(me)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def _first_failure(run_dir: Path, offsets: dict[int, int], pids: dict[int, int]) -> dict | None:
    """The rank whose failure ended the run, or None while all is well. A rank that died without a
    word (killed) comes first: the others' errors (a lost peer) follow from it; else the earliest error."""
    dead = [r for r, pid in pids.items() if not _alive(pid)]
    lines = _rank_lines(run_dir, offsets)   # read after the deaths: a rank's last words are in
    silent = [r for r in dead if not _marks(lines.get(r, []), DONE_MARK) and not _marks(lines.get(r, []), ERROR_MARK)]
    if silent:
        return {"rank": min(silent), "pid": pids[min(silent)]}
    errors = [{"rank": r, "pid": pids.get(r), **m} for r, ls in lines.items() for m in _marks(ls, ERROR_MARK)]
    if errors:
        return min(errors, key=lambda e: (e.get("t", 0), e["rank"]))
    return None


def _alive(pid: int) -> bool:
    from ..runs.jobs import _proc_state

    return _proc_state(pid) not in {"Z", "X", None}


def supervise(run_dir: Path, module: str, nproc: int, spec, extra: list[str], stop, first_seq: int) -> int:
    """Run torchrun for this box's ranks and watch them until they end; returns the job's exit status.

    ``stop``: the job's StopFlag (SIGTERM / STOP file). ``first_seq``: the seq of this job's
    job_start: a terminal event after it was written by rank 0."""
    import subprocess

    from ..runs.events import EventWriter, read_events
    from ..runs.jobs import STOP_FILE
    from ..runs.store import EVENTS_FILE

    offsets = {}
    for path in run_dir.glob("rank-*.log"):
        try:
            offsets[int(path.stem.split("-")[1])] = path.stat().st_size
        except (ValueError, OSError):
            pass
    argv = torchrun_argv(module, run_dir, nproc, spec, extra)
    print("starting:", " ".join(argv), flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    proc = subprocess.Popen(argv, cwd=str(run_dir), env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    failure: dict | None = None
    stop_deadline: float | None = None
    pids: dict[int, int] = {}
    while proc.poll() is None:
        time.sleep(0.25)
        lines = _rank_lines(run_dir, offsets)
        for rank, ls in lines.items():
            for m in _marks(ls, START_MARK):
                pids[rank] = int(m["pid"])
        if stop.requested() and stop_deadline is None:
            if not (run_dir / STOP_FILE).exists():  # a SIGTERM: tell the ranks through the file
                (run_dir / STOP_FILE).write_text(f"stop requested at {time.time():.0f} ({stop.reason})\n")
            stop_deadline = time.monotonic() + STOP_TIMEOUT_S
        failure = _first_failure(run_dir, offsets, pids)
        if failure is not None or (stop_deadline is not None and time.monotonic() > stop_deadline):
            break
    timed_out = proc.poll() is None and failure is None
    killed = kill_rest()
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in killed) and time.monotonic() < deadline:
        time.sleep(0.05)

    events = read_events(run_dir / EVENTS_FILE)
    mine = [e for e in events if e.get("seq", -1) > first_seq]
    terminal = [e for e in mine if e.get("type") in ("finished", "stopped", "failed")]
    if terminal:
        print(f"ranks ended: {terminal[-1]['type']}", flush=True)
        return 0 if terminal[-1]["type"] in ("finished", "stopped") else 1
    if failure is None and int(getattr(spec, "node_rank", 0) or 0) > 0 and pids and all(
            _marks(ls, DONE_MARK) for r, ls in _rank_lines(run_dir, offsets).items() if r in pids):
        # another box of a several-box run: its ranks are done; box 0 wrote the adapter
        writer = EventWriter(run_dir / EVENTS_FILE)
        try:
            writer.emit("finished", step=max((m.get("step") or 0) for ls in _rank_lines(run_dir, offsets).values()
                                             for m in _marks(ls, DONE_MARK)),
                        adapter="", runtime_s=None, final_loss=None,
                        note=f"box {spec.node_rank} trained its ranks; box 0 holds the adapter")
        finally:
            writer.close()
        return 0
    step = max((e["step"] for e in mine if e.get("type") in ("log", "checkpoint") and isinstance(e.get("step"), int)),
               default=None)
    if failure is None:  # torchrun ended on its own without a word from rank 0: read the logs
        failure = _first_failure(run_dir, offsets, pids)
    if timed_out:
        message = (f"the stop did not end every rank within {STOP_TIMEOUT_S:.0f} s; the job's processes were "
                   "killed; resume from the newest checkpoint")
        etype, tb = "StopTimeout", ""
    elif failure is not None and failure.get("error"):
        message = f"rank {failure['rank']} failed: {failure['error']}"
        etype, tb = failure.get("error_type", "Error"), failure.get("traceback_tail", "")
    elif failure is not None:
        message = (f"rank {failure['rank']} (pid {failure['pid']}) died without an error message (killed by a "
                   "signal, e.g. kill -9 or the kernel's out-of-memory killer); the other ranks were ended. "
                   f"See {RANK_LOG.format(rank=failure['rank'])} in the run directory")
        etype, tb = "RankDied", ""
    else:
        message = (f"torchrun ended with status {proc.returncode} before the ranks started training; "
                   "see stdout.log in the run directory")
        etype, tb = "TorchrunFailed", ""
    writer = EventWriter(run_dir / EVENTS_FILE)
    try:
        writer.emit("failed", step=step, error=message, error_type=etype, traceback_tail=tb[-4000:],
                    rank=failure.get("rank") if failure else None)
    finally:
        writer.close()
    print("failed:", message, flush=True)
    return 1
