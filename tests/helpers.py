"""Small helpers shared by the tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import time
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


async def wait_until(pilot, pred, what: str = "the condition", timeout: float = 30.0, step: float = 0.05) -> None:
    """Let the app run until ``pred()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await pilot.pause(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def eventually(pilot, pred, timeout: float = 40.0, step: float = 0.1) -> bool:
    """Like wait_until, for ``assert await eventually(...)``: True once ``pred()`` holds, False at the timeout."""
    try:
        await wait_until(pilot, pred, timeout=timeout, step=step)
    except AssertionError:
        return False
    return True


def make_adapter(base: Path, out: Path, r: int = 8, alpha: int | None = None, seed: int = 1, scale: float = 0.05,
                 **extra) -> Path:
    """A real PEFT LoRA adapter on ``base`` with lora_B perturbed (a fresh adapter's B is zero, a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules=extra.pop("targets", LORA_TARGETS),
                     lora_dropout=0.0, task_type="CAUSAL_LM", **extra)
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(out))
    return out
