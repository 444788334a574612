"""How to serve what a merge produced: the exact vLLM command. (GGUF for Ollama and llama.cpp: ``gguf_export``.)"""

from __future__ import annotations

import shlex
from pathlib import Path


def served_name(plan_run_id: str | None, out_dir: Path) -> str:
    return f"medtui-{plan_run_id}" if plan_run_id else Path(out_dir).name


def vllm_command(out_dir: Path, dtype: str, name: str, adapter_only: bool = False, base_dir: str | None = None,
                 max_model_len: int | None = None) -> str:
    """The command that serves the output with vLLM's OpenAI-compatible server."""
    vdtype = {"bf16": "bfloat16", "fp16": "float16"}[dtype]
    if adapter_only:
        parts = ["vllm", "serve", str(base_dir), "--dtype", vdtype, "--enable-lora", "--max-lora-rank", "64",
                 "--lora-modules", f"{name}={out_dir}", "--generation-config", str(out_dir)]
    else:
        parts = ["vllm", "serve", str(out_dir), "--served-model-name", name, "--dtype", vdtype,
                 "--generation-config", "auto"]
    if max_model_len:
        parts += ["--max-model-len", str(max_model_len)]
    return shlex.join(parts)
