"""How to serve what a merge produced: the exact vLLM command (and GGUF export when llama.cpp is here)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

GGUF_HELP = (
    "GGUF export needs llama.cpp's converter, which is not on this machine. To add it: clone llama.cpp "
    "(or copy it over from a machine with network access), `pip install -r llama.cpp/requirements/"
    "requirements-convert_hf_to_gguf.txt` into this environment, then either put convert_hf_to_gguf.py on "
    "PATH or set LLAMA_CPP_DIR to the llama.cpp directory, and run the merge again with --gguf (or run "
    "`python convert_hf_to_gguf.py MERGED_DIR --outtype bf16` yourself). The merged directory itself "
    "already loads in transformers and vLLM."
)


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


def find_gguf_converter() -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py: on PATH, or in $LLAMA_CPP_DIR."""
    found = shutil.which("convert_hf_to_gguf.py")
    if found:
        return Path(found)
    root = os.environ.get("LLAMA_CPP_DIR")
    if root and (Path(root) / "convert_hf_to_gguf.py").is_file():
        return Path(root) / "convert_hf_to_gguf.py"
    return None


def export_gguf(merged_dir: Path, dtype: str, log_path: Path) -> Path:
    """Convert the merged directory to one GGUF file beside it (temp name, renamed when complete)."""
    conv = find_gguf_converter()
    if conv is None:
        raise FileNotFoundError(GGUF_HELP)
    outtype = {"bf16": "bf16", "fp16": "f16"}[dtype]
    final = Path(merged_dir).with_suffix(".gguf") if Path(merged_dir).suffix == "" else Path(str(merged_dir) + ".gguf")
    tmp = final.with_name(f".{final.name}.partial")
    with open(log_path, "ab") as log:
        proc = subprocess.run([sys.executable, str(conv), str(merged_dir), "--outfile", str(tmp), "--outtype", outtype],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp's converter failed (exit {proc.returncode}); its output is in {log_path}")
    os.replace(tmp, final)
    return final
