"""Small helpers shared by the tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


async def wait_until(pilot, pred, what: str = "the condition", timeout: float = 30.0, step: float = 0.05,
                     show=None) -> None:
    """Let the app run until ``pred()`` holds; fail naming ``what`` (and ``show()``, what there was
    instead) after ``timeout`` seconds. The timeout bounds a wait; it never decides a result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await pilot.pause(step)
    if pred():
        return
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f": {show()!r}" if show else ""))


async def eventually(pilot, pred, timeout: float = 40.0, step: float = 0.1) -> bool:
    """Like wait_until, for ``assert await eventually(...)``: True once ``pred()`` holds, False at the timeout."""
    try:
        await wait_until(pilot, pred, timeout=timeout, step=step)
    except AssertionError:
        return False
    return True


def wait_for(pred, what: str = "the condition", timeout: float = 30.0, step: float = 0.02):
    """Without an app (threads, processes): poll ``pred()`` until it is truthy and return its value; fail
    naming ``what`` after ``timeout`` seconds (a bound on waiting, never a timing claim)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


async def wait_for_screen(pilot, screen_type: type, timeout: float = 30.0):
    """Wait until the app shows a screen of ``screen_type`` (a pushed dialog, a switched mode), composed and
    mounted; return it."""
    def shown() -> bool:
        screen = pilot.app.screen
        return isinstance(screen, screen_type) and screen.is_mounted

    await wait_until(pilot, shown, f"a {screen_type.__name__}", timeout)
    return pilot.app.screen


async def wait_for_screen_gone(pilot, screen, timeout: float = 30.0) -> None:
    """Wait until ``screen`` (a dialog, the palette) is no longer the one shown."""
    await wait_until(pilot, lambda: pilot.app.screen is not screen, f"{type(screen).__name__} to close", timeout)


def notified(app, text: str) -> bool:
    """Whether the app has shown a notification containing ``text`` (Textual keeps them until they time out)."""
    return any(text in str(n.message) for n in app._notifications)


async def wait_for_notification(pilot, text: str, timeout: float = 30.0) -> None:
    await wait_until(pilot, lambda: notified(pilot.app, text), f"a notification saying {text!r}", timeout)


def keys_for(text: str) -> list[str]:
    """The key names that type ``text`` (Pilot.press takes key names: a space is "space")."""
    return ["space" if ch == " " else ch for ch in text]


async def run_from_palette(pilot, query: str, expect: str, timeout: float = 30.0) -> None:
    """Open the command palette (ctrl+p), type ``query``, wait until its best hit is the entry whose name
    starts with ``expect``, and run it: what a user does to find an action by name."""
    from textual.command import CommandList, CommandPalette

    await pilot.press("ctrl+p")
    palette = await wait_for_screen(pilot, CommandPalette, timeout)
    await pilot.press(*keys_for(query))
    commands = palette.query_one(CommandList)

    def best() -> str:
        if commands.option_count == 0:
            return ""
        return commands.get_option_at_index(0).hit.text or ""

    await wait_until(pilot, lambda: best().startswith(expect), f"{expect!r} first in the palette for {query!r}", timeout)
    if commands.highlighted is None:
        await pilot.press("down")  # highlight the best hit...
    await wait_until(pilot, lambda: commands.highlighted == 0, "the best hit highlighted", timeout)
    await pilot.press("enter")  # ...and run it
    await wait_for_screen_gone(pilot, palette, timeout)


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


def nvidia_gpus() -> int:
    """How many NVIDIA GPUs this machine has, read straight from the driver (not through medtui), so
    that a test asserts what is right on the machine it runs on: a CPU machine or the GPU box."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver: a CPU machine
        return 0
    try:
        return pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()


# Tests that start training (or other model) jobs. Where there is a GPU they run one after another on one
# xdist worker (--dist loadgroup): the product lets one training job use a GPU at a time. On a CPU machine
# there is no such guard, and they spread over the workers like any other test.
TRAIN_JOBS = pytest.mark.xdist_group("train-jobs") if nvidia_gpus() else pytest.mark.train_jobs


# For the real model's CPU work in tests: OpenMP threads that wait without spinning. On a loaded 2-core machine
# (two xdist workers, each starting jobs) spinning threads burn most of the CPU time: a training step of the
# real small model took 30 CPU-seconds with spinning, 5.7 without. The product's job processes get it by default
# (offline.JOB_DEFAULTS); the CLI's own in-process work (``medtui probe``) runs in the environment it is given.
CPU_JOB_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def load_on_cpu(arg: str):
    """A model loaded by the product (``arg`` as ``medtui ask`` takes it), on the CPU in float32 on any
    machine: on a GPU machine the product loads it on the GPU, so the same weights are loaded again on the
    CPU and the GPU copy is let go. For tests of the CPU decode paths, whose answers are compared exactly."""
    import dataclasses

    from medtui_engine.infer import load_model, resolve_source

    loaded = load_model(resolve_source(arg))
    if loaded.device == "cpu":
        return loaded
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(loaded.source.model_dir), dtype=torch.float32).eval()
    on_cpu = dataclasses.replace(loaded, model=model, device="cpu", dtype="float32", gpu_mem_mib=None, decoder=None)
    loaded.unload()
    return on_cpu
