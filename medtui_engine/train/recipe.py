"""The training recipe: precision, micro-batch x accumulation, batching, gradient checkpointing and
periodic checkpoints, chosen for this model, GPU and data (``recipe = auto``), or the seed's exact
recipe (``recipe = seed``).

:func:`choose_recipe` is a pure function of the spec, the model's shape, the GPU's free memory (None:
no GPU), the number of training processes and the data's token lengths. The memory questions go to
:mod:`medtui_engine.fit` (the one "will it fit" estimate). Settings the user gave (``spec.explicit``)
are always kept. Each decision comes with one sentence; :meth:`Recipe.text` joins them, and the CLI,
the Train form and ``spec.json`` (``resolved_recipe``) show the same words.

Which candidate is fastest is judged by relative speeds measured on an H200 (Qwen2.5-7B shape, real
lengths, Unsloth + trl): 4-bit runs at about 0.62 of 16-bit (5,744 vs 9,415 tokens/s at 8 x 1),
micro-batch 1 at about 0.31 of micro-batch 8 (1,773 vs 5,744). Two figures are estimates, not yet
measured: micro-batches 2 and 4 (interpolated) and the cost of gradient checkpointing (about a quarter,
the recomputed forward); `medtui bench train` is the instrument that should replace them. The fit probe in the job (``train.fitprobe``) then measures
the longest batch and corrects the choice before the first real step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

DEFAULT_EFFECTIVE = 8          # samples per optimizer step (the seed's 1 x 8)
SPEED_BITS = {16: 1.0, 4: 0.62}
SPEED_MICRO = {1: 0.31, 2: 0.55, 4: 0.8, 8: 1.0, 16: 1.0, 32: 1.0}
SPEED_CHECKPOINTING = 0.75
MAX_MICRO = 16
SAVE_SHARE = 10                # a periodic checkpoint every tenth of the run ...
SAVE_MINUTES = 15              # ... or every 15 minutes of work, whichever is sooner (once the probe measured)
SAVE_MIN_STEPS = 20            # shorter runs keep the epoch checkpoints only
# the settings a recipe chooses (those the user gave are kept: ``TrainSpec.explicit``)
RECIPE_SETTINGS = ("micro_batch", "grad_accum", "load_in_4bit", "gradient_checkpointing", "save_steps")

# Padding-free batches flatten a micro-batch into one row with positions restarting at each sample.
# Correct only where attention never crosses samples:
PADDING_FREE = {
    # transformers 5: with position_ids and no attention mask, create_causal_mask finds the packed
    # samples (find_packed_sequence_indices) and masks across them for sdpa/eager/flex; flash
    # attention reads the boundaries from position_ids. Checked on the CPU (tests/test_train_recipe.py).
    "hf": True,
    # Unsloth reads the sample boundaries from position_ids (packed_seq_lengths) and runs its own
    # variable-length attention; trl's collator masks the first label of each sample.
    "unsloth": True,
}


@dataclass(frozen=True)
class Recipe:
    mode: str                            # auto | seed
    micro_batch: int
    grad_accum: int                      # over all processes (as the spec's grad_accum)
    load_in_4bit: bool
    gradient_checkpointing: bool
    batching: str                        # padding_free | grouped | padded
    save_steps: int
    estimate_gib: float | None = None    # the "will it fit" estimate of the chosen recipe
    free_gib: float | None = None
    reasons: tuple[str, ...] = ()
    probe: dict = field(default_factory=dict)   # the fit probe's measurement, once made (the job adds it)

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum

    def summary(self) -> str:
        batching = {"padding_free": "padding-free batches", "grouped": "length-grouped batches",
                    "padded": "padded batches"}[self.batching]
        save = f"checkpoint every {self.save_steps} steps" if self.save_steps else "checkpoints each epoch"
        bits = "4-bit" if self.load_in_4bit else "16-bit"
        if self.free_gib is None and self.mode == "auto":
            bits += " on a GPU (16/32-bit on the CPU)"
        return (f"{self.mode} recipe: micro-batch {self.micro_batch} x accumulation {self.grad_accum} "
                f"(effective batch {self.effective_batch}), {bits}, {batching}, "
                f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}, {save}")

    def text(self) -> str:
        """The recipe and its reasons, as the CLI and the Train form show it."""
        return self.summary() + ".\n" + "\n".join(f"  - {r}" for r in self.reasons)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["summary"] = self.summary()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in known}
        d["reasons"] = tuple(d.get("reasons") or ())
        return cls(**d)

    def settings(self) -> dict:
        """The settings this recipe sets (what the Train form shows for those the user left to it)."""
        return {name: getattr(self, name) for name in RECIPE_SETTINGS}

    def apply(self, spec) -> None:
        """Set the spec's settings to this recipe and record it (``resolved_recipe``)."""
        for name, value in self.settings().items():
            setattr(spec, name, value)
        spec.resolved_recipe = self.as_dict()


