"""Detached jobs: ``python -m MODULE JOB_DIR ARGS...`` in a session of its own.

Used by training and by merge jobs alike. The job survives the TUI closing and an SSH drop: it runs
in a new session (no controlling terminal, so no SIGHUP), stdin is /dev/null and its stdout/stderr
go to ``JOB_DIR/stdout.log``. ``job.json`` records the pid *and* the process's start time from
/proc, so a pid the kernel later reuses for another process is never taken for the job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..offline import offline_env

JOB_FILE = "job.json"
STOP_FILE = "STOP"
STDOUT_FILE = "stdout.log"


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    try:
        rest = data[data.rindex(b")") + 2:].split()
        return int(rest[19])
    except (ValueError, IndexError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return data[data.rindex(b")") + 2:].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return None


def _atomic_write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def launch_job(module: str, job_dir: Path, args: list[str] | tuple[str, ...] = (), env: dict | None = None) -> int:
    """Start ``python -m module job_dir *args`` detached; returns its pid.

    ``env`` (default: this process's environment) is passed through :func:`offline_env`, so the
    job never reaches the network unless the caller built ``env`` with ``allow_network``.
    """
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    stop = job_dir / STOP_FILE
    if stop.exists():
        stop.unlink()
    argv = [sys.executable, "-m", module, str(job_dir), *map(str, args)]
    full_env = offline_env(env)
    full_env["PYTHONUNBUFFERED"] = "1"
    # the engine must be importable by the child even when it is not installed (a source checkout)
    root = str(Path(__file__).resolve().parents[2])
    parts = [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        full_env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    log_fd = os.open(job_dir / STDOUT_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        with open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen(
                argv, stdin=devnull, stdout=log_fd, stderr=subprocess.STDOUT, env=full_env,
                cwd=str(job_dir), start_new_session=True, close_fds=True,
            )
    finally:
        os.close(log_fd)
    start = proc_start_time(proc.pid)
    _atomic_write_json(job_dir / JOB_FILE, {
        # the job leads its own process group (pgid = pid): torchrun and its ranks, if any, are in it
        "pid": proc.pid, "pgid": proc.pid, "start_time": start, "module": module, "argv": argv,
        "started_at": time.time(),
    })
    # nobody waits for the child here: a reaper thread would keep the launcher alive, and when the
    # launcher exits the child is re-parented to init, which reaps it. Forget the Popen object
    # without its destructor warning about a still-running child.
    proc.returncode = 0
    return proc.pid


def read_job(job_dir: Path) -> dict | None:
    try:
        with open(Path(job_dir) / JOB_FILE, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _reap(pid: int) -> None:
    """Collect the exit status if the job is our own child (the launcher and the job in one
    process, as in tests and the TUI), so that it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def pid_alive(pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` is running and is the same process (by its /proc start time)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    _reap(pid)
    now = proc_start_time(pid)
    if now is None:
        return False
    if start_time is not None and now != start_time:
        return False
    return _proc_state(pid) not in {"Z", "X", None}


def job_alive(job_dir: Path) -> bool:
    """The job's pid is alive AND has the start time job.json recorded."""
    job = read_job(job_dir)
    if not job:
        return False
    return pid_alive(job.get("pid"), job.get("start_time"))


def request_stop(job_dir: Path) -> None:
    """Ask the job to stop gracefully: a STOP file (seen at the next step) and SIGTERM."""
    job_dir = Path(job_dir)
    (job_dir / STOP_FILE).write_text(f"stop requested at {time.time():.0f}\n", encoding="utf-8")
    job = read_job(job_dir)
    if job and pid_alive(job.get("pid"), job.get("start_time")):
        try:
            os.kill(job["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass


def kill_job(job_dir: Path, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to the job if it is still the job; True when sent. A job that leads its own
    process group gets it with the whole group (torchrun and every rank of a several-process run)."""
    job = read_job(job_dir)
    if job and pid_alive(job.get("pid"), job.get("start_time")):
        pid = job["pid"]
        try:
            if job.get("pgid") == pid and os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False
    return False


def wait_job(job_dir: Path, timeout: float | None = None, poll: float = 0.2) -> bool:
    """Wait until the job is no longer alive; False when ``timeout`` ran out first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while job_alive(job_dir):
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
