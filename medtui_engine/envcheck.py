"""The environment check: GPUs, drivers, libraries, disk, RAM and "will it fit", each with a verdict.

Heavy libraries are probed in subprocesses with a timeout, so neither the TUI nor ``medtui check``
imports torch itself, and a library that hangs or crashes on import is reported, not fatal.
The verdict rules are pure functions of the readings (tested without a GPU).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .gpu import NvmlInfo, read_nvml
from .offline import offline_env

VERDICTS = ("ok", "info", "warning", "problem")
_RANK = {v: i for i, v in enumerate(VERDICTS)}
CORE_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
GPU_PACKAGES = ("unsloth", "unsloth_zoo", "bitsandbytes", "xformers", "triton")
PIP_NAMES = {"unsloth_zoo": "unsloth_zoo", "bitsandbytes": "bitsandbytes"}
INSTALL_GPU = "pip install -e '.[gpu]'  (Unsloth, unsloth_zoo, bitsandbytes)"
# Where NVML sees no GPU, Unsloth is not imported (about 10 s on a CPU box, for a backend that auto never
# picks there): its installed version is read from the package metadata, and its line says so.
NOT_IMPORTED_NO_GPU = "not imported: no GPU here"


@dataclass(frozen=True)
class CheckLine:
    section: str      # gpu | software | system | workspace | fit
    name: str
    value: str
    verdict: str      # ok | info | warning | problem
    fix: str = ""


@dataclass(frozen=True)
class PackageProbe:
    name: str
    version: str | None
    imported: bool
    error: str | None = None
    seconds: float | None = None
    not_imported: str | None = None   # why the import was not tried (the version is the installed one)


@dataclass
class EnvReport:
    lines: list[CheckLine] = field(default_factory=list)
    nvml: dict = field(default_factory=dict)
    torch: dict = field(default_factory=dict)
    packages: dict[str, dict] = field(default_factory=dict)
    system: dict = field(default_factory=dict)
    workspace: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    fit: dict | None = None

    @property
    def verdict(self) -> str:
        return max((ln.verdict for ln in self.lines), key=_RANK.__getitem__, default="ok")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict
        d["gpu_found"] = bool(self.nvml.get("gpus"))
        return d


# ---------------------------------------------------------------- probes (subprocesses)

_PROBE = r"""
import importlib, importlib.metadata as md, json, sys, time
names = sys.argv[1:]
out = {}
for n in names:
    dist = {"unsloth_zoo": "unsloth_zoo"}.get(n, n)
    try:
        v = md.version(dist)
    except Exception:
        v = None
    t = time.perf_counter()
    try:
        importlib.import_module(n)
        ok, err = True, None
    except BaseException as e:
        ok, err = False, (type(e).__name__ + ": " + str(e))[:300]
    out[n] = {"name": n, "version": v, "imported": ok, "error": err, "seconds": round(time.perf_counter() - t, 2)}
if "torch" in names and out["torch"]["imported"]:
    import torch
    tp = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
          "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0, "bf16": False, "capabilities": []}
    if tp["cuda_available"]:
        try:
            tp["bf16"] = bool(torch.cuda.is_bf16_supported())
            tp["capabilities"] = ["%d.%d" % torch.cuda.get_device_capability(i) for i in range(tp["device_count"])]
        except Exception as e:
            tp["error"] = str(e)[:300]
    try:  # several processes: the backends torch.distributed has, and which GPUs reach each other
        import torch.distributed as dist
        tp["dist"] = {"available": dist.is_available(),
                      "nccl": bool(dist.is_available() and dist.is_nccl_available()),
                      "gloo": bool(dist.is_available() and dist.is_gloo_available())}
        n = tp["device_count"]
        tp["peer"] = [[i, j, bool(torch.cuda.can_device_access_peer(i, j))]
                      for i in range(n) for j in range(n) if i != j] if n > 1 else []
    except Exception as e:
        tp["dist"] = {"available": False, "error": str(e)[:300]}
    out["__torch__"] = tp
