"""The measured fit: before the first real step, a couple of forward + backward passes on the data's
longest micro-batch at the chosen recipe measure peak GPU memory and tokens/s, and correct the
recipe where it would not fit (halve the micro-batch, keeping the effective batch; turn gradient
checkpointing on; fall to 4-bit), before any optimizer step. Settings the user gave are never
changed. The outcome is one ``fit_probe`` event (on the CPU: skipped, with the reason), and the
corrected recipe goes back into ``spec.json`` so that a resume trains what was measured.

The probe takes no optimizer step, clears its gradients and restores the random state: the run
that follows trains exactly as it would without it.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

CPU_REASON = "no CUDA GPU: the probe measures GPU memory, and on the CPU the run's memory is the machine's RAM"
PROBE_STEPS = 2          # the first pass warms up (kernels, allocator); the last is timed
PROBE_MARGIN = 0.95      # of what this process can use (free + already reserved)
MAX_CORRECTIONS = 6


def next_correction(spec) -> tuple[dict, str, bool] | None:
    """(changes to the spec, the sentence, whether the model must be loaded again), or None when
    nothing the user left to the recipe can lower the memory further."""
    explicit = set(spec.explicit or ())
    batch_free = not ({"micro_batch", "grad_accum"} & explicit)
    if batch_free and spec.micro_batch > 1:
        mb = spec.micro_batch // 2
        ga = spec.micro_batch * spec.grad_accum // mb
        return ({"micro_batch": mb, "grad_accum": ga},
                f"halved the micro-batch to {mb} x accumulation {ga} (the effective batch stays {mb * ga})", False)
    if "gradient_checkpointing" not in explicit and not spec.gradient_checkpointing:
        return {"gradient_checkpointing": True}, "turned gradient checkpointing on", True
    if "load_in_4bit" not in explicit and not spec.load_in_4bit:
        return {"load_in_4bit": True}, "fell back to 4-bit loading (QLoRA)", True
    return None


def longest_batch(rows: list[dict], micro: int) -> list[dict]:
    return sorted(rows, key=lambda r: len(r["input_ids"]), reverse=True)[:max(1, micro)]


def _collate(tokenizer, rows: list[dict], batching: str):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=batching == "padding_free")
    return collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])


def measure(model, tokenizer, rows: list[dict], spec, optimizer_bytes: int) -> dict:
    """Forward + backward on the longest micro-batch: peak memory (reserved, plus the optimizer state
    the probe does not allocate), what this process may use, tokens/s. ``oom`` when it ran out."""
    import torch

    batching = (spec.resolved_recipe or {}).get("batching", "padded")
    batch_rows = longest_batch(rows, spec.micro_batch)
    tokens = sum(len(r["input_ids"]) for r in batch_rows)
    device = torch.device("cuda", torch.cuda.current_device())
    batch = {k: v.to(device) for k, v in _collate(tokenizer, batch_rows, batching).items()}
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    free, _total = torch.cuda.mem_get_info()
    budget = (free + torch.cuda.memory_reserved()) * PROBE_MARGIN
    torch.cuda.reset_peak_memory_stats()
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state_all()
    was_training = model.training
    model.train()
    out = {"samples": len(batch_rows), "batch_tokens": tokens, "longest_tokens": len(batch_rows[0]["input_ids"]),
           "budget_mib": round(budget / 2**20, 1), "oom": False, "tokens_per_s": None}
    try:
        seconds = None
        for _ in range(PROBE_STEPS):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        out["tokens_per_s"] = round(tokens / seconds, 1) if seconds else None
    except torch.OutOfMemoryError as exc:
        out["oom"] = True
        out["oom_error"] = (str(exc).strip().splitlines() or ["CUDA out of memory"])[0][:300]
    finally:
        loss = None
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state_all(cuda_rng)
        peak = torch.cuda.max_memory_reserved()
        batch = None
        gc.collect()
        torch.cuda.empty_cache()
    out["peak_mib"] = round((peak + optimizer_bytes) / 2**20, 1)
    out["fits"] = not out["oom"] and peak + optimizer_bytes <= budget
    return out


def _optimizer_bytes(model, optim: str) -> int:
    """The optimizer state the probe does not allocate: two Adam moments per trainable parameter."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return n * (2 if "8bit" in optim or optim == "auto" else 8)


