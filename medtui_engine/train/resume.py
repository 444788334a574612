"""Resuming a run with other settings, and what to try after running out of GPU memory.

A run's ``spec.json`` is never rewritten: it keeps the settings the run started with. A resume
that changes settings is recorded by the job as a ``resume_settings`` event (the new values and
the old), and the settings in force are ``spec.json`` with every such event applied in order
(:func:`effective_spec`): the job, its ranks, ``medtui runs show`` and the TUI all read them so.

Only what leaves the checkpoint meaningful may change (:data:`RESUMABLE`): how the same samples
are split into micro-batches, how long a sequence may be, gradient checkpointing. The effective
batch (micro-batch x accumulation, shared by the processes) must stay what it was: the
checkpoint's step count, its learning-rate schedule and its place in the data are counted in
optimizer steps of that many samples. Given a micro-batch alone, the accumulation is derived.

Everything here is light (no torch): the CLI, the TUI and the job import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from .spec import SETTINGS, TrainSpec, validate_field

RESUME_EVENT = "resume_settings"
RESUMABLE = ("micro_batch", "grad_accum", "max_seq_length", "gradient_checkpointing")


# ------------------------------------------------------------------ the settings in force

def resume_records(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("type") == RESUME_EVENT and isinstance(e.get("settings"), dict)]


def settings_in_force(first: dict, records: list[dict]) -> dict:
    """The resumable settings now: the first ones (``spec.json``) with each record applied, in order."""
    now = {name: first.get(name) for name in RESUMABLE}
    for rec in records:
        now.update({name: value for name, value in rec["settings"].items() if name in RESUMABLE})
    return now


def apply_records(spec: TrainSpec, records: list[dict]) -> TrainSpec:
    """``spec`` with each record's settings applied, in order (unknown names ignored)."""
    for name, value in settings_in_force(vars(spec), records).items():
        setattr(spec, name, value)
    return spec


def effective_spec(run_dir: Path) -> TrainSpec:
    """The settings a run trains with now: spec.json and the resumes' changes. OSError/ValueError/
    TypeError when spec.json cannot be read."""
    from ..runs.events import read_events
    from ..runs.store import EVENTS_FILE

    spec = TrainSpec.read(run_dir)
    return apply_records(spec, resume_records(read_events(Path(run_dir) / EVENTS_FILE)))


# ------------------------------------------------------------------ words

def _label(name: str) -> str:
    return {"micro_batch": "micro-batch", "grad_accum": "accumulation", "max_seq_length": "max sequence length",
            "gradient_checkpointing": "gradient checkpointing"}.get(name, SETTINGS[name].label)


def _value(name: str, value: Any) -> str:
    if SETTINGS[name].kind == "bool":
        return "on" if value else "off"
    return SETTINGS[name].format(value)


def describe_resumes(changes: list[dict]) -> list:
    """``runs show``'s rows for the resumes that changed settings (RunState.setting_changes)."""
    from ..rows import Row

    return [Row("resumed", f"at step {c.get('step')}: {c.get('change')}") for c in changes]


def describe_change(old: dict, new: dict, world: int = 1) -> str:
    """One phrase for a change of settings: "micro-batch 4 -> 2 with accumulation 2 -> 4 keeps 8
    samples per step", "gradient checkpointing off -> on", "max sequence length 8192 -> 1024"."""
    parts = [f"{_label(n)} {_value(n, old[n])} -> {_value(n, new[n])}" for n in RESUMABLE
             if n in new and new[n] != old.get(n)]
    text = " with ".join(parts[:2]) + ("" if len(parts) <= 2 else ", " + ", ".join(parts[2:]))
    if "micro_batch" in new or "grad_accum" in new:
        mb, ga = new.get("micro_batch", old["micro_batch"]), new.get("grad_accum", old["grad_accum"])
        if mb * ga == old["micro_batch"] * old["grad_accum"]:
            text += f" keeps {mb * ga} samples per step" + (f" ({world} processes)" if world > 1 else "")
    return text


def resume_flags(settings: dict) -> str:
    """The ``medtui runs resume`` options that ask for ``settings``."""
    out = []
    for name in RESUMABLE:
        if name not in settings:
            continue
        if name == "gradient_checkpointing":
            out.append("--gradient-checkpointing" if settings[name] else "--no-gradient-checkpointing")
        else:
            out.append(f"{SETTINGS[name].flag} {settings[name]}")
    return " ".join(out)


# ------------------------------------------------------------------ what to try after an OOM

@dataclass(frozen=True)
class Advice:
    """What to try next: the settings (empty when no resume can help) and the phrase saying so."""

    settings: dict
    text: str

    def as_dict(self) -> dict:
        return {"settings": dict(self.settings), "text": self.text}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def smaller_micro_batch(micro_batch: int, grad_accum: int, world: int = 1) -> tuple[int, int] | None:
    """The largest micro-batch at most half of ``micro_batch`` that keeps the effective batch (its
    accumulation a multiple of the processes): (micro-batch, accumulation), or None."""
    total = micro_batch * grad_accum
    for d in sorted(_divisors(total), reverse=True):
        if d <= micro_batch // 2 and (total // d) % world == 0:
            return d, total // d
    return None


def shorter_length(max_seq_length: int, longest: int | None) -> int | None:
    """A max sequence length about a quarter below the longest case (or the current limit), in
    multiples of 64 where that is possible; None when it would go below 64 tokens."""
    cap = min(max_seq_length, longest) if longest else max_seq_length
    target = (cap * 3) // 4
    target = target // 64 * 64 if target >= 128 else target
    return target if 64 <= target < max_seq_length else None


