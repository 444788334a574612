"""A network guard for the offline proof: an audit hook (PEP 578) that sees every socket connection,
datagram and name lookup a Python process makes, writes each to a log (one JSON line, no payload),
and, in refuse mode, refuses every one that leaves the machine.

It is installed in each process of the proof by a ``sitecustomize`` module the proof writes into a
folder of its own on ``PYTHONPATH`` (so the CLI, the training job and the inference process are all
watched), and only when ``MEDTUI_NET_GUARD_LOG`` names the log.
"""

from __future__ import annotations

import errno
import json
import os
import sys

LOG_ENV = "MEDTUI_NET_GUARD_LOG"
REFUSE_ENV = "MEDTUI_NET_GUARD_REFUSE"   # "1": refuse (no network namespace to rely on)

# The audit events that reach for the network: connections, datagrams, name lookups.
_ADDRESS_EVENTS = {"socket.connect", "socket.sendto", "socket.sendmsg"}
_NAME_EVENTS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                "socket.gethostbyaddr", "socket.getnameinfo"}

SITECUSTOMIZE = (
    "# written by medtui's offline proof: watch (and, if asked, refuse) every network attempt\n"
    "from medtui_engine.privacy.netguard import install_from_env\n"
    "install_from_env()\n"
)


def _local_host(host: object) -> bool:
    if host is None or host in ("", "localhost", b"localhost", "::1", "ip6-localhost"):
        return True
    text = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
    return text.startswith("127.") or text == "::1" or text.startswith("::ffff:127.")


def classify(event: str, args: tuple) -> tuple[str, bool] | None:
    """(what was reached for, whether it stays on this machine), or None for an event of no interest."""
    if event in _ADDRESS_EVENTS:
        address = args[1] if len(args) > 1 else None
        if address is None:  # sendmsg on a connected socket
            return "connected socket", True
        if isinstance(address, str | bytes):  # AF_UNIX: a file on this machine
            return "unix socket", True
        if isinstance(address, tuple) and address:
            return f"{address[0]}:{address[1] if len(address) > 1 else ''}", _local_host(address[0])
        return repr(address), False
    if event in _NAME_EVENTS:
        host = args[0] if args else None
        if isinstance(host, tuple):  # getnameinfo((host, port), flags)
            host = host[0] if host else None
        return f"name lookup {host}", _local_host(host)
    return None


def install(log_path: str, refuse: bool) -> None:
    """Add the audit hook to this process (it cannot be removed: the process is watched until it ends)."""

    def hook(event: str, args: tuple) -> None:
        if not event.startswith("socket."):
            return
        seen = classify(event, args)
        if seen is None:
            return
        target, local = seen
        refused = refuse and not local
        line = json.dumps({"pid": os.getpid(), "argv0": sys.argv[0] if sys.argv else "", "event": event,
                           "target": target, "local": local, "refused": refused})
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
        if refused:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "medtui offline proof: network refused")

    sys.addaudithook(hook)


def install_from_env() -> None:
    log = os.environ.get(LOG_ENV)
    if log:
        install(log, os.environ.get(REFUSE_ENV) == "1")


def read_log(log_path: str | os.PathLike) -> list[dict]:
    try:
        with open(log_path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
