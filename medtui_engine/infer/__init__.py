"""Asking a model: resolve what the user named, load it, stream an answer with its timing.

``source`` (which model, which template) is pure path logic; ``loader`` (Unsloth or transformers, the
adapter), ``stream`` (the streaming generator), ``decoder`` (static cache + CUDA graph) and ``sampling``
import torch & co only inside their functions, so the TUI can import this package at start.
"""

from __future__ import annotations

from .loader import BACKENDS, LoadedModel, LoadOptions, load_model
from .sampling import SamplingSettings
from .source import ModelSource, list_choices, resolve_source, run_adapter
from .stream import (
    DECODE_MODES,
    GenerationResult,
    GenerationStats,
    StreamChunk,
    StreamDone,
    answer,
    stream_answer,
)

__all__ = [
    "BACKENDS", "DECODE_MODES", "GenerationResult", "GenerationStats", "LoadOptions", "LoadedModel",
    "ModelSource", "SamplingSettings", "StreamChunk", "StreamDone", "answer", "list_choices", "load_model",
    "resolve_source", "run_adapter", "stream_answer",
]
