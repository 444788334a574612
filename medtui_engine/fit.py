"""Will it fit: one estimate of a training setting's peak GPU memory against a GPU's free memory.

Used by ``medtui check --model``, the Environment screen and the Train form; reads the model's
``config.json`` and NVML only (no torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .envcheck import CheckLine
from .gpu import NvmlInfo, read_nvml
from .rows import Row, Severity
from .vram import TrainSetting

FIX = "lower batch or max sequence length, or load in 4-bit"


@dataclass(frozen=True)
class FitEstimate:
    line: CheckLine                           # section "fit", name "will it fit", verdict and fix
    info: dict = field(default_factory=dict)  # the figures (for --json and the parts breakdown)

    @property
    def row(self) -> Row:
        return Row(self.line.name, self.line.value, Severity(self.line.verdict), self.line.fix)

    @property
    def parts_gib(self) -> dict[str, float]:
        return dict((self.info.get("estimate") or {}).get("parts_gib") or {})


def _line(value: str, verdict: str, fix: str = "") -> CheckLine:
    return CheckLine("fit", "will it fit", value, verdict, fix)


def estimate_fit(model: str | os.PathLike[str] | None, setting: TrainSetting, nvml: NvmlInfo | None = None,
                 gpu_index: int = 0) -> FitEstimate:
    """Estimate peak VRAM for ``setting`` on ``model`` (a directory, or 'demo') and compare it with
    the free memory of GPU ``gpu_index`` (``nvml`` read here when not given)."""
    from .demo import model_label, resolve_model
    from .vram import ModelShape, ShapeError, estimate_training_vram, fit_verdict

    try:
        model_dir = resolve_model(model)
    except FileNotFoundError as exc:
        return FitEstimate(_line(str(exc), "problem", "give a local model directory, or 'demo'"),
                           {"model": str(model), "error": str(exc)})
    label = model_label(model_dir)
    try:
        shape = ModelShape.from_model_dir(model_dir)
    except ShapeError as exc:
        return FitEstimate(_line(str(exc), "warning", "check the model directory"),
                           {"model": str(model_dir), "error": str(exc)})
    if nvml is None:
        nvml = read_nvml(with_processes=False)
    est = estimate_training_vram(shape, setting)
    gpu = next((g for g in nvml.gpus if g.index == gpu_index), None)
    verdict, words = fit_verdict(est, gpu.memory_free_mib if gpu else None)
    s = setting
    what = (f"{label}: {shape.total_params / 1e9:.2f}B params, {s.bits}-bit, seq {s.seq_len}, batch {s.batch}, "
            f"r={s.lora_rank}, {s.backend}")
    info = {"model": str(model_dir), "label": label, "estimate": est.as_dict(), "gpu_index": gpu_index if gpu else None,
            "free_mib": gpu.memory_free_mib if gpu else None, "verdict": verdict, "words": words, "what": what}
    return FitEstimate(_line(f"{what}: {words}", verdict, "" if verdict in ("ok", "info") else FIX), info)


def setting_for_spec(spec) -> TrainSetting:
    """The memory-relevant part of a TrainSpec."""
    backend = spec.backend if spec.backend in ("unsloth", "hf") else "unsloth"
    return TrainSetting(bits=4 if spec.load_in_4bit else 16, seq_len=spec.max_seq_length, batch=spec.micro_batch,
                        lora_rank=spec.lora_r, gradient_checkpointing=spec.gradient_checkpointing, backend=backend)


def estimate_fit_for_spec(spec, nvml: NvmlInfo | None = None) -> FitEstimate:
    """:func:`estimate_fit` for a training spec. The demo model is not built for an estimate (that
    would import torch): it is tiny, and said so. Never raises: a model that cannot be read is a
    warning line."""
    from .demo import demo_dir

    if spec.model in ("", "demo", None) and not (demo_dir() / "config.json").is_file():
        return FitEstimate(_line("the demo model is tiny (random weights): it fits anywhere, CPU included", "ok"),
                           {"model": "demo"})
    try:
        return estimate_fit(spec.model, setting_for_spec(spec), nvml)
    except Exception as exc:  # noqa: BLE001 - a model directory we cannot read: said in place
        return FitEstimate(_line(f"cannot estimate ({exc})", "warning"), {"model": str(spec.model), "error": str(exc)})


# ------------------------------------------------------------------ the recipe's questions, and the probe's answer

MARGIN = 0.85   # the auto recipe keeps its estimate under 85% of the free memory: the estimate is not exact


def peak_gib(shape, setting: TrainSetting) -> float:
    """The estimated peak of ``setting`` on ``shape`` (a :class:`medtui_engine.vram.ModelShape`), CUDA
    context included: the figure every "will it fit" view compares with free memory."""
    from .vram import CONTEXT_GIB, estimate_training_vram

    return round(estimate_training_vram(shape, setting).total_gib + CONTEXT_GIB, 2)


def fits(shape, setting: TrainSetting, free_mib: float, margin: float = MARGIN) -> tuple[bool, float]:
    """(fits with the margin, estimated GiB)."""
    need = peak_gib(shape, setting)
    return need <= free_mib / 1024 * margin, need


def probe_sentence(ev: dict) -> str:
    """The fit probe's event in words, with the estimate beside the measurement (CLI, run view, runs show)."""
    if ev.get("skipped"):
        return f"fit probe skipped: {ev.get('reason')}"
    est = ev.get("estimate_gib")
    peak = (ev.get("peak_mib") or 0) / 1024
    budget = (ev.get("budget_mib") or 0) / 1024
    what = (f"micro-batch {ev.get('micro_batch')}, {'4' if ev.get('load_in_4bit') else '16'}-bit, checkpointing "
            f"{'on' if ev.get('gradient_checkpointing') else 'off'}")
    if ev.get("oom"):
        measured = "ran out of memory"
    else:
        tps = ev.get("tokens_per_s")
        measured = f"measured peak {peak:.1f} GiB of {budget:.1f} GiB usable" + (f", {tps:,.0f} tokens/s" if tps else "")
    text = (f"fit probe on the {ev.get('samples')} longest samples ({ev.get('batch_tokens'):,} tokens), {what}: "
            f"{measured}; estimated {'-' if est is None else f'{est:.1f}'} GiB")
    fixes = ev.get("corrections") or []
    if fixes:
        text += "; " + "; ".join(fixes)
    return text