def _speed(bits: int, micro: int, checkpointing: bool) -> float:
    return SPEED_BITS[bits] * SPEED_MICRO.get(micro, 1.0) * (SPEED_CHECKPOINTING if checkpointing else 1.0)


def _divisors_desc(n: int, cap: int = MAX_MICRO) -> list[int]:
    return [d for d in range(min(n, cap), 0, -1) if n % d == 0]


def batch_seq_len(lengths: list[int], micro: int, batching: str, max_seq_length: int) -> int:
    """The per-sample length that the largest micro-batch costs: padded and grouped batches pad the
    longest samples to the longest; padding-free batches cost the sum of the longest ``micro``."""
    if not lengths:
        return max_seq_length
    top = sorted((min(n, max_seq_length) for n in lengths), reverse=True)[:micro]
    if batching == "padding_free":
        return max(1, math.ceil(sum(top) / micro))
    return top[0]


def total_steps(spec, rows: int, effective: int) -> int:
    if spec.max_steps:
        return int(spec.max_steps)
    return max(1, math.ceil(spec.epochs * math.ceil(max(rows, 1) / max(effective, 1))))


def save_every(steps: int) -> int:
    """The auto recipe's periodic checkpoint: every tenth of the run (0: the run is short)."""
    return 0 if steps < SAVE_MIN_STEPS else max(1, math.ceil(steps / SAVE_SHARE))


