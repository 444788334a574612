"""GPUs through NVML (nvidia-ml-py): what the environment check and the heartbeat read.

NVML is light (no torch) and safe to call from a TUI worker thread. On a machine without an NVIDIA
driver every function returns "no GPU" rather than raising.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field

_lock = threading.Lock()
_initialised: bool | None = None
_init_error: str | None = None


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_mib: float
    name: str = ""


@dataclass(frozen=True)
class GpuSnapshot:
    index: int
    name: str
    uuid: str
    memory_total_mib: float
    memory_used_mib: float
    memory_free_mib: float
    utilization_pct: float | None
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None
    compute_capability: tuple[int, int] | None
    processes: tuple[GpuProcess, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["compute_capability"] = ".".join(map(str, self.compute_capability)) if self.compute_capability else None
        return d


@dataclass(frozen=True)
class NvmlInfo:
    available: bool
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # the newest CUDA the driver supports, e.g. "13.0"
    error: str | None = None
    gpus: tuple[GpuSnapshot, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {
            "available": self.available,
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "error": self.error,
            "gpus": [g.as_dict() for g in self.gpus],
        }


def _init():
    global _initialised, _init_error
    with _lock:
        if _initialised is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _initialised = True
            except Exception as exc:  # no library, no driver, no device
                _initialised = False
                _init_error = f"{type(exc).__name__}: {exc}"
    if not _initialised:
        return None
    import pynvml

    return pynvml


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe(fn, *a, default=None):
    try:
        return fn(*a)
    except Exception:
        return default


def process_argv(pid: int) -> list[str]:
    """The whole command line of ``pid`` ([] when it cannot be read, e.g. another PID namespace)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            parts = fh.read().split(b"\0")
    except OSError:
        return []
    return [p.decode(errors="replace") for p in parts if p]


def _process_name(pid: int) -> str:
    # for display: cut short (a job's run directory is read from process_argv, never from this)
    return " ".join(process_argv(pid))[:120]


def snapshot_gpu(nv, index: int, with_processes: bool = True) -> GpuSnapshot:
    h = nv.nvmlDeviceGetHandleByIndex(index)
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    util = _safe(nv.nvmlDeviceGetUtilizationRates, h)
    temp = _safe(nv.nvmlDeviceGetTemperature, h, 0)  # NVML_TEMPERATURE_GPU
    power = _safe(nv.nvmlDeviceGetPowerUsage, h)
    limit = _safe(nv.nvmlDeviceGetEnforcedPowerLimit, h)
    cc = _safe(nv.nvmlDeviceGetCudaComputeCapability, h)
    procs: list[GpuProcess] = []
    if with_processes:
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            for p in _safe(getattr(nv, fn), h, default=[]) or []:
                used = getattr(p, "usedGpuMemory", None) or 0
                procs.append(GpuProcess(int(p.pid), round(used / 2**20, 1), _process_name(int(p.pid))))
    mib = 2**20
    return GpuSnapshot(
        index=index,
        name=_str(nv.nvmlDeviceGetName(h)),
        uuid=_str(_safe(nv.nvmlDeviceGetUUID, h, default="")),
        memory_total_mib=round(mem.total / mib, 1),
        memory_used_mib=round(mem.used / mib, 1),
        memory_free_mib=round(mem.free / mib, 1),
        utilization_pct=float(util.gpu) if util is not None else None,
        temperature_c=float(temp) if temp is not None else None,
        power_w=round(power / 1000, 1) if power is not None else None,
        power_limit_w=round(limit / 1000, 1) if limit is not None else None,
        compute_capability=tuple(cc) if cc else None,
        processes=tuple(procs),
    )


def read_nvml(with_processes: bool = True) -> NvmlInfo:
    """One reading of every GPU. Never raises."""
    if os.environ.get("MEDTUI_FAKE_NO_GPU") == "1":
        return NvmlInfo(False, error="GPUs hidden by MEDTUI_FAKE_NO_GPU")
    nv = _init()
    if nv is None:
        return NvmlInfo(False, error=_init_error)
    try:
        driver = _str(nv.nvmlSystemGetDriverVersion())
        cuda = _safe(nv.nvmlSystemGetCudaDriverVersion_v2) or _safe(nv.nvmlSystemGetCudaDriverVersion)
        cuda_s = f"{cuda // 1000}.{(cuda % 1000) // 10}" if cuda else None
        n = nv.nvmlDeviceGetCount()
        gpus = tuple(snapshot_gpu(nv, i, with_processes) for i in range(n))
        return NvmlInfo(True, driver, cuda_s, None, gpus)
    except Exception as exc:
        return NvmlInfo(False, error=f"{type(exc).__name__}: {exc}")


def visible_gpu_indices() -> list[int] | None:
    """The NVML indices named by CUDA_VISIBLE_DEVICES (numeric form), or None for all. Set but empty,
    it hides every GPU (as CUDA reads it): no index, so a job started so runs on the CPU."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return None
    if env.strip() == "":
        return []
    try:
        return [int(x) for x in env.split(",") if x.strip()]
    except ValueError:
        return None