def oom_advice(spec: TrainSpec, world: int = 1, longest: int | None = None, cuda: bool = True,
               loading: bool = False) -> Advice:
    """The one next setting to try after running out of memory, in the order that costs least:
    a smaller micro-batch (the effective batch kept), then gradient checkpointing, then a shorter
    max sequence length (the longest cases are cut). ``loading``: it ran out before training began
    (the weights themselves): no resume setting helps."""
    if loading:
        how = "start a new run that loads it in 4-bit, or " if cuda and not spec.load_in_4bit else ""
        return Advice({}, f"the model's weights do not fit while loading: {how}use a GPU with more free memory")
    cur = {n: getattr(spec, n) for n in RESUMABLE}
    if smaller := smaller_micro_batch(spec.micro_batch, spec.grad_accum, world):
        new = {"micro_batch": smaller[0], "grad_accum": smaller[1]}
        return Advice(new, describe_change(cur, new, world))
    if not spec.gradient_checkpointing:
        new = {"gradient_checkpointing": True}
        return Advice(new, describe_change(cur, new) + " (slower steps, far less activation memory)")
    if (length := shorter_length(spec.max_seq_length, longest)) is not None:
        new = {"max_seq_length": length}
        extra = f" (the longest case has {longest} tokens; longer cases are cut)" if longest else " (longer cases are cut)"
        return Advice(new, describe_change(cur, new) + extra)
    how = "start a new run that loads the base in 4-bit, or " if cuda and not spec.load_in_4bit else ""
    return Advice({}, "even micro-batch 1 with gradient checkpointing and short sequences does not fit: "
                      f"{how}use a GPU with more free memory")


def is_oom(exc: BaseException) -> bool:
    """torch's out-of-memory error, or a CUDA error that says the same (cuBLAS, a raw CUDA call)."""
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError"
            or any(s in text for s in ("CUDA out of memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED")))


def oom_message(exc: BaseException, advice: Advice) -> str:
    """The failure's one sentence: what ran out, then the next setting to try."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if advice.settings:
        return f"out of GPU memory ({text[:200]}); next try {advice.text}"
    return f"out of GPU memory ({text[:200]}); {advice.text}"


# ------------------------------------------------------------------ a resume's new settings

def resume_settings(spec: TrainSpec, asked: dict, world: int = 1) -> tuple[dict, str | None]:
    """Check the settings asked for a resume against the run's settings in force (``spec``).

    Returns (the changed settings, a phrase describing the change or None). Raises UserError for a
    setting that cannot change on resume, an invalid value, or an effective batch that would change.
    """
    refused = [n for n, v in asked.items() if n not in RESUMABLE and v != getattr(spec, n)]
    if refused:
        names = " and ".join(SETTINGS[n].named(flags=True) for n in refused)
        had = ", ".join(f"{SETTINGS[n].label} {SETTINGS[n].format(getattr(spec, n))}" for n in refused)
        raise UserError(
            f"{names} cannot change when a run resumes: its checkpoint was trained with {had}. "
            "A resume may change only micro-batch (--micro-batch), "
            "accumulation (--grad-accum), max sequence length (--max-seq-length) and gradient checkpointing; "
            "start a new run with `medtui train` for other settings")
    new = {n: v for n, v in asked.items() if n in RESUMABLE}
    problems = [p.message(flags=True) for n, v in new.items() for p in validate_field(n, v)]
    if problems:
        raise UserError("invalid resume settings:\n  - " + "\n  - ".join(problems))
    total = spec.micro_batch * spec.grad_accum
    derived = None
    if "micro_batch" in new and "grad_accum" not in new:
        mb = new["micro_batch"]
        if total % mb or (total // mb) % world:
            fits = [d for d in _divisors(total) if (total // d) % world == 0]
            raise UserError(
                f"micro-batch {mb} cannot keep the effective batch of {total} samples per step "
                f"(micro-batch {spec.micro_batch} x accumulation {spec.grad_accum}"
                + (f", over {world} processes" if world > 1 else "") + "): choose a micro-batch of "
                + ", ".join(map(str, fits)))
        new["grad_accum"] = total // mb
        derived = "grad_accum"
    elif "grad_accum" in new and "micro_batch" not in new:
        ga = new["grad_accum"]
        if total % ga:
            raise UserError(f"accumulation {ga} cannot keep the effective batch of {total} samples per step: "
                            "give --micro-batch instead (the accumulation follows)")
        new["micro_batch"] = total // ga
        derived = "micro_batch"
    mb, ga = new.get("micro_batch", spec.micro_batch), new.get("grad_accum", spec.grad_accum)
    if mb * ga != total:
        raise UserError(
            f"micro-batch {mb} x accumulation {ga} = {mb * ga} samples per step, but the run trains with {total}: "
            "a resume keeps the effective batch (the checkpoint's step count, learning-rate schedule and place in "
            f"the data count steps of {total} samples). Give --micro-batch alone and the accumulation follows")
    if ga % world:
        raise UserError(f"accumulation {ga} cannot be shared by {world} processes: choose a micro-batch that "
                        f"leaves a multiple of {world}")
    cur = {n: getattr(spec, n) for n in RESUMABLE}
    changed = {n: v for n, v in new.items() if v != cur[n]}
    if not changed:
        return {}, None
    phrase = describe_change(cur, changed, world)
    if derived and derived in changed:
        phrase += f" ({_label(derived)} derived to keep the effective batch)"
    return changed, phrase


def parse_set(text: str | None) -> dict:
    """The job's ``--set`` argument: a JSON object of setting names to values."""
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("--set takes a JSON object")
    return value