def choose_recipe(spec, shape=None, free_mib: float | None = None, gpus: int = 1, lengths: list[int] | None = None,
                  backend: str = "unsloth") -> Recipe:
    """The recipe for ``spec`` on a model of ``shape`` (a ModelShape, None when unknown), a GPU with
    ``free_mib`` free (None: no GPU), ``gpus`` training processes, data of these token ``lengths``
    and the resolved ``backend`` (unsloth | hf)."""
    from ..fit import MARGIN, fits, peak_gib
    from ..vram import TrainSetting

    lengths = list(lengths or [])
    explicit = set(getattr(spec, "explicit", ()) or ())
    backend = backend if backend in ("unsloth", "hf") else "unsloth"
    world = max(1, int(gpus))
    longest = min(max(lengths), spec.max_seq_length) if lengths else spec.max_seq_length

    def setting(bits: int, micro: int, ckpt: bool, batching: str) -> TrainSetting:
        return TrainSetting(bits=bits, seq_len=batch_seq_len(lengths, micro, batching, spec.max_seq_length),
                            batch=micro, lora_rank=spec.lora_r, gradient_checkpointing=ckpt, backend=backend)

    free_gib = None if free_mib is None else round(free_mib / 1024, 1)
    if spec.recipe == "seed":
        bits = 4 if spec.load_in_4bit else 16
        est = (peak_gib(shape, setting(bits, spec.micro_batch, spec.gradient_checkpointing, "padded"))
               if shape is not None else None)
        return Recipe("seed", spec.micro_batch, spec.grad_accum, spec.load_in_4bit, spec.gradient_checkpointing,
                      "padded", spec.save_steps, est, free_gib, (
                          f"The seed recipe as asked: micro-batch {spec.micro_batch} x accumulation {spec.grad_accum}, "
                          f"{bits}-bit, padded batches in random order, gradient checkpointing "
                          f"{'on' if spec.gradient_checkpointing else 'off'}.",))

    reasons: list[str] = []
    # ---- how many samples per optimizer step, and per process
    batch_given = bool({"micro_batch", "grad_accum"} & explicit)
    effective = spec.micro_batch * spec.grad_accum if batch_given else DEFAULT_EFFECTIVE
    # a micro-batch given alone: the accumulation follows, for the effective batch nearest the usual one
    micro_alone = explicit & {"micro_batch", "grad_accum"} == {"micro_batch"}
    if micro_alone:
        effective = spec.micro_batch * world * max(1, round(DEFAULT_EFFECTIVE / (spec.micro_batch * world)))
    per_process = effective // world if effective % world == 0 else None
    if batch_given:
        micro_opts = [spec.micro_batch]
    elif per_process is None:
        micro_opts = [spec.micro_batch]
        reasons.append(f"The effective batch of {effective} samples cannot be shared by {world} processes, so the "
                       f"batch stays micro-batch {spec.micro_batch} x accumulation {spec.grad_accum}.")
    elif free_mib is None:   # the CPU: compute-bound, so a larger micro-batch only holds more memory
        micro_opts = [1]
    else:
        micro_opts = _divisors_desc(per_process)
    # ---- precision and checkpointing options
    if "load_in_4bit" in explicit or free_mib is None:   # no GPU: the setting stays (the CPU loads 16/32-bit)
        bits_opts = [4 if spec.load_in_4bit else 16]
    else:
        bits_opts = [16, 4]
    ckpt_opts = [spec.gradient_checkpointing] if "gradient_checkpointing" in explicit else [False, True]

    def batching_for(micro: int) -> str:
        if micro == 1:
            return "padded"
        return "padding_free" if PADDING_FREE.get(backend) else "grouped"

    candidates = [(b, m, c) for b in bits_opts for m in micro_opts for c in ckpt_opts]
    chosen, est, verdict = None, None, "unknown"
    if free_mib is None or shape is None:
        # nothing to fit against: the fastest candidate on the speed table
        chosen = max(candidates, key=lambda x: (_speed(*x), -x[1]))
        if shape is not None:
            est = peak_gib(shape, setting(chosen[0], chosen[1], chosen[2], batching_for(chosen[1])))
    else:
        fitting = []
        for b, m, c in candidates:
            ok, need = fits(shape, setting(b, m, c, batching_for(m)), free_mib)
            if ok:
                fitting.append(((b, m, c), need))
        if fitting:
            (chosen, est) = max(fitting, key=lambda x: (_speed(*x[0]), -x[1]))
            verdict = "fits"
        else:  # nothing fits: the leanest, said plainly (the probe and the out-of-memory advice follow)
            chosen = min(candidates, key=lambda x: peak_gib(shape, setting(x[0], x[1], x[2], batching_for(x[1]))))
            est = peak_gib(shape, setting(chosen[0], chosen[1], chosen[2], batching_for(chosen[1])))
            verdict = "too big"
    bits, micro, ckpt = chosen
    batching = batching_for(micro)
    grad_accum = effective // micro if micro_alone or micro_opts != [spec.micro_batch] else spec.grad_accum
    four_bit = bits == 4

    # ---- one sentence per decision
    need = f"about {est:.1f} GiB" if est is not None else "an unknown amount"
    if "load_in_4bit" in explicit:
        reasons.append(f"{bits}-bit loading as asked.")
    elif free_mib is None:
        reasons.append("No GPU here to fit against: the CPU loads the model in 16/32-bit (4-bit loading needs a "
                       "CUDA GPU), and the batch is chosen for speed.")
    elif verdict == "too big":
        reasons.append(f"4-bit QLoRA: even the leanest setting needs {need}, more than {MARGIN:.0%} of the "
                       f"{free_gib:.1f} GiB free; lower --max-seq-length (now {spec.max_seq_length}).")
    elif four_bit:
        sixteen = peak_gib(shape, setting(16, 1, True, "padded"))
        reasons.append(f"4-bit QLoRA: 16-bit weights need about {sixteen:.1f} GiB even at micro-batch 1 with "
                       f"checkpointing, over {MARGIN:.0%} of the {free_gib:.1f} GiB free; 4-bit needs {need}.")
    else:
        reasons.append(f"16-bit LoRA: the weights, LoRA optimizer state and activations of the longest batch need "
                       f"{need}, within {MARGIN:.0%} of the {free_gib:.1f} GiB free (16-bit trains about "
                       f"{1 / SPEED_BITS[4]:.1f}x faster than 4-bit).")
    if micro_alone:
        reasons.append(f"Micro-batch {micro} as asked, accumulation {grad_accum // world}"
                       + (f" per process, {world} processes" if world > 1 else "")
                       + (f": the effective batch stays {effective} samples per optimizer step."
                          if effective == DEFAULT_EFFECTIVE else
                          f": an effective batch of {effective} samples, the nearest to {DEFAULT_EFFECTIVE} "
                          f"that micro-batch {micro} allows."))
    elif batch_given:
        reasons.append(f"Micro-batch {micro} x accumulation {grad_accum} as asked (effective batch "
                       f"{micro * grad_accum}).")
    elif per_process is not None:
        per = f" per process, {world} processes" if world > 1 else ""
        if free_mib is None:
            reasons.append(f"Micro-batch {micro} x accumulation {grad_accum // world}{per}: the effective batch stays "
                           f"{effective}; on the CPU a larger micro-batch is no faster and holds more memory.")
        else:
            reasons.append(f"Micro-batch {micro} x accumulation {grad_accum // world}{per}: the effective batch stays "
                           f"{effective} samples per optimizer step, the largest micro-batch that fits"
                           + (f" (the longest samples are about {longest:,} tokens)." if lengths else "."))
    if batching == "padding_free":
        reasons.append(f"Padding-free batches: the {backend} backend keeps attention within each sample and "
                       "restarts positions, so no step computes padding.")
    elif batching == "padded" and micro == 1:
        reasons.append("Padded batches: with one sample per micro-batch there is no padding to remove.")
    elif batching == "grouped":
        reasons.append(f"Length-grouped batches: padding-free batches are not verified with the {backend} backend, "
                       "so samples of similar length are batched together to cut padding.")
    if "gradient_checkpointing" in explicit:
        reasons.append(f"Gradient checkpointing {'on' if ckpt else 'off'} as asked.")
    elif not ckpt:
        reasons.append("Gradient checkpointing off: " + ("the activations fit, and " if free_mib is not None else "")
                       + "recomputing them would cost about a quarter of the speed.")
    else:
        reasons.append("Gradient checkpointing on: without it the activations of the longest batch would not fit.")
    save_steps = spec.save_steps
    if "save_steps" in explicit:
        reasons.append(f"Checkpoints every {save_steps} steps as asked." if save_steps
                       else "Checkpoints at each epoch only, as asked.")
    else:
        steps = total_steps(spec, len(lengths), micro * grad_accum)
        save_steps = save_every(steps)
        if save_steps:
            reasons.append(f"A checkpoint every {save_steps} of the run's {steps} steps, so a failure loses at most a "
                           f"tenth of it (the fit probe shortens this to {SAVE_MINUTES} minutes of work when it "
                           "measures the speed on a GPU).")
        else:
            reasons.append(f"Checkpoints at each epoch only: the run is {steps} steps, under {SAVE_MIN_STEPS}.")
    return Recipe("auto", micro, grad_accum, four_bit, ckpt, batching, save_steps, est, free_gib, tuple(reasons))


