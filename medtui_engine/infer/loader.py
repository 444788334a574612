"""Loading a model for inference: Unsloth's fast path where it imports and a GPU is present, else
transformers; a run's adapter applied with peft (merged in memory when the weights are 16-bit, so
decoding pays nothing for it).

Heavy imports live inside the functions: the TUI imports this module at start.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..offline import apply_offline
from .source import ModelSource

BACKENDS = ("auto", "unsloth", "hf")
DTYPES = ("auto", "bf16", "fp16", "fp32")

Progress = Callable[[str, float], None]  # (what is happening, fraction done 0..1)


@dataclass(frozen=True)
class LoadOptions:
    backend: str = "auto"          # auto: transformers with our CUDA-graph decode loop (fastest measured); unsloth on request
    load_in_4bit: bool = False
    dtype: str = "auto"            # auto: bf16 where the GPU supports it, else fp16; fp32 on the CPU
    cuda_graphs: bool = True       # transformers path on a GPU: replay each decode step as one CUDA graph
    max_seq_length: int = 8192     # Unsloth's context budget (prompt + answer)


@dataclass
class LoadedModel:
    source: ModelSource
    model: Any
    tokenizer: Any
    backend: str                   # "unsloth" | "hf"
    device: str                    # "cuda" | "cpu"
    dtype: str                     # "bfloat16" | "float16" | "float32"
    quantized: bool
    adapter_merged: bool
    load_s: float
    gpu_mem_mib: float | None      # torch's allocation after loading (None on the CPU)
    eos_ids: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    stop_contract: Any = None      # medtui_engine.stoptokens.StopContract: why these eos_ids
    # decode state kept between answers (the transformers path's static cache and CUDA graph)
    decoder: Any = None

    @property
    def label(self) -> str:
        return self.source.label

    def describe(self) -> str:
        bits = [self.backend, self.device, "4-bit" if self.quantized else self.dtype, f"template {self.source.template}"]
        if self.gpu_mem_mib is not None:
            bits.append(f"{self.gpu_mem_mib / 1024:.1f} GiB")
        return ", ".join(bits)

    def unload(self) -> None:
        self.model = None
        if self.decoder is not None:
            self.decoder.close()
        self.decoder = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def unsloth_importable() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def pick_backend(backend: str, cuda: bool) -> str:
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        # Measured on an H100 (Qwen2.5-7B shape, 512-token prompt, 256 new tokens, batch 1): our own
        # transformers decode loop replayed as a CUDA graph gives 112 tok/s in bf16 and 138 in 4-bit,
        # Unsloth's fast inference 36 and 26. So auto takes the transformers path; Unsloth stays a choice.
        return "hf"
    if backend == "unsloth" and not unsloth_importable():
        raise UserError("the unsloth backend was asked for but Unsloth is not installed; use --backend hf")
    return backend


def _torch_dtype(torch, name: str, cuda: bool):
    if name == "auto":
        if not cuda:
            return torch.float32  # bf16 matmuls are slow on most CPUs; CPU models here are tiny
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def stop_contract(model, tokenizer, template: str):
    """The stop-token contract of a loaded model (:mod:`medtui_engine.stoptokens`): its generation
    config's end ids against the tokenizer's EOS and the template's end-of-turn token."""
    from ..stoptokens import check_contract, config_eos_of_model

    ids, where = config_eos_of_model(model)
    return check_contract(tokenizer, template, ids, where)


def eos_token_ids(model, tokenizer, template: str = "seed") -> tuple[int, ...]:
    """Every id that ends an answer: the template's end of turn, the tokenizer's EOS and the generation
    config's (valid) end ids; the stop-token contract's stop ids."""
    return stop_contract(model, tokenizer, template).stop_ids


def load_model(source: ModelSource, options: LoadOptions | None = None,
               progress: Progress | None = None) -> LoadedModel:
    """Load ``source`` for answering. Reports progress through ``progress(message, fraction)``."""
    options = options or LoadOptions()
    report = progress or (lambda msg, frac: None)
    t0 = time.perf_counter()
    apply_offline()
    report("checking for a GPU", 0.02)
    cuda = _cuda_available()
    backend = pick_backend(options.backend, cuda)
    if options.load_in_4bit and not cuda:
        raise UserError("4-bit loading needs a CUDA GPU (bitsandbytes); this machine has none. Load in 16/32-bit instead")
    if backend == "unsloth":
        report("importing Unsloth (patches transformers; takes a while the first time)", 0.05)
        import unsloth  # noqa: F401  -- must come before transformers/peft are used
    report("importing transformers", 0.1)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its tqdm bars would scribble over the TUI and the CLI's stream

    dtype = _torch_dtype(torch, options.dtype, cuda)
    notes: list[str] = []
    report("loading tokenizer", 0.15)
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(source, options, dtype, report)
    else:
        model, tokenizer = _load_hf(source, options, dtype, cuda, report)
    adapter_merged = False
    if source.adapter_dir is not None:
        report(f"applying adapter {source.adapter_dir.name}", 0.8)
        model, adapter_merged = _apply_adapter(model, source, options.load_in_4bit)
        if not adapter_merged:
            notes.append("adapter applied unmerged (4-bit weights are never merged into)")
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    contract = stop_contract(model, tokenizer, source.template)
    notes.extend(contract.notes())
    report("ready", 1.0)
    mem = torch.cuda.memory_allocated() / 2**20 if cuda else None
    return LoadedModel(
        source=source, model=model, tokenizer=tokenizer, backend=backend,
        device="cuda" if cuda else "cpu", dtype=str(dtype).replace("torch.", ""),
        quantized=options.load_in_4bit, adapter_merged=adapter_merged,
        load_s=time.perf_counter() - t0, gpu_mem_mib=mem,
        eos_ids=contract.stop_ids, notes=notes, stop_contract=contract,
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _load_hf(source: ModelSource, options: LoadOptions, dtype, cuda: bool, report: Progress):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(source.model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of {path}: {exc}") from None
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cuda:
        kwargs["device_map"] = "cuda"
    if options.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    report(f"loading weights from {source.model_dir.name}", 0.3)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the model weights of {path}: {exc}") from None
    return model, tokenizer


def _load_unsloth(source: ModelSource, options: LoadOptions, dtype, report: Progress):
    from unsloth import FastLanguageModel

    report(f"loading weights from {source.model_dir.name} (Unsloth)", 0.3)
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(source.model_dir), max_seq_length=options.max_seq_length, dtype=dtype,
            load_in_4bit=options.load_in_4bit, local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"Unsloth cannot load {source.model_dir}: {exc}") from None
    return model, tokenizer


def _apply_adapter(model, source: ModelSource, quantized: bool):
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(source.adapter_dir), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"the adapter {source.adapter_dir} does not fit the base model {source.model_dir}: "
                        f"{str(exc).splitlines()[0][:300]}") from None
    if quantized:
        return model, False
    # 16-bit weights: fold the LoRA update in, so each decode step is the plain model's cost.
    return model.merge_and_unload(), True
