""""Will it fit": peak GPU memory of a LoRA fine-tune, estimated from a model's config.json.

The estimate adds up what is resident (base weights at the chosen precision, embeddings and LM head
in 16-bit, LoRA weights with their gradients and 8-bit Adam states) and what scales with the tokens
in a micro-batch (activations kept or recomputed under gradient checkpointing, logits). The
per-token coefficients were fitted to peak memory measured on an H100 with random-weight models of
real shapes (trl SFTTrainer, LoRA r=32 on the seven projections, adamw_8bit, bf16):

    Unsloth, Qwen2.5-7B shape, 4-bit, seq 2048, batch 2  ->  7.0 GiB
    Unsloth, Qwen1.5-14B shape, 4-bit, seq 8192, batch 1 -> 12.1 GiB
    Unsloth, Qwen2.5-0.5B shape, bf16, seq 1024, batch 4 ->  1.4 GiB
    HF+PEFT, Qwen2.5-7B shape, 4-bit, seq 2048, batch 2  -> 11.2 GiB
    HF+PEFT, Qwen1.5-14B shape, 4-bit, seq 8192, batch 1 -> 22.2 GiB

It is an estimate of the framework's peak allocation; the CUDA context and allocator slack come on
top (CONTEXT_GIB), and free memory is what other processes leave.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

GIB = 2**30
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONTEXT_GIB = 0.6          # CUDA context + allocator slack, beyond the framework's peak allocation
QUANT_OVERHEAD = 1.07      # nf4 with double quantisation: absmax scales on top of half a byte a weight
LORA_BYTES_PER_PARAM = 10  # fp32 weight + fp32 grad + two 8-bit Adam states
# Per-token activation bytes: a * hidden + b * intermediate (Unsloth: checkpoints offloaded, fused loss).
UNSLOTH_ACT = (18.75, 9.86)
# HF + PEFT: fp32 logits (4 bytes * vocab) + checkpointed hidden states on the GPU (k * layers * hidden).
HF_LOGIT_BYTES = 4.0
HF_HIDDEN_K = 2.6


class ShapeError(ValueError):
    pass


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    name: str = ""

    @classmethod
    def from_config(cls, cfg: dict, name: str = "") -> ModelShape:
        cfg = cfg.get("text_config", cfg)
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            shape = cls(
                hidden=hidden,
                intermediate=int(cfg["intermediate_size"]),
                layers=int(cfg["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                vocab=int(cfg["vocab_size"]),
                tied=bool(cfg.get("tie_word_embeddings", False)),
                name=name or str(cfg.get("_name_or_path") or cfg.get("model_type") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ShapeError(f"config.json lacks a usable {exc} for a decoder-only transformer") from None
        return shape

    @classmethod
    def from_model_dir(cls, path: str | Path) -> ModelShape:
        p = Path(path) / "config.json"
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ShapeError(f"cannot read {p}: {exc.strerror}") from None
        except ValueError as exc:
            raise ShapeError(f"{p} is not valid JSON: {exc}") from None
        return cls.from_config(cfg, name=Path(path).name)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one position of one sequence takes (keys and values of every layer, 16-bit)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2

    def module_dims(self) -> dict[str, tuple[int, int]]:
        q_out = self.heads * self.head_dim
        kv_out = self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q_out),
            "k_proj": (self.hidden, kv_out),
            "v_proj": (self.hidden, kv_out),
            "o_proj": (q_out, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }

    @property
    def layer_params(self) -> int:
        return sum(i * o for i, o in self.module_dims().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def total_params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params

    def lora_params(self, rank: int, targets: tuple[str, ...] = LORA_TARGETS) -> int:
        dims = self.module_dims()
        return self.layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets if t in dims)


@dataclass(frozen=True)
class TrainSetting:
    bits: int = 4                  # 4 (QLoRA) or 16
    seq_len: int = 2048
    batch: int = 2                 # per-device micro-batch
    lora_rank: int = 32
    gradient_checkpointing: bool = True
    backend: str = "unsloth"       # unsloth | hf


@dataclass(frozen=True)
class VramEstimate:
    total_gib: float
    parts_gib: dict[str, float] = field(default_factory=dict)
    setting: TrainSetting = field(default_factory=TrainSetting)
    params: int = 0
    lora_params: int = 0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["with_context_gib"] = round(self.total_gib + CONTEXT_GIB, 2)
        return d


def estimate_training_vram(shape: ModelShape, s: TrainSetting) -> VramEstimate:
    if s.bits not in (4, 16):
        raise ShapeError("bits must be 4 or 16")
    body = shape.layers * shape.layer_params
    if s.bits == 4:
        weights = body * 0.5 * QUANT_OVERHEAD
    else:
        weights = body * 2.0
    # bitsandbytes leaves embeddings and the LM head unquantised; HF's k-bit preparation upcasts them to fp32.
    emb_bytes = 4.0 if (s.backend == "hf" and s.bits == 4) else 2.0
    embeddings = shape.embedding_params * emb_bytes
    lora_n = shape.lora_params(s.lora_rank)
    lora = lora_n * LORA_BYTES_PER_PARAM
    tokens = s.seq_len * s.batch
    if s.backend == "hf":
        per_token = HF_LOGIT_BYTES * shape.vocab + HF_HIDDEN_K * shape.layers * shape.hidden
    else:
        a, b = UNSLOTH_ACT
        per_token = a * shape.hidden + b * shape.intermediate
    if not s.gradient_checkpointing:
        # Every layer keeps its activations: roughly one recompute's worth per layer.
        a, b = UNSLOTH_ACT
        per_token += (shape.layers - 1) * (a * shape.hidden + b * shape.intermediate)
    activations = tokens * per_token
    parts = {
        "base weights": weights / GIB,
        "embeddings + LM head": embeddings / GIB,
        "LoRA weights, grads, optimizer": lora / GIB,
        "activations + logits": activations / GIB,
    }
    total = sum(parts.values())
    return VramEstimate(round(total, 2), {k: round(v, 2) for k, v in parts.items()}, s, shape.total_params, lora_n)


def fit_verdict(estimate: VramEstimate, free_mib: float | None) -> tuple[str, str]:
    """(verdict, words) comparing an estimate with the free memory of a GPU."""
    need = estimate.total_gib + CONTEXT_GIB
    if free_mib is None:
        return "info", f"needs about {need:.1f} GiB of GPU memory (no GPU here to compare with)"
    free = free_mib / 1024
    if need <= free * 0.9:
        return "ok", f"needs about {need:.1f} GiB; {free:.1f} GiB free"
    if need <= free:
        return "warning", (f"needs about {need:.1f} GiB; {free:.1f} GiB free: tight, an out-of-memory error is "
                           "possible; lower the batch or the sequence length")
    return "problem", (f"needs about {need:.1f} GiB but only {free:.1f} GiB is free: use 4-bit loading, a smaller "
                       "batch (raise gradient accumulation to keep the effective batch), or a shorter max sequence length")