print("MEDTUI_PROBE " + json.dumps(out))
"""


_live_probes: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def cancel_probes() -> None:
    """Kill probe processes still running (the TUI calls this when it closes, so quitting is instant)."""
    with _live_lock:
        procs = list(_live_probes)
    for proc in procs:
        proc.kill()


def run_probe(names: tuple[str, ...], timeout: float = 120.0, python: str | None = None) -> dict:
    """Import ``names`` in a fresh interpreter; returns {name: PackageProbe-like dict, "__torch__": ...}."""
    env = offline_env()
    env.setdefault("UNSLOTH_COMPILE_LOCATION", str(Path(os.environ.get("TMPDIR", "/tmp")) / "medtui-unsloth-cache"))
    proc = subprocess.Popen([python or sys.executable, "-c", _PROBE, *names], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL,
                            cwd=env.get("TMPDIR", "/tmp"))
    with _live_lock:
        _live_probes.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {n: asdict(PackageProbe(n, None, False, f"import took longer than {timeout:.0f} s")) for n in names}
    finally:
        with _live_lock:
            _live_probes.discard(proc)
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("MEDTUI_PROBE "):
            return json.loads(line[len("MEDTUI_PROBE "):])
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {n: asdict(PackageProbe(n, None, False, f"probe process died (exit {proc.returncode}): {err}")) for n in names}


def installed_versions(names: tuple[str, ...], why: str) -> dict:
    """Packages read from their installed metadata only, not imported (``why`` says why not)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            version = metadata.version(PIP_NAMES.get(name, name))
        except metadata.PackageNotFoundError:
            version = None
        out[name] = asdict(PackageProbe(name, version, False, not_imported=why))
    return out


# ---------------------------------------------------------------- verdict rules (pure)

def rule_gpu_present(nvml: NvmlInfo) -> CheckLine:
    if nvml.available and nvml.gpus:
        return CheckLine("gpu", "GPUs", f"{len(nvml.gpus)} found (driver {nvml.driver_version}, "
                         f"CUDA {nvml.cuda_driver_version or '?'} supported)", "ok")
    why = f" ({nvml.error})" if nvml.error else ""
    return CheckLine("gpu", "GPUs", f"no GPU{why}", "warning",
                     "CPU demo only: the demo model trains here, real models need an NVIDIA GPU with its driver")


def rule_compute_capability(name: str, cc: tuple[int, int] | None) -> CheckLine:
    if cc is None:
        return CheckLine("gpu", f"{name} capability", "unknown", "warning", "could not read the CUDA compute capability")
    text = f"{cc[0]}.{cc[1]}"
    if cc < (7, 0):
        return CheckLine("gpu", f"{name} capability", text, "problem",
                         "Unsloth needs compute capability >= 7.0; use --backend hf (much slower) or a newer GPU")
    if cc < (8, 0):
        return CheckLine("gpu", f"{name} capability", text + " (no bf16)", "info",
                         "bf16 is not supported: training will use fp16")
    return CheckLine("gpu", f"{name} capability", text + " (bf16)", "ok")


def _ver(s: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in (s or "").split(".")[:2])
    except ValueError:
        return None


def rule_driver_vs_torch(driver_cuda: str | None, torch_cuda: str | None) -> CheckLine | None:
    if not driver_cuda or not torch_cuda:
        return None
    d, t = _ver(driver_cuda), _ver(torch_cuda)
    if d is None or t is None:
        return None
    if d < t:
        return CheckLine("gpu", "driver vs torch CUDA", f"driver supports CUDA {driver_cuda}, torch is built for {torch_cuda}",
                         "problem", f"update the NVIDIA driver to one supporting CUDA {torch_cuda}, or install a torch "
                         f"built for CUDA {driver_cuda} or older")
    return CheckLine("gpu", "driver vs torch CUDA", f"driver CUDA {driver_cuda} >= torch CUDA {torch_cuda}", "ok")


def rule_gpu_memory(g) -> CheckLine:
    used_pct = 100 * g.memory_used_mib / g.memory_total_mib if g.memory_total_mib else 0
    value = (f"{g.memory_used_mib / 1024:.1f} / {g.memory_total_mib / 1024:.1f} GiB used, "
             f"{g.memory_free_mib / 1024:.1f} GiB free")
    if used_pct > 50 and g.processes:
        names = ", ".join(f"pid {p.pid}" for p in g.processes[:3])
        return CheckLine("gpu", f"GPU {g.index} memory", value, "warning",
                         f"other processes hold GPU memory ({names}): a run started now gets less")
    return CheckLine("gpu", f"GPU {g.index} memory", value, "ok")


