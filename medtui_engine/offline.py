"""Offline and private by default: the variables every job process starts with."""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "UNSLOTH_DISABLE_STATISTICS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# Defaults for a job process where the user's environment sets none. OpenMP threads that wait without
# spinning: a job's CPU work runs beside the TUI and other jobs. Measured on a 2-core VM: a training step
# of the real small model on a loaded machine 30 CPU-s with spinning waits, 5.7 without; the demo model's
# 30 CPU steps on an idle machine 257.8 s spinning, 259.8 s not (the same).
JOB_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def offline_env(base: dict[str, str] | None = None, allow_network: bool = False) -> dict[str, str]:
    """A copy of ``base`` (default: this process's environment) with the offline variables set, and
    JOB_DEFAULTS where ``base`` has none of its own.

    With ``allow_network`` the hub variables are left as the user has them (telemetry stays off).
    """
    env = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENV.items():
        if allow_network and key in {"HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"}:
            continue
        env[key] = value
    for key, value in JOB_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def apply_offline(allow_network: bool = False) -> None:
    """Set the offline variables in this process (call before importing transformers & co). JOB_DEFAULTS
    are not set here: they are read when a runtime starts, so they belong to the environment a job is
    started with (``offline_env``)."""
    os.environ.update({k: v for k, v in offline_env({}, allow_network).items() if k not in JOB_DEFAULTS})


# Packages that serve only a CUDA GPU (4-bit loading, torchao quantization), which transformers and peft
# import when they are installed.
CUDA_ONLY_PACKAGES = ("bitsandbytes", "torchao")


def skip_cuda_only_packages() -> tuple[str, ...]:
    """In a job process on a machine without a CUDA GPU: mark CUDA_ONLY_PACKAGES absent before transformers
    and peft are imported. Nothing here can use them (the CPU loads 16/32-bit), and importing them cost
    ~2.5 s of each job's ~10 s start on a 2-core machine. Does nothing where there is a GPU, or once
    transformers, peft or one of them is imported (what those found installed is fixed by then). Returns
    the names marked."""
    import sys

    if any(name in sys.modules for name in ("transformers", "peft", "trl", *CUDA_ONLY_PACKAGES)):
        return ()
    import torch

    if torch.cuda.is_available():
        return ()
    for name in CUDA_ONLY_PACKAGES:
        sys.modules[name] = None   # find_spec() then says "not installed"; an import raises ImportError
    return CUDA_ONLY_PACKAGES
