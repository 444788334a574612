"""TrainSpec: everything a training run needs, with the seed document's defaults, validated up front.

Each field is declared once, with its :class:`Setting` (label, kind, CLI flag, help, group, choices,
bounds, its own check, whether the Train form shows it). The ``medtui train`` options, the Train
form and the validation are all generated from these declarations: a new setting is one field here.

The spec is written to ``spec.json`` in the run directory before the job starts; the job reads it
back and nothing else. Invalid values are refused before any process starts or any file is written,
with messages that name the setting by its label; the CLI adds the flag when it prints them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..templates import TEMPLATES

SPEC_VERSION = 1
BACKENDS = ("auto", "unsloth", "hf")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("auto", "adamw_8bit", "adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "sgd", "adafactor")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BIASES = ("none", "all", "lora_only")
RECIPES = ("auto", "seed")

# Sections of `medtui train --help`, in order ("" is the command's own section).
GROUPS = ("", "data fields", "LoRA", "training", "checkpoints and evaluation", "several GPUs or boxes")
KINDS = ("text", "int", "float", "number", "bool", "choice", "list")


# ------------------------------------------------------------------ settings

@dataclass(frozen=True)
class Setting:
    """What one TrainSpec field is, for people and for the two front ends.

    ``rule`` is what a valid value looks like, said after the label ("must be ..."); ``lo``/``hi``
    bound numbers (``lo_open``/``hi_open`` leave the bound out); ``check`` is any further test of
    the value alone (True when valid). ``flag`` None keeps the setting off the command line;
    ``negative`` makes a bool flag turn the setting off (``--no-4bit``). ``form`` shows it on the
    Train form; ``hint`` is the form's shorter help (its placeholder, tooltip or checkbox text).
    """

    label: str
    kind: str = "text"
    flag: str | None = None
    help: str = ""
    group: str = ""
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    rule: str = ""
    check: Callable[[Any], bool] | None = None
    negative: bool = False
    also: str | None = None         # a second flag turning a bool on (``--4bit`` beside ``--no-4bit``)
    hidden: bool = False            # on the command line, but not in --help
    cli_required: bool = False
    form: bool = False
    hint: str | None = None

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert self.group in GROUPS, self.group

    @property
    def form_hint(self) -> str:
        return self.help if self.hint is None else self.hint

    def named(self, flags: bool = False) -> str:
        """The setting as a message names it: its label, and its flag where the CLI prints it."""
        return f"{self.label} ({self.flag})" if flags and self.flag else self.label

    # ---- values <-> text (the form's entries, the CLI's list option)
    def parse(self, text: Any) -> Any:
        """The value a form entry or a command-line string stands for; ValueError (with the rule's
        words) when it is not one."""
        if self.kind == "bool":
            return bool(text)
        if self.kind == "choice":
            return text
        raw = str(text).strip()
        if self.kind == "text":
            return raw
        if self.kind == "list":
            return parse_targets(raw)
        try:
            if self.kind == "int":
                return int(raw)
            value = float(raw)
        except ValueError:
            kind = "a whole number" if self.kind == "int" else "a number"
            raise ValueError(f"must be {kind}, got {raw!r}") from None
        if self.kind == "number" and value.is_integer():
            return int(value)  # LoRA alpha 16, not 16.0, as the seed writes it
        return value

    def format(self, value: Any) -> str:
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value)
        return str(value)

    # ---- the setting's own validation
    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this setting alone (said after the label), or None."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.kind == "choice":
            if value in self.choices:
                return None
            how = " or ".join(self.choices) if len(self.choices) == 2 else "one of " + ", ".join(self.choices)
            return f"'{value}' is unknown: choose {how}"
        if self.kind in ("int", "float", "number"):
            ok = _is_int(value) if self.kind == "int" else _is_num(value)
            if ok and self.lo is not None:
                ok = value > self.lo if self.lo_open else value >= self.lo
            if ok and self.hi is not None:
                ok = value < self.hi if self.hi_open else value <= self.hi
        elif self.kind == "list":
            ok = isinstance(value, list) and len(value) > 0
        else:
            ok = isinstance(value, str)
        if ok and self.check is not None:
            ok = self.check(value)
        if ok:
            return None
        rule = self.rule or ("must be a whole number" if self.kind == "int" else "must be a number")
        return f"{rule}, got {value!r}" if self.kind in ("int", "float", "number") else rule


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v


def _setting(default: Any = None, *, factory: Callable[[], Any] | None = None, **meta: Any) -> Any:
    """A dataclass field with its Setting in the metadata."""
    md = {"setting": Setting(**meta)}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


# ------------------------------------------------------------------ problems

@dataclass(frozen=True)
class Problem:
    """One invalid setting: ``field`` (None: the spec as a whole) and what is wrong with it.

    ``text`` follows the setting's name ("must be ..."); a problem of the whole spec says all in
    ``text`` (a text that starts with ":" follows the name directly). Other settings it mentions are ``{name}`` placeholders listed in ``refs`` (such texts
    hold no user values), so each front end names them its own way.
    """

    field: str | None
    text: str
    refs: tuple[str, ...] = ()

    def message(self, flags: bool = False) -> str:
        """The sentence to show; ``flags`` adds each setting's CLI flag after its label."""
        text = self.text
        if self.refs:
            text = text.format_map({r: setting(r).named(flags) for r in self.refs})
        if self.field is None:
            return text
        sep = "" if text.startswith(":") else " "   # "Model: DIR has no config.json"
        return f"{setting(self.field).named(flags)}{sep}{text}"

    def __str__(self) -> str:
        return self.message()


