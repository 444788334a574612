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


def offline_env(base: dict[str, str] | None = None, allow_network: bool = False) -> dict[str, str]:
    """A copy of ``base`` (default: this process's environment) with the offline variables set.

    With ``allow_network`` the hub variables are left as the user has them (telemetry stays off).
    """
    env = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENV.items():
        if allow_network and key in {"HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"}:
            continue
        env[key] = value
    return env


def apply_offline(allow_network: bool = False) -> None:
    """Set the offline variables in this process (call before importing transformers & co)."""
    os.environ.update({k: v for k, v in offline_env({}, allow_network).items()})
