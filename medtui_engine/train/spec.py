"""TrainSpec: everything a training run needs, with the seed document's defaults, validated up front.

The spec is written to ``spec.json`` in the run directory before the job starts; the job reads it
back and nothing else. Invalid values are refused with a message naming the option and what to do,
before any process starts or any file is written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..templates import TEMPLATES

SPEC_VERSION = 1
BACKENDS = ("auto", "unsloth", "hf")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("auto", "adamw_8bit", "adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "sgd", "adafactor")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BIASES = ("none", "all", "lora_only")


class SpecError(ValueError):
    """One or more invalid settings; ``problems`` lists each (the message joins them)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid training settings:\n  - " + "\n  - ".join(problems))


@dataclass
class TrainSpec:
    # what to train, on what
    model: str = "demo"                 # a local model directory, or "demo"
    model_label: str = ""
    data: str = ""                      # the training file (JSON, JSONL, CSV, Parquet ...)
    field_question: str = "Question"
    field_cot: str = "Complex_CoT"
    field_response: str = "Response"
    limit_rows: int = 0                 # 0 = all rows; else the first N (quick trials)
    template: str = "seed"              # seed | chat
    mask_prompt: bool = False           # True: loss on reasoning + answer only
    backend: str = "auto"               # auto | unsloth | hf
    # LoRA (the seed's values)
    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_bias: str = "none"
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # loading
    load_in_4bit: bool = True
    gradient_checkpointing: bool = True
    precision: str = "auto"             # bf16 where the GPU supports it, else fp16; fp32 on the CPU
    # trainer (the seed's values)
    micro_batch: int = 1
    grad_accum: int = 8
    epochs: float = 3.0
    max_steps: int = 0                  # 0 = by epochs
    learning_rate: float = 1e-4
    max_seq_length: int = 8192
    warmup_ratio: float = 0.03
    scheduler: str = "linear"
    optim: str = "auto"                 # adamw_8bit on a GPU, adamw_torch on the CPU
    weight_decay: float = 0.0
    seed: int = 3407
    # evaluation and checkpoints
    eval_fraction: float = 0.0
    eval_steps: int = 0                 # 0 = at the end of each epoch (when there is an eval split)
    save_steps: int = 0                 # 0 = no step checkpoints (epoch checkpoints still happen)
    save_every_epoch: bool = True
    keep_checkpoints: int = 3
    logging_steps: int = 1
    heartbeat_s: float = 5.0

    def validate(self, check_files: bool = True) -> TrainSpec:
        """Raise :class:`SpecError` listing every invalid setting; returns self when all is well."""
        p: list[str] = []

        def need(cond: bool, msg: str) -> None:
            if not cond:
                p.append(msg)

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

        need(self.template in TEMPLATES, f"template '{self.template}' is unknown: choose {' or '.join(TEMPLATES)}")
        need(self.backend in BACKENDS, f"backend '{self.backend}' is unknown: choose one of {', '.join(BACKENDS)}")
        need(self.precision in PRECISIONS, f"precision '{self.precision}' is unknown: choose one of {', '.join(PRECISIONS)}")
        need(self.scheduler in SCHEDULERS, f"scheduler '{self.scheduler}' is unknown: choose one of {', '.join(SCHEDULERS)}")
        need(self.optim in OPTIMIZERS, f"optimizer '{self.optim}' is unknown: choose one of {', '.join(OPTIMIZERS)}")
        need(self.lora_bias in BIASES, f"LoRA bias '{self.lora_bias}' is unknown: choose one of {', '.join(BIASES)}")
        need(is_int(self.lora_r) and 1 <= self.lora_r <= 1024, f"LoRA rank (--lora-r) must be a whole number from 1 to 1024, got {self.lora_r!r}")
        need(is_num(self.lora_alpha) and self.lora_alpha > 0, f"LoRA alpha (--lora-alpha) must be positive, got {self.lora_alpha!r}")
        need(is_num(self.lora_dropout) and 0 <= self.lora_dropout < 1, f"LoRA dropout (--lora-dropout) must be in [0, 1), got {self.lora_dropout!r}")
        need(isinstance(self.target_modules, list) and len(self.target_modules) > 0 and all(isinstance(t, str) and t for t in self.target_modules),
             "LoRA target modules must be a non-empty list of module names (e.g. q_proj,v_proj)")
        need(is_int(self.micro_batch) and 1 <= self.micro_batch <= 4096, f"micro batch (--micro-batch) must be a whole number >= 1, got {self.micro_batch!r}")
        need(is_int(self.grad_accum) and 1 <= self.grad_accum <= 65536, f"gradient accumulation (--grad-accum) must be a whole number >= 1, got {self.grad_accum!r}")
        need(is_num(self.epochs) and 0 < self.epochs <= 1000, f"epochs (--epochs) must be greater than 0, got {self.epochs!r}")
        need(is_int(self.max_steps) and self.max_steps >= 0, f"max steps (--max-steps) must be 0 (use epochs) or a positive whole number, got {self.max_steps!r}")
        need(is_num(self.learning_rate) and 0 < self.learning_rate < 1, f"learning rate (--lr) must be between 0 and 1 (e.g. 1e-4), got {self.learning_rate!r}")
        need(is_int(self.max_seq_length) and 16 <= self.max_seq_length <= 1_048_576, f"max sequence length (--max-seq-length) must be a whole number from 16, got {self.max_seq_length!r}")
        need(is_num(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, f"warmup ratio (--warmup-ratio) must be in [0, 1), got {self.warmup_ratio!r}")
        need(is_num(self.weight_decay) and 0 <= self.weight_decay < 1, f"weight decay must be in [0, 1), got {self.weight_decay!r}")
        need(is_int(self.seed) and self.seed >= 0, f"seed must be a non-negative whole number, got {self.seed!r}")
        need(is_num(self.eval_fraction) and 0 <= self.eval_fraction < 0.5, f"eval fraction (--eval-fraction) must be in [0, 0.5), got {self.eval_fraction!r}")
        need(is_int(self.eval_steps) and self.eval_steps >= 0, f"eval steps (--eval-steps) must be 0 (each epoch) or a positive whole number, got {self.eval_steps!r}")
        need(is_int(self.save_steps) and self.save_steps >= 0, f"save steps (--save-steps) must be 0 (off) or a positive whole number, got {self.save_steps!r}")
        need(is_int(self.keep_checkpoints) and self.keep_checkpoints >= 1, f"checkpoints to keep (--keep-checkpoints) must be at least 1, got {self.keep_checkpoints!r}")
        need(is_int(self.logging_steps) and self.logging_steps >= 1, f"logging steps must be at least 1, got {self.logging_steps!r}")
        need(is_num(self.heartbeat_s) and 0.2 <= self.heartbeat_s <= 600, f"heartbeat interval must be 0.2 to 600 seconds, got {self.heartbeat_s!r}")
        need(is_int(self.limit_rows) and self.limit_rows >= 0, f"row limit (--limit-rows) must be 0 (all) or a positive whole number, got {self.limit_rows!r}")
        for name in ("field_question", "field_cot", "field_response"):
            need(isinstance(getattr(self, name), str) and getattr(self, name) != "" or name == "field_cot",
                 f"the {name.removeprefix('field_')} field name must not be empty")
        if self.eval_steps and self.eval_fraction == 0:
            p.append("eval steps is set but there is no eval split: set --eval-fraction (e.g. 0.05) too")
        if check_files:
            if not self.data:
                p.append("no training data: pass --data FILE (JSON, JSONL, CSV or Parquet with Question, Complex_CoT, Response)")
            elif not Path(self.data).is_file():
                p.append(f"the training data file {self.data} does not exist or is not a file")
            elif not os.access(self.data, os.R_OK):
                p.append(f"the training data file {self.data} is not readable by this user")
            model = Path(self.model)
            if self.model != "demo":
                if not model.is_dir():
                    p.append(f"the model {self.model} is not a directory: give a local model directory (config.json + safetensors + tokenizer) or 'demo'")
                elif not (model / "config.json").is_file():
                    p.append(f"the model directory {self.model} has no config.json: is it a Hugging Face model directory?")
        if p:
            raise SpecError(p)
        return self

    # --- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["spec_version"] = SPEC_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def write(self, run_dir: Path, extra: dict | None = None) -> Path:
        """Write ``spec.json`` (temp file + rename); ``extra`` adds informational keys."""
        d = self.to_dict()
        d.update({"run_id": Path(run_dir).name, "created_at": time.time()})
        if extra:
            d.update(extra)
        path = Path(run_dir) / "spec.json"
        tmp = path.with_name(".spec.json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(d, fh, ensure_ascii=False, indent=2)
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, run_dir: Path) -> TrainSpec:
        with open(Path(run_dir) / "spec.json", encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def parse_targets(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]