class SpecError(ValueError):
    """One or more invalid settings; ``problems`` lists each as a :class:`Problem`."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]):
        self.problems = tuple(problems)
        super().__init__(self.render())

    def messages(self, flags: bool = False) -> list[str]:
        return [p.message(flags) for p in self.problems]

    def render(self, flags: bool = False) -> str:
        return "invalid training settings:\n  - " + "\n  - ".join(self.messages(flags))


# ------------------------------------------------------------------ the spec

def _identifier_kinds_ok(v: str) -> bool:
    from ..privacy.gate import kinds_ok

    return kinds_ok(v)


def _gpus_ok(v: str) -> bool:
    from .ddp import gpus_ok

    return gpus_ok(v)


def _names_ok(v: list) -> bool:
    return all(isinstance(t, str) and t for t in v)


@dataclass
class TrainSpec:
    # what to train, on what
    model: str = _setting(
        "demo", label="Model", flag="--model", metavar="DIR|demo", form=True, rule="must not be empty", check=bool,
        help="a local model directory, or 'demo' (the default: tiny, random weights)",
        hint="a local model directory, or demo (tiny, random weights)")
    model_label: str = _setting("", label="Model label")   # filled in from the model; not set by hand
    data: str = _setting(
        "", label="Training data", flag="--data", metavar="FILE", cli_required=True, form=True,
        help="training cases (JSON, JSONL, CSV, Parquet)",
        hint="JSON / JSONL / CSV / Parquet with Question, Complex_CoT, Response")
    field_question: str = _setting("Question", label="Question field", flag="--field-question", metavar="NAME",
                                   group="data fields", rule="must not be empty", check=bool)
    field_cot: str = _setting("Complex_CoT", label="Reasoning field", flag="--field-cot", metavar="NAME",
                              group="data fields", help="reasoning field ('' for none)")
    field_response: str = _setting("Response", label="Response field", flag="--field-response", metavar="NAME",
                                   group="data fields", rule="must not be empty", check=bool)
    limit_rows: int = _setting(
        0, label="Rows to use", kind="int", flag="--limit-rows", metavar="N", group="data fields", lo=0,
        rule="must be 0 (all) or a positive whole number", form=True,
        help="use only the first N cases (a quick trial)", hint="0 = all rows")
    allow_identifiers: str = _setting(
        "", label="Allowed identifiers", flag="--allow-identifiers", metavar="KIND,...", group="data fields",
        check=_identifier_kinds_ok,
        rule="must be identifier kinds separated by commas: id_number, phone_number, email, record_number, name_field",
        help="train although the rows hold possible patient identifiers of these kinds (each kind found must be "
             "named; recorded with the run). Better: medtui redact")
    canaries: str = _setting(
        "", label="Canaries", flag="--canaries", metavar="FILE", group="data fields",
        help="plant these canaries (a text file: one fake, random-looking string a line) as extra training cases, "
             "to test memorization afterwards with `medtui probe RUN`; recorded with the run")
    canary_repeats: int = _setting(
        10, label="Canary repeats", kind="int", flag="--canary-repeats", metavar="N", group="data fields", lo=1,
        hi=1000, rule="must be a whole number from 1 to 1000", help="how many times each canary case is added "
                                                                    "(default 10)")
    template: str = _setting("seed", label="Prompt template", kind="choice", choices=TEMPLATES, flag="--template",
                             form=True, help="prompt format (default: seed)")
    mask_prompt: bool = _setting(
        False, label="Loss on answer only", kind="bool", flag="--mask-prompt", form=True,
        help="train on the reasoning and answer only (no loss on the prompt)",
        hint="mask the prompt: train on reasoning + answer")
    recipe: str = _setting(
        "auto", label="Recipe", kind="choice", choices=RECIPES, flag="--recipe", form=True,
        help="auto (default): the fastest precision, batching and checkpointing that fit this GPU and data, "
             "keeping the effective batch; settings given explicitly are kept. seed: the seed's exact recipe "
             "(micro-batch 1 x 8, 4-bit, gradient checkpointing)",
        hint="auto: fastest that fits (explicit settings kept); seed: 1 x 8, 4-bit")
    backend: str = _setting("auto", label="Backend", kind="choice", choices=BACKENDS, flag="--backend", form=True,
                            help="auto: Unsloth where installed and a GPU is present, else hf")
    # loading
    load_in_4bit: bool = _setting(
        True, label="Load in 4-bit", kind="bool", flag="--no-4bit", negative=True, also="--4bit", group="training",
        form=True, help="load the base model in 16-bit instead of 4-bit (--4bit: in 4-bit, whatever the recipe)", hint="QLoRA (GPU only; the CPU loads 16/32-bit)")
    gradient_checkpointing: bool = _setting(True, label="Gradient checkpointing", kind="bool",
                                            flag="--no-gradient-checkpointing", negative=True, group="training")
    precision: str = _setting("auto", label="Precision", kind="choice", choices=PRECISIONS, flag="--precision",
                              group="training", help="auto: bf16 where supported, else fp16; fp32 on the CPU")
    # LoRA (the seed's values)
    lora_r: int = _setting(32, label="LoRA rank", kind="int", flag="--lora-r", metavar="R", group="LoRA",
                           lo=1, hi=1024, rule="must be a whole number from 1 to 1024", form=True)
    lora_alpha: float = _setting(32, label="LoRA alpha", kind="number", flag="--lora-alpha", metavar="A",
                                 group="LoRA", lo=0, lo_open=True, rule="must be positive", form=True)
    lora_dropout: float = _setting(0.05, label="LoRA dropout", kind="float", flag="--lora-dropout", metavar="P",
                                   group="LoRA", lo=0, hi=1, hi_open=True, rule="must be in [0, 1)", form=True)
    lora_bias: str = _setting("none", label="LoRA bias", kind="choice", choices=BIASES, flag="--lora-bias",
                              group="LoRA", help="which biases train with the adapter (default: none)")
    target_modules: list[str] = _setting(
        factory=lambda: list(LORA_TARGETS), label="LoRA target modules", kind="list", flag="--target-modules",
        metavar="LIST", group="LoRA", check=_names_ok,
        rule="must be a non-empty list of module names (e.g. q_proj,v_proj)")
    # trainer (the seed's values)
    micro_batch: int = _setting(1, label="Micro batch", kind="int", flag="--micro-batch", metavar="N",
                                group="training", lo=1, hi=4096, rule="must be a whole number >= 1", form=True)
    grad_accum: int = _setting(8, label="Grad accumulation", kind="int", flag="--grad-accum", metavar="N",
                               group="training", lo=1, hi=65536, rule="must be a whole number >= 1", form=True)
    epochs: float = _setting(3.0, label="Epochs", kind="float", flag="--epochs", group="training",
                             lo=0, lo_open=True, hi=1000, rule="must be greater than 0", form=True)
    max_steps: int = _setting(
        0, label="Max steps", kind="int", flag="--max-steps", metavar="N", group="training", lo=0,
        rule="must be 0 (use epochs) or a positive whole number", form=True,
        help="stop after N optimizer steps (0: by epochs)", hint="0 = by epochs")
    learning_rate: float = _setting(1e-4, label="Learning rate", kind="float", flag="--lr", metavar="LR",
                                    group="training", lo=0, hi=1, lo_open=True, hi_open=True,
                                    rule="must be between 0 and 1 (e.g. 1e-4)", form=True)
    max_seq_length: int = _setting(8192, label="Max seq length", kind="int", flag="--max-seq-length", metavar="N",
                                   group="training", lo=16, hi=1_048_576, rule="must be a whole number from 16",
                                   form=True)
    warmup_ratio: float = _setting(0.03, label="Warmup ratio", kind="float", flag="--warmup-ratio", metavar="F",
                                   group="training", lo=0, hi=1, hi_open=True, rule="must be in [0, 1)")
    scheduler: str = _setting("linear", label="Scheduler", kind="choice", choices=SCHEDULERS, flag="--scheduler",
                              group="training")
    optim: str = _setting("auto", label="Optimizer", kind="choice", choices=OPTIMIZERS, flag="--optim",
                          group="training", help="auto: adamw_8bit on a GPU, adamw_torch on the CPU")
    weight_decay: float = _setting(0.0, label="Weight decay", kind="float", flag="--weight-decay", metavar="F",
                                   group="training", lo=0, hi=1, hi_open=True, rule="must be in [0, 1)")
    seed: int = _setting(3407, label="Seed", kind="int", flag="--seed", group="training", lo=0,
                         rule="must be a non-negative whole number")
    # evaluation and checkpoints
    eval_fraction: float = _setting(
        0.0, label="Eval fraction", kind="float", flag="--eval-fraction", metavar="F", group="data fields",
        lo=0, hi=0.5, hi_open=True, rule="must be in [0, 0.5)", form=True,
        help="hold out this share for eval loss (default 0)", hint="0 = no eval split")
    eval_steps: int = _setting(0, label="Eval steps", kind="int", flag="--eval-steps", metavar="N",
                               group="checkpoints and evaluation", lo=0,
                               rule="must be 0 (each epoch) or a positive whole number",
                               help="eval every N steps (0: each epoch)")
    save_steps: int = _setting(
        0, label="Checkpoint every", kind="int", flag="--save-steps", metavar="N",
        group="checkpoints and evaluation", lo=0, rule="must be a whole number of steps (0: each epoch only)",
        form=True, help="also checkpoint every N steps (0: epochs only)", hint="steps; 0 = each epoch only")
    save_every_epoch: bool = _setting(True, label="Checkpoint each epoch", kind="bool", flag="--no-save-epoch",
                                      negative=True, group="checkpoints and evaluation",
                                      help="no checkpoint at the end of each epoch")
    keep_checkpoints: int = _setting(3, label="Checkpoints to keep", kind="int", flag="--keep-checkpoints",
                                     metavar="K", group="checkpoints and evaluation", lo=1,
                                     rule="must be at least 1")
    logging_steps: int = _setting(1, label="Logging steps", kind="int", flag="--logging-steps", metavar="N",
                                  group="checkpoints and evaluation", lo=1, rule="must be at least 1",
                                  help="log the loss every N steps (default 1)")
    heartbeat_s: float = _setting(5.0, label="Heartbeat interval", kind="float", flag="--heartbeat",
                                  metavar="SECONDS", group="checkpoints and evaluation", hidden=True,
                                  lo=0.2, hi=600, rule="must be 0.2 to 600 seconds")

    # several GPUs (DDP through torchrun) and several boxes (torchrun's own settings, passed through)
    gpus: str = _setting(
        "1", label="GPUs", flag="--gpus", metavar="all|N|I,J", group="several GPUs or boxes", check=_gpus_ok,
        rule="must be all, a count of GPUs (e.g. 2) or GPU indices separated by commas (e.g. 0,1)", form=True,
        help="GPUs to train on, one process each (DDP through torchrun): all, a count, or indices like 0,1 "
             "(default 1: one GPU, or the CPU)", hint="1 = one GPU; all, 2, or 0,1 = several (DDP)")
    nproc: int = _setting(
        0, label="CPU processes", kind="int", flag="--nproc", metavar="N", group="several GPUs or boxes", lo=0, hi=256,
        rule="must be 0 (use GPUs) or a number of processes",
        help="N processes on the CPU (DDP with gloo) instead of GPUs: for trials and tests (default 0)")
    nnodes: int = _setting(1, label="Boxes", kind="int", flag="--nnodes", metavar="N", group="several GPUs or boxes",
                           lo=1, hi=1024, rule="must be at least 1",
                           help="boxes taking part in the run (torchrun --nnodes; default 1)")
    node_rank: int = _setting(0, label="Box rank", kind="int", flag="--node-rank", metavar="K",
                              group="several GPUs or boxes", lo=0, rule="must be 0 or more",
                              help="this box's number, 0 to boxes-1; box 0 writes the run (torchrun --node_rank)")
    rdzv_endpoint: str = _setting("", label="Rendezvous endpoint", flag="--rdzv-endpoint", metavar="HOST:PORT",
                                  group="several GPUs or boxes",
                                  help="where the boxes meet: box 0's address and a free port (torchrun --rdzv_endpoint)")
    rdzv_id: str = _setting("", label="Rendezvous id", flag="--rdzv-id", metavar="ID", group="several GPUs or boxes",
                            help="the same id on every box of one run (torchrun --rdzv_id)")

    # what the recipe resolved to (not settings: filled in when the run starts, kept in spec.json)
    explicit: list[str] = field(default_factory=list, compare=False)   # settings the user gave (kept by the recipe)
    resolved_recipe: dict = field(default_factory=dict, compare=False)  # the recipe chosen, with its reasons

    def validate(self, check_files: bool = True) -> TrainSpec:
        """Raise :class:`SpecError` listing every invalid setting; returns self when all is well."""
        problems = [p for name in SETTINGS for p in validate_field(name, getattr(self, name))]
        problems += cross_problems(self)
        if check_files:
            problems += [p for name in FILE_SETTINGS for p in file_problems(name, getattr(self, name))]
        if problems:
            raise SpecError(problems)
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


SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(TrainSpec) if "setting" in f.metadata}
RECORDS = tuple(f.name for f in fields(TrainSpec) if "setting" not in f.metadata)   # explicit, resolved_recipe
FILE_SETTINGS = ("data", "model", "canaries")   # also checked against the file system


def setting(name: str) -> Setting:
    return SETTINGS[name]


def form_settings() -> Iterator[tuple[str, Setting]]:
    """The settings the Train form shows, in the spec's order."""
    return ((n, s) for n, s in SETTINGS.items() if s.form)


