# ruff: noqa: I001  (Unsloth is imported before trl / transformers, as it asks)
"""The bare arm of ``bench_train.py``: LoRA fine-tuning as a user of Unsloth + trl writes it, with no
medtui code, in its own process.

    python bare_unsloth_train.py --model DIR --rows ROWS.json --bs 8 --ga 1 --bits 16 --pf true --ckpt false

ROWS.json: a JSON list of token-id lists (the data set, already rendered and tokenized). Prints one
line ``RESULT {...}``: real (non-padding) tokens/s over the timed steps and the peak GPU memory.
"""

import argparse
import json
import time

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--rows", required=True)
ap.add_argument("--bs", type=int, default=8)
ap.add_argument("--ga", type=int, default=1)
ap.add_argument("--bits", type=int, choices=(4, 16), default=16)
ap.add_argument("--pf", choices=("true", "false"), default="false", help="padding-free batches")
ap.add_argument("--ckpt", choices=("true", "false"), default="true", help="Unsloth's gradient checkpointing")
ap.add_argument("--steps", type=int, default=12)
ap.add_argument("--warm", type=int, default=3)
ap.add_argument("--max-len", type=int, default=4096)
ap.add_argument("--r", type=int, default=32)
ap.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (the seed's code: 0.05)")
a = ap.parse_args()

from unsloth import FastLanguageModel  # noqa: E402  (before trl / transformers, as Unsloth asks)

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
model, tok = FastLanguageModel.from_pretrained(model_name=a.model, max_seq_length=a.max_len, dtype=torch.bfloat16,
                                               load_in_4bit=a.bits == 4, local_files_only=True)
model = FastLanguageModel.get_peft_model(model, r=a.r, lora_alpha=a.r, lora_dropout=a.dropout, target_modules=targets,
                                         use_gradient_checkpointing="unsloth" if a.ckpt == "true" else False,
                                         random_state=0, max_seq_length=a.max_len)
rows = [r[: a.max_len] for r in json.load(open(a.rows))]
per_step = a.bs * a.ga
need = per_step * (a.steps + 1)
rows = (rows * (need // len(rows) + 1))[:need]
ds = Dataset.from_dict({"input_ids": rows})
mean_len = sum(len(r) for r in rows) / len(rows)
marks: dict = {}


class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == a.warm and "t" not in marks:
            torch.cuda.synchronize()
            marks["t"] = time.time()

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == a.steps:
            torch.cuda.synchronize()
            marks["e"] = time.time()


cfg = SFTConfig(output_dir="/tmp/bare-unsloth-out", per_device_train_batch_size=a.bs, gradient_accumulation_steps=a.ga,
                max_steps=a.steps, learning_rate=1e-4, warmup_steps=0, logging_steps=1, report_to="none",
                save_strategy="no", max_length=None if a.pf == "true" else a.max_len, bf16=True, packing=False, padding_free=a.pf == "true",
                dataset_num_proc=1, optim="adamw_8bit", seed=0)  # rows are cut above: padding-free needs no max_length
trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=ds, args=cfg, callbacks=[Clock()])
torch.cuda.reset_peak_memory_stats()
trainer.train()
dt = marks["e"] - marks["t"]
samples = (a.steps - a.warm) * per_step
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print("RESULT " + json.dumps({
    "bs": a.bs, "ga": a.ga, "bits": a.bits, "padding_free": getattr(trainer.args, "padding_free", None),
    "ckpt": a.ckpt == "true", "tokens_per_s": round(samples * mean_len / dt), "step_s": round(dt / (a.steps - a.warm), 3),
    "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "losses": losses}), flush=True)