def record_spec(run_dir: Path, spec) -> None:
    """Put the corrected recipe into spec.json (temp file + rename), keeping its other keys."""
    path = Path(run_dir) / "spec.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    for k in ("micro_batch", "grad_accum", "gradient_checkpointing", "load_in_4bit", "save_steps", "resolved_recipe"):
        d[k] = getattr(spec, k)
    tmp = path.with_name(".spec.json.probe.tmp")
    tmp.write_text(json.dumps(d, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def fit_probe(run_dir: Path, spec, loaded, rows: list[dict], backend: str, writer,
              reload: Callable[[], object]):
    """Probe, correct and record; returns the (possibly reloaded) :class:`backends.Loaded`."""
    import torch

    from ..fit import probe_sentence
    from .recipe import SAVE_MINUTES, Recipe, total_steps

    if not torch.cuda.is_available():
        ev = {"skipped": True, "reason": CPU_REASON}
        writer.emit("fit_probe", message=probe_sentence(ev), **ev)
        return loaded
    recipe = Recipe.from_dict(spec.resolved_recipe) if spec.resolved_recipe else None
    estimate = recipe.estimate_gib if recipe else None
    corrections: list[str] = []
    seed_mode = spec.recipe == "seed"
    for _ in range(MAX_CORRECTIONS + 1):
        result = measure(loaded.model, loaded.tokenizer, rows, spec, _optimizer_bytes(loaded.model, spec.optim))
        fix = None if (result["fits"] or seed_mode) else next_correction(spec)
        if fix is None:
            break
        changes, sentence, reload_needed = fix
        for k, v in changes.items():
            setattr(spec, k, v)
        corrections.append(sentence)
        if reload_needed:
            loaded.model = None
            del loaded
            gc.collect()
            torch.cuda.empty_cache()
            loaded = reload()
    explicit = set(spec.explicit or ())
    if result["tokens_per_s"] and not seed_mode and "save_steps" not in explicit:
        # a checkpoint at least every SAVE_MINUTES of work, measured (the step's tokens at the mean length)
        mean = sum(len(r["input_ids"]) for r in rows) / max(1, len(rows))
        per_step = mean * spec.micro_batch * spec.grad_accum
        every = max(1, math.floor(SAVE_MINUTES * 60 * result["tokens_per_s"] / per_step))
        steps = total_steps(spec, len(rows), spec.micro_batch * spec.grad_accum)
        if every < steps and (not spec.save_steps or every < spec.save_steps):
            spec.save_steps = every
            corrections.append(f"a checkpoint every {every} steps (about {SAVE_MINUTES} minutes of work at the "
                               "measured speed)")
    ev = {"skipped": False, "micro_batch": spec.micro_batch, "grad_accum": spec.grad_accum,
          "gradient_checkpointing": bool(spec.gradient_checkpointing), "load_in_4bit": bool(spec.load_in_4bit),
          "estimate_gib": estimate, "corrections": corrections, **result}
    if recipe is not None:
        reasons = (*recipe.reasons, *(f"Fit probe: {c}." for c in corrections))
        recipe = replace(recipe, micro_batch=spec.micro_batch, grad_accum=spec.grad_accum,
                         load_in_4bit=bool(spec.load_in_4bit), gradient_checkpointing=bool(spec.gradient_checkpointing),
                         save_steps=spec.save_steps, reasons=reasons, probe=ev)
        recipe.apply(spec)
    record_spec(run_dir, spec)   # the measured (and corrected) recipe is what a resume trains
    writer.emit("fit_probe", message=probe_sentence(ev), **ev)
    if result["oom"]:
        # the run fails as an out-of-memory at step 0 fails: the job adds the next setting to try and the
        # `runs resume` line (no step was taken, so a resume starts from the beginning with it)
        raise torch.OutOfMemoryError(result["oom_error"])
    return loaded
