"""The offline proof: `medtui check --offline-proof` trains one real step and generates with
networking removed, and counts zero connection attempts. And the guard that counts does see (and,
in refuse mode, refuse) a real attempt: a count of zero means something."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TRAIN_JOBS

from medtui_engine.privacy.netguard import LOG_ENV, REFUSE_ENV, SITECUSTOMIZE, read_log

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, TRAIN_JOBS]


def medtui(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_offline_proof_passes_in_a_namespace_where_allowed_else_with_sockets_refused(demo_model: Path,
                                                                                     workspace: Path):
    """What CI runs: the default method, as a user reads it."""
    proc = medtui("check", "--offline-proof")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "0 connection attempts seen leaving this machine" in out and "verdict: ok" in out
    assert ("a network namespace without interfaces" in out and "interfaces: lo (down)" in out) or (
        "every socket connection and name lookup leaving this machine refused" in out)
    assert "1 optimizer step(s)" in out and "tokens generated with the run's adapter" in out


def test_offline_proof_with_every_socket_refused(demo_model: Path, workspace: Path):
    """The fallback where no namespace is allowed, forced here so it is tested on every machine."""
    proc = medtui("check", "--offline-proof", "--proof-method", "refuse", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["method"] == "refuse"
    assert result["connection_attempts"] == 0 and result["attempts"] == []
    child = result["child"]
    assert child["watched"] == 1  # the guard was in the proof's processes
    assert child["train"]["ok"] and child["train"]["steps"] == 1
    assert child["generate"]["ok"] and child["generate"]["tokens"] > 0
    assert child["network"]["probe"] == "failed (medtui offline proof: network refused)"
    assert [r["label"] for r in result["rows"]] == ["method", "probe", "training", "generation", "network"]


@pytest.mark.parametrize("refuse", [False, True])
def test_the_guard_sees_and_refuses_a_real_attempt(tmp_path: Path, refuse: bool):
    site = tmp_path / "guard"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), LOG_ENV: str(log)}
    if refuse:
        env[REFUSE_ENV] = "1"
    code = ("import socket\n"
            "s = socket.socket(); s.settimeout(0.5)\n"
            "try:\n    s.connect(('192.0.2.1', 9))\nexcept OSError as e:\n    print(type(e).__name__)\n"
            "try:\n    socket.getaddrinfo('localhost', 80)\nexcept OSError:\n    pass\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = read_log(log)
    outside = [e for e in seen if not e["local"]]
    assert [(e["event"], e["target"], e["refused"]) for e in outside] == [("socket.connect", "192.0.2.1:9", refuse)]
    assert any(e["local"] and e["event"] == "socket.getaddrinfo" for e in seen)  # loopback: seen, not counted
    if refuse:
        assert proc.stdout.strip() == "ConnectionRefusedError"