# ------------------------------------------------------------------ the inputs, read for a spec

@dataclass(frozen=True)
class Inputs:
    shape: object | None
    free_mib: float | None
    gpus: int
    lengths: list[int]
    backend: str
    notes: tuple[str, ...] = ()


def token_lengths(spec, model_dir) -> list[int]:
    """Each training case's length in tokens as the job will see it (the run's template, the model's
    tokenizer, capped at max_seq_length), fast and without transformers where the tokenizer allows."""
    from pathlib import Path

    from ..dataset.load import FieldMapping, load_cases
    from ..dataset.measure import load_tokenizer, measure_cases

    loaded = load_cases(Path(spec.data), FieldMapping(question=spec.field_question, cot=spec.field_cot or None,
                                                      response=spec.field_response))
    cases = list(loaded.cases)
    if spec.limit_rows:
        cases = cases[: spec.limit_rows]
    if spec.eval_fraction > 0:
        cases = cases[: max(1, round(len(cases) * (1 - spec.eval_fraction)))]
    m, _ = measure_cases(cases, load_tokenizer(Path(model_dir)), spec.template, spec.max_seq_length)
    return [min(rl.total, spec.max_seq_length) for rl in m.lengths]


def read_inputs(spec, nvml=None) -> Inputs:
    """The model's shape, the free memory of the GPU(s) the run will use, the process count and the
    data's token lengths. Never raises: what cannot be read is a note, and the recipe does without."""
    from ..demo import resolve_model
    from ..gpu import read_nvml, visible_gpu_indices
    from ..vram import ModelShape
    from .backends import resolve_backend
    from .ddp import plan_for

    notes: list[str] = []
    try:
        plan = plan_for(spec)
        world, gpu_idx = plan.world, list(plan.gpu_indices)
    except Exception:  # noqa: BLE001 - an unknown GPU list is the validation's to say
        world, gpu_idx = 1, []
    try:
        backend, _ = resolve_backend(spec.backend, world)
    except Exception:  # noqa: BLE001 - refused backends are said when the run starts
        backend = "hf"
    shape = model_dir = None
    try:
        model_dir = resolve_model(spec.model)
        shape = ModelShape.from_model_dir(model_dir)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"the model's shape is unknown ({exc})")
    free = None
    if not spec.nproc:
        info = nvml if nvml is not None else read_nvml(with_processes=False)
        if info.available and info.gpus:
            visible = visible_gpu_indices()
            usable = [g for g in info.gpus if (not gpu_idx or g.index in gpu_idx) and (visible is None or g.index in visible)]
            if usable:
                free = float(min(g.memory_free_mib for g in usable[: max(1, len(gpu_idx))]))
    lengths: list[int] = []
    if model_dir is not None and spec.data:
        try:
            lengths = token_lengths(spec, model_dir)
        except Exception as exc:  # noqa: BLE001 - the job says what is wrong with the data
            notes.append(f"the data's token lengths are unknown ({exc})")
    return Inputs(shape, free, world, lengths, backend, tuple(notes))


def resolve_recipe(spec, nvml=None) -> Recipe:
    """The spec's recipe: the one already resolved (kept in spec.json), or chosen now and applied."""
    if spec.resolved_recipe:
        return Recipe.from_dict(spec.resolved_recipe)
    inputs = read_inputs(spec, nvml)
    recipe = choose_recipe(spec, inputs.shape, inputs.free_mib, inputs.gpus, inputs.lengths, inputs.backend)
    if inputs.notes:
        recipe = replace(recipe, reasons=(*recipe.reasons, *(f"Note: {n}." for n in inputs.notes)))
    recipe.apply(spec)
    return recipe


def preview_recipe(spec, nvml=None) -> tuple[Recipe, object]:
    """The recipe a run of ``spec`` would get, without starting it: (recipe, a copy of the spec with
    the recipe applied). For the Train form's "will it fit"; never raises on a half-filled form."""
    import copy
    from pathlib import Path

    s = copy.deepcopy(spec)
    s.resolved_recipe = {}
    if s.data:
        s.data = str(Path(s.data).expanduser())
    return resolve_recipe(s, nvml), s
