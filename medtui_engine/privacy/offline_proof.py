"""The offline proof: a real training step and a generation, with networking removed, and the
connection attempts seen (zero when all is well).

Networking is removed by a network namespace without interfaces where the system allows one
(``unshare -n`` as root, ``unshare -rn`` in a user namespace otherwise); where it does not, every
socket connection and name lookup leaving the machine is refused. Either way every Python process
of the proof (the CLI, the training job, the inference) is watched by :mod:`.netguard`, which logs
each attempt. The training is the product's own job (``medtui train`` on the demo model and the
bundled demo data, one optimizer step); the generation is ``medtui ask`` on the run's adapter.

    result = run_proof()      # rows for the CLI; result.ok
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..rows import Row, Severity
from .netguard import LOG_ENV, REFUSE_ENV, SITECUSTOMIZE, read_log

METHODS = ("auto", "namespace", "refuse")
PROBE_ADDRESS = ("192.0.2.1", 443)   # TEST-NET-1: never a real host
# small enough for two CPU cores: one optimizer step of the demo model on 4 rows
TRAIN_ARGS = ["--model", "demo", "--backend", "hf", "--limit-rows", "4", "--max-steps", "1", "--max-seq-length", "64",
              "--micro-batch", "1", "--grad-accum", "1", "--lora-r", "4", "--lora-alpha", "8", "--warmup-ratio", "0",
              "--heartbeat", "1", "--name", "offline-proof", "--force"]  # a tiny job: never kept from starting
CASE = "男性，58岁，胸骨后压榨样疼痛2小时，伴大汗。心电图II、III、aVF导联ST段抬高。"


@dataclass
class Method:
    name: str            # namespace | refuse
    prefix: list[str]    # the command that runs the child in a namespace ([] for refuse)
    how: str             # in words


@dataclass
class ProofResult:
    method: Method
    ok: bool = False
    rows: list[Row] = field(default_factory=list)
    attempts: int = 0
    log: list[dict] = field(default_factory=list)
    child: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict:
        return {"ok": self.ok, "method": self.method.name, "how": self.method.how, "connection_attempts": self.attempts,
                "attempts": [e for e in self.log if not e.get("local")], "local_connections": sum(1 for e in self.log if e.get("local")),
                "child": self.child, "elapsed_s": round(self.elapsed_s, 1), "rows": [r.as_dict() for r in self.rows]}


def _works(prefix: list[str]) -> bool:
    try:
        return subprocess.run([*prefix, "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def choose_method(requested: str = "auto") -> Method:
    """A network namespace where this system allows one, else refusing every socket."""
    refuse = Method("refuse", [], "every socket connection and name lookup leaving this machine refused "
                                  "(this system allows no network namespace)")
    if requested == "refuse":
        return Method("refuse", [], "every socket connection and name lookup leaving this machine refused (as asked)")
    unshare = shutil.which("unshare")
    candidates = []
    if unshare:
        if os.geteuid() == 0:
            candidates.append(Method("namespace", [unshare, "-n"], "a network namespace without interfaces (unshare -n)"))
        candidates.append(Method("namespace", [unshare, "-r", "-n"],
                                 "a network namespace without interfaces, in a user namespace (unshare -rn)"))
    for m in candidates:
        if _works(m.prefix):
            return m
    if requested == "namespace":
        from ..errors import UserError

        raise UserError("this system allows no network namespace (unshare -n and unshare -rn both fail); "
                        "use --proof-method refuse")
    return refuse


def _python_env(extra: dict) -> dict:
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env.update(extra)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([extra.get("_GUARD_DIR", ""), root, *parts]).strip(os.pathsep)
    env.pop("_GUARD_DIR", None)
    return env


def run_proof(requested: str = "auto", timeout: float = 300.0, keep: Path | None = None) -> ProofResult:
    """Run the proof; ``keep`` keeps the proof's files in that directory (default: a temporary one, removed)."""
    started = time.monotonic()
    method = choose_method(requested)
    result = ProofResult(method)
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="medtui-offline-proof-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        guard_dir = work / "guard"
        guard_dir.mkdir(exist_ok=True)
        (guard_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        log = work / "network.log"
        log.unlink(missing_ok=True)
        env = _python_env({"_GUARD_DIR": str(guard_dir), "MEDTUI_PROOF_LOG": str(log),
                           "MEDTUI_PROOF_REFUSE": "1" if method.name == "refuse" else "0"})
        env.pop(LOG_ENV, None)  # the orchestrator itself is not watched: its probe is the point
        out = work / "child.json"
        argv = [*method.prefix, sys.executable, "-m", "medtui_engine.privacy.offline_proof", str(work), str(out)]
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            result.rows.append(Row("proof", f"did not finish within {timeout:.0f} s", Severity.PROBLEM))
            return result
        try:
            result.child = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            result.rows.append(Row("proof", f"the proof's process ended without a result (exit {proc.returncode}): "
                                            + " | ".join(tail), Severity.PROBLEM))
            return result
        result.log = read_log(log)
        result.attempts = sum(1 for e in result.log if not e.get("local"))
        _rows(result)
        result.ok = all(r.severity is not Severity.PROBLEM for r in result.rows)
        return result
    finally:
        result.elapsed_s = time.monotonic() - started
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _rows(result: ProofResult) -> None:
    c = result.child
    rows = result.rows
    net = c.get("network", {})
    if result.method.name == "namespace":
        up = [i for i in net.get("interfaces", []) if i.get("up")]
        names = ", ".join(f"{i['name']} ({'up' if i.get('up') else 'down'})" for i in net.get("interfaces", [])) or "none"
        rows.append(Row("method", f"{result.method.how}; interfaces: {names}",
                        Severity.OK if not up else Severity.PROBLEM))
    else:
        rows.append(Row("method", result.method.how, Severity.OK))
    probe = net.get("probe", "")
    rows.append(Row("probe", f"a connection to {PROBE_ADDRESS[0]}:{PROBE_ADDRESS[1]}: {probe}",
                    Severity.OK if probe.startswith("failed") else Severity.PROBLEM))
    t = c.get("train", {})
    if t.get("ok"):
        rows.append(Row("training", f"run {t.get('run_id')}: {t.get('steps')} optimizer step(s) on {t.get('device')}, "
                                    f"loss {t.get('loss') or 0:.4f}, adapter written ({t.get('seconds')} s)", Severity.OK))
    else:
        rows.append(Row("training", f"failed: {t.get('error') or 'no adapter written'}", Severity.PROBLEM))
    g = c.get("generate", {})
    if g.get("ok"):
        rows.append(Row("generation", f"{g.get('tokens')} tokens generated with the run's adapter on {g.get('device')} "
                                      f"({g.get('seconds')} s)", Severity.OK))
    else:
        rows.append(Row("generation", f"failed: {g.get('error') or 'no answer'}", Severity.PROBLEM))
    local = sum(1 for e in result.log if e.get("local"))
    processes = len({e.get("pid") for e in result.log}) if result.log else 0
    watched = c.get("watched", 0)
    text = (f"{result.attempts} connection attempts seen leaving this machine "
            f"(socket connections, datagrams and name lookups, in every Python process of the proof)")
    if local:
        text += f"; {local} on this machine only (loopback or unix sockets, from {processes} process(es))"
    if result.attempts:
        first = next(e for e in result.log if not e.get("local"))
        text += f"; the first: {first.get('event')} {first.get('target')} by {first.get('argv0')}"
    rows.append(Row("network", text, Severity.OK if result.attempts == 0 and watched else Severity.PROBLEM,
                    "" if watched else "the guard was not seen in the proof's processes: the count proves nothing"))


# ------------------------------------------------------------------------------ the child

def _interfaces() -> list[dict]:
    """This process's network interfaces (its namespace's, unlike /sys/class/net) and whether each is up."""
    import fcntl
    import socket
    import struct

    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            try:
                req = struct.pack("16sH14s", name.encode()[:15], 0, b"")
                flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), 0x8913, req))[1]  # SIOCGIFFLAGS
            except OSError:
                flags = 0
            out.append({"name": name, "up": bool(flags & 0x1)})
    return out