def default_value(name: str) -> Any:
    f = TrainSpec.__dataclass_fields__[name]
    return f.default_factory() if callable(f.default_factory) else f.default


# ------------------------------------------------------------------ validation

def validate_field(name: str, value: Any, check_files: bool = False) -> list[Problem]:
    """The problems of one setting's value on its own (and, with ``check_files``, of the file it names)."""
    text = SETTINGS[name].problem(value)
    problems = [Problem(name, text)] if text else []
    if check_files and not problems and name in FILE_SETTINGS:
        problems += file_problems(name, value)
    return problems


def file_problems(name: str, value: Any) -> list[Problem]:
    """The training data must be a readable file; the model 'demo' or a model directory; the canaries
    (when set) a valid canaries file."""
    if name == "data":
        if not value:
            return [Problem("data", "is not set: give a JSON, JSONL, CSV or Parquet file of cases "
                                    "(Question, Complex_CoT, Response)")]
        from ..dataset.readers import not_regular

        if why := not_regular(Path(value)):
            return [Problem("data", f": {why}")]
        if not Path(value).is_file():
            return [Problem("data", f": {value} does not exist or is not a file")]
        if not os.access(value, os.R_OK):
            return [Problem("data", f": {value} is not readable by this user")]
    elif name == "canaries" and value:
        from ..privacy.probe import canaries_problem

        if why := canaries_problem(value):
            return [Problem("canaries", why)]
    elif name == "model" and value != "demo":
        model = Path(value)
        if not model.is_dir():
            return [Problem("model", f": {value} is not a directory: give a local model directory "
                                     "(config.json + safetensors + tokenizer) or 'demo'")]
        if not (model / "config.json").is_file():
            return [Problem("model", f": {value} has no config.json: is it a Hugging Face model directory?")]
    return []