def rule_package(p: dict, gpu_present: bool) -> CheckLine:
    name = p["name"]
    if p.get("imported"):
        return CheckLine("software", name, p.get("version") or "?", "ok")
    core = name in CORE_PACKAGES
    if p.get("not_imported") and p.get("version") is not None:
        return CheckLine("software", name, f"{p['version']} (installed; {p['not_imported']})", "info",
                         "the hf backend trains here; on a GPU box the check imports it")
    if p.get("version") is None:
        if core:
            return CheckLine("software", name, "not installed", "problem", "pip install -e .  (from the medtui checkout)")
        if name in ("unsloth", "unsloth_zoo"):
            verdict = "warning" if gpu_present else "info"
            fix = INSTALL_GPU if gpu_present else "optional on a CPU box: the hf backend trains the demo"
            return CheckLine("software", name, "not installed", verdict, fix)
        why = {"xformers": "optional: Unsloth uses its own attention kernels without it",
               "triton": "optional: comes with CUDA builds of torch",
               "bitsandbytes": "needed for 4-bit loading: " + INSTALL_GPU}.get(name, "optional")
        return CheckLine("software", name, "not installed", "warning" if gpu_present and name == "bitsandbytes" else "info", why)
    err = p.get("error") or "import failed"
    verdict = "problem" if core or (gpu_present and name == "unsloth") else "warning"
    fix = "reinstall it; see the error" if core else ("the hf backend still works" if name.startswith("unsloth") else "")
    if "torchvision" in err:
        fix = "a torchvision that does not match torch is installed: pip uninstall torchvision"
    return CheckLine("software", name, f"{p.get('version')} (import fails: {err})", verdict, fix)


def rule_torch(t: dict, gpu_present: bool) -> list[CheckLine]:
    if not t:
        return []
    lines = []
    if gpu_present and not t.get("cuda"):
        lines.append(CheckLine("software", "torch CUDA", f"torch {t.get('version')} is a CPU build", "problem",
                               "install a CUDA build of torch (pip install torch) on the GPU box"))
    elif gpu_present and not t.get("cuda_available"):
        lines.append(CheckLine("software", "torch CUDA", f"built for CUDA {t.get('cuda')}, but no device is usable",
                               "problem", t.get("error") or "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"))
    elif t.get("cuda_available"):
        lines.append(CheckLine("software", "torch CUDA", f"CUDA {t.get('cuda')}, {t.get('device_count')} device(s), "
                               f"bf16 {'yes' if t.get('bf16') else 'no (fp16 will be used)'}", "ok"))
    else:
        lines.append(CheckLine("software", "torch CUDA", "CPU only", "info", "fine for the demo model"))
    return lines


def rule_distributed(t: dict, gpu_count: int, unsloth_version: str | None) -> list[CheckLine]:
    """Several processes for one run (DDP through torchrun): can the GPUs talk (NCCL, peer access)?
    On the CPU, DDP uses gloo. And what the Unsloth backend does with several GPUs."""
    from .train.backends import UNSLOTH_ONE_GPU

    if not t:
        return []
    d = t.get("dist") or {}
    lines = []
    if not d.get("available"):
        lines.append(CheckLine("software", "several processes (DDP)", "torch.distributed is not available",
                               "warning" if gpu_count > 1 else "info",
                               "install a torch build with distributed support to train on several GPUs"))
    elif gpu_count > 1 or t.get("device_count", 0) > 1:
        if d.get("nccl"):
            lines.append(CheckLine("software", "several GPUs (DDP)", f"NCCL available: {gpu_count} GPUs can train one "
                                   "run (medtui train --gpus all)", "ok"))
        else:
            lines.append(CheckLine("software", "several GPUs (DDP)", "NCCL is not available in torch.distributed",
                                   "problem", "several GPUs need NCCL: install a CUDA build of torch (it brings NCCL)"))
        pairs = t.get("peer") or []
        if pairs:
            no = [f"{i}->{j}" for i, j, ok in pairs if not ok]
            if no:
                lines.append(CheckLine("gpu", "GPU peer access", f"not between {', '.join(no)}", "info",
                                       "those GPUs exchange gradients through host memory: DDP works, a little slower"))
            else:
                lines.append(CheckLine("gpu", "GPU peer access", f"every pair of the {t.get('device_count')} GPUs", "ok"))
    else:
        lines.append(CheckLine("software", "several processes (DDP)",
                               "DDP on the CPU uses gloo" + (" (available)" if d.get("gloo") else " (not available)"),
                               "info" if d.get("gloo") else "warning",
                               "trial runs of several processes: medtui train --nproc 2" if d.get("gloo") else ""))
    if unsloth_version and (gpu_count > 1 or t.get("device_count", 0) > 1):
        lines.append(CheckLine("software", "Unsloth on several GPUs", f"Unsloth {unsloth_version}: {UNSLOTH_ONE_GPU}",
                               "info", "several GPUs train with the hf backend (auto picks it for --gpus 2 or more)"))
    return lines