_PROBE = f"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect({PROBE_ADDRESS!r})
    result = "connected (the network is reachable)"
except OSError as exc:
    result = "failed (" + str(exc.strerror or exc) + ")"
finally:
    s.close()
print(json.dumps({{"probe": result, "guarded": "sitecustomize" in sys.modules}}))
"""


def _probe(env: dict, log: str) -> tuple[str, bool]:
    """A test connection from a process watched as every other one is (its own log, so it is not
    counted): what happened, and whether the guard was installed in it."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env={**env, LOG_ENV: log}, capture_output=True,
                              text=True, timeout=60)
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        return seen["probe"], bool(seen["guarded"])
    except (OSError, ValueError, IndexError, KeyError, subprocess.SubprocessError) as exc:
        return f"could not run ({exc})", False


def _cli(args: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def child(work: Path, out: Path) -> int:
    from ..paths import project_data_dir

    report: dict = {"network": {"interfaces": _interfaces()}}
    env = dict(os.environ)
    log = env.pop("MEDTUI_PROOF_LOG")
    refuse = env.pop("MEDTUI_PROOF_REFUSE") == "1"
    env[LOG_ENV] = log
    if refuse:
        env[REFUSE_ENV] = "1"
    probe, guarded = _probe(env, str(work / "probe.log"))
    report["network"]["probe"] = probe
    report["watched"] = int(guarded)
    ws = work / "workspace"
    data = project_data_dir() / "demo_train.jsonl"
    t0 = time.monotonic()
    proc = _cli(["train", "--data", str(data), "--workspace", str(ws), "--json", *TRAIN_ARGS], env)
    train: dict = {"seconds": round(time.monotonic() - t0, 1)}
    runs = sorted((ws / "runs").glob("*offline-proof*")) if (ws / "runs").is_dir() else []
    if proc.returncode == 0 and runs and (runs[-1] / "adapter" / "adapter_config.json").is_file():
        events = [json.loads(line) for line in (runs[-1] / "events.jsonl").read_text().splitlines() if line.strip()]
        logs = [e for e in events if e.get("type") == "log"]
        begin = next((e for e in events if e.get("type") == "train_begin"), {})
        train.update(ok=True, run_id=runs[-1].name, steps=logs[-1].get("step") if logs else 0,
                     loss=logs[-1].get("loss") if logs else None, device=begin.get("device"))
    else:
        train.update(ok=False, error=(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["exit " + str(proc.returncode)])
        train["error"] = train["error"][0]
    report["train"] = train
    gen: dict = {}
    if train.get("ok"):
        t0 = time.monotonic()
        proc = _cli(["ask", "--model", train["run_id"], "--workspace", str(ws), "--json", "--temperature", "0",
                     "--max-new-tokens", "16", CASE], env)
        gen["seconds"] = round(time.monotonic() - t0, 1)
        try:
            answer = json.loads(proc.stdout)["answers"][0]
            stats = answer.get("stats", {})
            gen.update(ok=proc.returncode == 0, device=answer.get("device"),
                       tokens=stats.get("output_tokens"))
        except (ValueError, KeyError, IndexError):
            gen.update(ok=False, error=((proc.stderr or "").strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    report["generate"] = gen
    out.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(child(Path(sys.argv[1]), Path(sys.argv[2])))