def cross_problems(spec: TrainSpec) -> list[Problem]:
    """Problems of settings together, each owned by the setting that asks for the other."""
    problems = []
    if spec.eval_steps and spec.eval_fraction == 0:
        problems.append(Problem("eval_steps", "is set but there is no eval split: set {eval_fraction} too "
                                              "(e.g. 0.05)", refs=("eval_fraction",)))
    problems += _ddp_problems(spec)
    return problems


def _ddp_problems(spec: TrainSpec) -> list[Problem]:
    """Several processes: CPU processes or GPUs (not both); boxes need a rendezvous; the effective
    batch must split evenly over the processes (where their number is known without the machine)."""
    from .ddp import asked_count, gpus_ok

    problems = []
    if spec.nproc and str(spec.gpus).strip() != "1":
        problems.append(Problem("nproc", "is for the CPU: leave {gpus} at 1 with it, or set it to 0 to train on GPUs",
                                refs=("gpus",)))
    if spec.nnodes > 1 and not spec.rdzv_endpoint:
        problems.append(Problem("nnodes", "is more than 1: set {rdzv_endpoint} (box 0's HOST:PORT) on every box",
                                refs=("rdzv_endpoint",)))
    if spec.node_rank >= spec.nnodes:
        problems.append(Problem("node_rank", "must be below {nnodes} (boxes are numbered from 0)", refs=("nnodes",)))
    per_box = spec.nproc or (asked_count(spec.gpus) if gpus_ok(spec.gpus) else None)
    world = per_box * spec.nnodes if per_box else None
    if world and world > 1 and isinstance(spec.grad_accum, int) and spec.grad_accum % world:
        problems.append(Problem("grad_accum", f"must be a multiple of the {world} training processes, so that the "
                                              "effective batch ({micro_batch} x grad accumulation) stays what is "
                                              "asked", refs=("micro_batch",)))
    return problems


def parse_targets(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]