def rule_disk(path: Path, free_bytes: int, min_free_gib: float) -> CheckLine:
    free = free_bytes / 2**30
    value = f"{free:.1f} GiB free at {path}"
    if free < 5:
        return CheckLine("workspace", "disk", value, "problem",
                         "too little space for checkpoints or a merged model: free space or choose --workspace elsewhere")
    if free < min_free_gib:
        return CheckLine("workspace", "disk", value, "warning",
                         f"a merged 7B model needs ~15 GiB, 14B ~28 GiB, plus checkpoints; below {min_free_gib:.0f} GiB "
                         "set a larger disk with --workspace")
    return CheckLine("workspace", "disk", value, "ok")


def rule_ram(total_bytes: int | None) -> CheckLine:
    if not total_bytes:
        return CheckLine("system", "RAM", "unknown", "info")
    gib = total_bytes / 2**30
    if gib < 16:
        return CheckLine("system", "RAM", f"{gib:.0f} GiB", "warning",
                         "merging a 7B model into 16-bit weights needs ~16 GiB of RAM")
    return CheckLine("system", "RAM", f"{gib:.0f} GiB", "ok")


# ---------------------------------------------------------------- readings

def _ram_total() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def rule_stop_tokens(contract: dict) -> CheckLine:
    """One template's stop-token contract (:meth:`medtui_engine.stoptokens.StopContract.as_dict`)."""
    ids = ", ".join(f"{contract['tokens'].get(str(i), '?')} ({i})" for i in contract["stop_ids"]) or "none"
    issues = contract.get("issues") or []
    value = f"stops on {ids}; " + ("; ".join(i["what"] for i in issues) if issues else
                                   f"{contract['config_source']}, tokenizer and template agree")
    fix = "; ".join(dict.fromkeys(i["fix"] for i in issues if i.get("fix")))
    return CheckLine("model", f"stop tokens ({contract['template']})", value, contract["verdict"], fix)


