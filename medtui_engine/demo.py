"""The embedded demo model: a tiny Qwen3-architecture causal LM with random weights and the real
Qwen tokenizer, built locally in seconds, cached in medtui's data directory.

It exists so that every screen and every verb works on a fresh box with no weights and no network,
and so that CI trains, merges and chats with a real (if meaningless) model. Its answers are noise:
it is labelled "random weights, demo only" wherever it appears.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from .paths import home_dir
from .qwen_vocab import FIRST_ADDED_ID, QWEN3_ADDED_TOKENS, write_bpe_files
from .realmodel import REAL_LABEL, REAL_NAME, is_real_model

DEMO_LABEL = "random weights, demo only"
DEMO_NAME = "medtui-demo-qwen3-tiny"
# Bump when the built files change, so older caches are rebuilt rather than trusted.
DEMO_BUILD_VERSION = 1
MARKER = "medtui_demo.json"

# Small enough to train in seconds on two CPU cores; real Qwen3 vocabulary so the real tokenizer fits.
DEMO_SHAPE = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=8192,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def demo_dir() -> Path:
    return home_dir() / "models" / DEMO_NAME


def is_demo_model(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MARKER).exists()


def model_label(path: str | os.PathLike[str]) -> str:
    """How a model directory is shown to the user: its name, with the demo or real-model label where it applies."""
    p = Path(path)
    if is_demo_model(p):
        return f"{DEMO_NAME} ({DEMO_LABEL})"
    return f"{REAL_NAME} ({REAL_LABEL})" if is_real_model(p) else p.name


def _cached_ok(path: Path) -> bool:
    try:
        meta = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("build_version") == DEMO_BUILD_VERSION and (path / "model.safetensors").exists()


def _qwen3_chat_template() -> str:
    """Qwen3's chat template, as shipped (Apache-2.0) in trl's wheel; located without importing trl."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'trl' package is not installed; it ships the Qwen3 chat template")
    path = Path(next(iter(spec.submodule_search_locations))) / "chat_templates" / "qwen3.jinja"
    return path.read_text(encoding="utf-8")


def _tokenizer_config() -> dict:
    added = {
        str(FIRST_ADDED_ID + i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, (tok, special) in enumerate(QWEN3_ADDED_TOKENS)
    }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": DEMO_SHAPE["max_position_embeddings"],
        "split_special_tokens": False,
    }


def build_demo_model(out: Path, seed: int = 0) -> Path:
    """Write the demo model into ``out`` (via a temporary directory renamed when complete)."""
    # Heavy imports here, not at module scope: the TUI imports this module.
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bars would scribble over the CLI's output and the TUI

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out.parent))
    try:
        write_bpe_files(tmp)
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), ensure_ascii=False, indent=2))
        tok = AutoTokenizer.from_pretrained(str(tmp))
        tok.chat_template = _qwen3_chat_template()
        tok.save_pretrained(str(tmp))  # adds tokenizer.json and the chat template file

        eos_id = tok.convert_tokens_to_ids("<|im_end|>")
        pad_id = tok.convert_tokens_to_ids("<|endoftext|>")
        cfg = Qwen3Config(**DEMO_SHAPE, bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
        model.config.dtype = "bfloat16"
        model.generation_config = GenerationConfig(
            bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id,
            do_sample=True, temperature=0.3, top_p=0.9, max_new_tokens=1024,
        )
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / MARKER).write_text(json.dumps({
            "name": DEMO_NAME,
            "label": DEMO_LABEL,
            "build_version": DEMO_BUILD_VERSION,
            "architecture": "Qwen3ForCausalLM",
            "parameters": sum(p.numel() for p in model.parameters()),
            "seed": seed,
            "note": "Random weights: its output is noise. For trying medtui end to end, never for answers.",
        }, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_demo_model(rebuild: bool = False) -> Path:
    """The cached demo model directory, built on first use (a few seconds)."""
    path = demo_dir()
    if rebuild or not _cached_ok(path):
        build_demo_model(path)
    return path


def resolve_model(spec: str | os.PathLike[str] | None) -> Path:
    """A model argument as the user gives it: 'demo' (or nothing) -> the demo model; else a directory."""
    if spec is None or str(spec) in ("", "demo"):
        return ensure_demo_model()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"model directory {path} does not exist: give a local directory with config.json, "
            "safetensors weights and tokenizer files, or 'demo' for the built-in demo model"
        )
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: is this a Hugging Face model directory?")
    return path.resolve()
