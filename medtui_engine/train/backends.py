"""The two ways to load a model for LoRA training; both give a PEFT model with the same adapter format.

``unsloth``: FastLanguageModel (4-bit through bitsandbytes where asked) + Unsloth's gradient
checkpointing. ``hf``: transformers + bitsandbytes (4-bit where asked) + peft. ``auto`` picks
Unsloth where it is installed and a GPU is present, else ``hf``.

Everything heavy is imported inside the functions: this module is imported by the job process,
which must import ``unsloth`` before transformers/trl/peft (:func:`import_backend_first`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from ..errors import UserError


@dataclass
class Loaded:
    model: object
    tokenizer: object
    device: str                 # "cuda:0 (NVIDIA H100 80GB HBM3)" / "cpu"
    dtype: str                  # bf16 | fp16 | fp32
    load_in_4bit: bool
    notices: list[str] = field(default_factory=list)


def gpu_present() -> bool:
    """A usable NVIDIA GPU, judged without importing torch (NVML)."""
    from ..gpu import read_nvml, visible_gpu_indices

    info = read_nvml(with_processes=False)
    if not info.available or not info.gpus:
        return False
    visible = visible_gpu_indices()
    return visible is None or any(i < len(info.gpus) for i in visible)


UNSLOTH_ONE_GPU = ("the unsloth backend trains on one GPU in medtui (its multi-GPU training is not verified with "
                   "the installed version)")


def resolve_backend(requested: str, world: int = 1) -> tuple[str, str]:
    """(backend, why). Raises UserError when the requested backend cannot run here. With several
    processes (DDP) ``auto`` picks hf and an explicit ``unsloth`` is refused (see UNSLOTH_ONE_GPU)."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if world > 1:
        if requested == "unsloth":
            raise UserError(f"{UNSLOTH_ONE_GPU}: use --backend hf (or auto) for {world} processes, or --gpus 1")
        return "hf", "asked for" if requested == "hf" else f"auto: {world} processes (DDP) train with hf"
    if requested == "unsloth":
        if not has_unsloth:
            raise UserError("the unsloth backend was asked for but Unsloth is not installed: "
                            "install the 'gpu' extra (pip install 'medtui[gpu]') or use --backend hf")
        return "unsloth", "asked for"
    if requested == "hf":
        return "hf", "asked for"
    if has_unsloth and gpu_present():
        return "unsloth", "auto: Unsloth is installed and a GPU is present"
    return "hf", "auto: " + ("no GPU" if has_unsloth else "Unsloth is not installed")


def import_backend_first(backend: str) -> None:
    """Unsloth patches transformers/trl/peft at import: it must come before them."""
    if backend == "unsloth":
        import unsloth  # noqa: F401


def _precision(requested: str, cuda: bool) -> str:
    import torch

    if not cuda:
        return "fp32" if requested in ("auto", "fp16") else requested
    bf16_ok = torch.cuda.is_bf16_supported()
    if requested == "auto":
        return "bf16" if bf16_ok else "fp16"
    if requested == "bf16" and not bf16_ok:
        raise UserError("this GPU does not support bf16: use --precision fp16 (or auto)")
    return requested


def _torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_for_training(spec, model_dir: str, backend: str) -> Loaded:
    """Load the base model and tokenizer and attach LoRA adapters as the spec says."""
    import torch

    cuda = torch.cuda.is_available()
    notices: list[str] = []
    precision = _precision(spec.precision, cuda)
    four_bit = bool(spec.load_in_4bit)
    if four_bit and not cuda:
        notices.append("4-bit loading needs a CUDA GPU; on the CPU the model is loaded in "
                       f"{'32' if precision == 'fp32' else '16'}-bit instead")
        four_bit = False
    if four_bit and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("4-bit loading needs bitsandbytes, which is not installed: install the 'gpu' extra "
                        "(pip install 'medtui[gpu]') or pass --no-4bit")
    device = "cpu"
    if cuda:
        device = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    dtype = _torch_dtype(precision)
    targets = list(spec.target_modules)
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=model_dir, max_seq_length=spec.max_seq_length, dtype=dtype,
            load_in_4bit=four_bit, local_files_only=True,
        )
        model = FastLanguageModel.get_peft_model(
            model, r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
            target_modules=targets, bias=spec.lora_bias,
            use_gradient_checkpointing="unsloth" if spec.gradient_checkpointing else False,
            random_state=spec.seed, max_seq_length=spec.max_seq_length,
        )
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict = {"dtype": dtype, "local_files_only": True}
        if cuda:
            kwargs["device_map"] = {"": torch.cuda.current_device()}
            kwargs["attn_implementation"] = "sdpa"
        if four_bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=True,
            )
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if four_bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
        elif spec.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        try:
            model = get_peft_model(model, LoraConfig(
                r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                target_modules=targets, bias=spec.lora_bias, task_type="CAUSAL_LM",
            ))
        except ValueError as exc:
            raise UserError(f"LoRA cannot be attached: {exc}; check --target-modules") from None
    if getattr(tok, "pad_token", None) is None:
        tok.pad_token = tok.eos_token
    return Loaded(model, tok, device, precision, four_bit, notices)


def optimizer_for(spec, cuda: bool) -> tuple[str, str | None]:
    """(optimizer name, notice). 8-bit optimizers need bitsandbytes on a GPU."""
    if spec.optim != "auto":
        if "8bit" in spec.optim and not cuda:
            return "adamw_torch", f"the {spec.optim} optimizer needs a CUDA GPU; using adamw_torch on the CPU"
        return spec.optim, None
    if cuda and importlib.util.find_spec("bitsandbytes") is not None:
        return "adamw_8bit", None
    return "adamw_torch", None


def batching_args(spec) -> dict:
    """The trainer arguments for the recipe's batching (``spec.resolved_recipe``; padded for specs
    written before recipes). Padding-free: trl flattens each micro-batch into one row with restarting
    position_ids and no attention mask; the rows are already cut to max_seq_length (data.tokenize_cases),
    so trl's own max_length, which it cannot enforce padding-free, is left out. Grouped: the trainer's
    length-grouped sampler. Padded: padding-free off explicitly (Unsloth would otherwise choose)."""
    batching = (getattr(spec, "resolved_recipe", None) or {}).get("batching", "padded")
    if batching == "padding_free":
        return {"padding_free": True, "max_length": None}
    if batching == "grouped":
        return {"padding_free": False, "train_sampling_strategy": "group_by_length"}
    return {"padding_free": False}