def stop_token_lines(model_dir: Path, template: str | None = None, timeout: float = 120.0) -> list[CheckLine]:
    """The stop-token contract of a model directory, read in a subprocess (transformers' tokenizer):
    one line per template the model can be used with (see :mod:`medtui_engine.stoptokens`)."""
    env = offline_env()
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    try:
        proc = subprocess.run([sys.executable, "-m", "medtui_engine.stoptokens", str(model_dir), *([template] if template else [])],
                              capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        contracts = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        contracts, proc = None, None
    if not contracts:
        tail = ((proc.stderr or "").strip().splitlines() or ["timed out"])[-1][:300] if proc else "timed out"
        return [CheckLine("model", "stop tokens", f"cannot read the tokenizer of {model_dir}: {tail}", "warning",
                          "check that the directory has the tokenizer files")]
    return [rule_stop_tokens(c) for c in contracts]


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def collect(workspace: Path, settings: dict | None = None, min_free_gib: float = 50.0,
            probe_timeout: float = 120.0, progress: Callable[[str], None] | None = None,
            fit: Callable[[NvmlInfo], tuple[dict, CheckLine]] | None = None,
            model_lines: Callable[[], list[CheckLine]] | None = None) -> EnvReport:
    """Take every reading and apply every rule. ``progress`` hears what is being read; ``fit``
    estimates the memory of a training setting against these readings (see :mod:`.fit`);
    ``model_lines`` checks a model directory (its stop-token contract, :func:`stop_token_lines`)."""
    say = progress or (lambda _msg: None)
    report = EnvReport(settings=settings or {})
    say("reading GPUs (NVML)")
    nvml = read_nvml()
    report.nvml = nvml.as_dict()
    gpu_present = bool(nvml.available and nvml.gpus)

    say("probing libraries (in subprocesses)")
    pool = ThreadPoolExecutor(max_workers=3)
    core = pool.submit(run_probe, CORE_PACKAGES + ("bitsandbytes", "xformers", "triton"), probe_timeout)
    if gpu_present:
        uns = pool.submit(run_probe, ("unsloth", "unsloth_zoo"), probe_timeout)
    else:
        uns = pool.submit(installed_versions, ("unsloth", "unsloth_zoo"), NOT_IMPORTED_NO_GPU)
    # the model's stop tokens are read in their own process meanwhile; their lines come last
    model = pool.submit(model_lines) if model_lines is not None else None
    pool.shutdown(wait=False)
    probes = {**core.result(), **uns.result()}
    torch_info = probes.pop("__torch__", {})
    report.torch = torch_info
    report.packages = probes

    lines = report.lines
    lines.append(rule_gpu_present(nvml))
    for g in nvml.gpus:
        lines.append(CheckLine("gpu", f"GPU {g.index}", g.name, "ok"))
        lines.append(rule_compute_capability(f"GPU {g.index}", g.compute_capability))
        lines.append(rule_gpu_memory(g))
        extra = []
        if g.utilization_pct is not None:
            extra.append(f"{g.utilization_pct:.0f}% busy")
        if g.temperature_c is not None:
            extra.append(f"{g.temperature_c:.0f}°C")
        if g.power_w is not None:
            extra.append(f"{g.power_w:.0f} W" + (f" of {g.power_limit_w:.0f} W" if g.power_limit_w else ""))
        if extra:
            lines.append(CheckLine("gpu", f"GPU {g.index} now", ", ".join(extra), "info"))
        if g.processes:
            procs = "; ".join(f"pid {p.pid} {p.used_mib / 1024:.1f} GiB {p.name[:40]}" for p in g.processes[:5])
            lines.append(CheckLine("gpu", f"GPU {g.index} processes", procs, "info"))
    drv = rule_driver_vs_torch(nvml.cuda_driver_version, torch_info.get("cuda"))
    if drv:
        lines.append(drv)
    lines.extend(rule_torch(torch_info, gpu_present))
    for name in CORE_PACKAGES + GPU_PACKAGES:
        if name in probes:
            lines.append(rule_package(probes[name], gpu_present))
    backend = "unsloth" if gpu_present and probes.get("unsloth", {}).get("imported") else "hf"
    lines.append(CheckLine("software", "training backend (auto)", backend, "ok" if gpu_present or backend == "hf" else "info"))
    uns = probes.get("unsloth", {})
    lines.extend(rule_distributed(torch_info, len(nvml.gpus) if gpu_present else 0,
                                  uns.get("version") if uns.get("imported") else None))

    say("reading disk, RAM, CPU")
    target = _existing_parent(workspace)
    free = shutil.disk_usage(target).free
    lines.append(rule_disk(workspace, free, min_free_gib))
    lines.append(rule_ram(_ram_total()))
    lines.append(CheckLine("system", "CPU", f"{os.cpu_count()} cores, {platform.machine()}", "ok"))
    lines.append(CheckLine("system", "Python", platform.python_version(), "ok" if sys.version_info >= (3, 11) else "problem",
                           "" if sys.version_info >= (3, 11) else "medtui needs Python >= 3.11"))
    report.system = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "ram_bytes": _ram_total(),
                     "python": platform.python_version(), "platform": platform.platform()}
    report.workspace = {"path": str(workspace), "free_bytes": free}

    if fit is not None:
        say("estimating memory for the training setting")
        report.fit, fit_line = fit(nvml)
        lines.append(fit_line)
    if model is not None:
        say("checking the model's stop tokens")
        lines.extend(model.result())
    say("done")
    return report

