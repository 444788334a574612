"""A PEFT LoRA adapter directory, understood from its files alone (no torch, no peft).

What it targets, with what rank and scale, and whether it fits a base model: every LoRA pair must
sit on a base weight of the same name whose shape is ``lora_B.rows x lora_A.cols``. A mismatch is
reported as the user will read it (which module, which shapes, which architectures), before any
weights are loaded.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .stfiles import SafetensorsError, TensorInfo, read_header

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

# adapter features the streaming merge reproduces exactly; anything else goes through PEFT's own
# merge (still into 16-bit weights), and the provenance says which path ran
_STREAMABLE_LORA_KEYS = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


class AdapterError(UserError):
    pass


@dataclass
class LoraPair:
    module: str          # base module name, e.g. model.layers.0.self_attn.q_proj
    a: TensorInfo        # lora_A.weight [r, in]
    b: TensorInfo        # lora_B.weight [out, r]
    scale: float

    @property
    def base_weight(self) -> str:
        return self.module + ".weight"


@dataclass
class AdapterInfo:
    path: Path
    config: dict
    pairs: dict[str, LoraPair] = field(default_factory=dict)   # by base weight name
    other_tensors: list[str] = field(default_factory=list)      # tensors that are not plain LoRA pairs
    reasons_not_streamable: list[str] = field(default_factory=list)

    @property
    def r(self) -> int | None:
        return self.config.get("r")

    @property
    def streamable(self) -> bool:
        return not self.reasons_not_streamable

    def lora_settings(self) -> dict:
        keys = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora", "bias",
                "modules_to_save", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "task_type", "peft_version")
        return {k: self.config.get(k) for k in keys if k in self.config}


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha patterns: a key matches a module name as a dotted suffix (or a regex)."""
    for key, value in (patterns or {}).items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error:
            if module.endswith(key):
                return value
    return default


def read_adapter(path: Path) -> AdapterInfo:
    """Read an adapter directory's config and weight headers; raise AdapterError with what to do."""
    path = Path(path)
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise AdapterError(
            f"{path} is not a LoRA adapter: it has no {ADAPTER_CONFIG}. Give a run (its final adapter or "
            "newest checkpoint is used) or a directory saved by PEFT's save_pretrained")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{cfg_path} is unreadable: {exc}") from None
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{path} is a {peft_type} adapter; medtui merges LoRA adapters only")
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (path / "adapter_model.bin").is_file():
            raise AdapterError(f"{path} holds adapter_model.bin (pickle); save the adapter as safetensors "
                               "(PEFT's default) and merge that")
        raise AdapterError(f"{path} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}: the adapter is incomplete "
                           "(an interrupted save?). Use an earlier checkpoint")
    try:
        _, tensors = read_header(weights)
    except SafetensorsError as exc:
        raise AdapterError(str(exc)) from None

    info = AdapterInfo(path, config)
    r_default = int(config.get("r") or 8)
    alpha_default = float(config.get("lora_alpha") or r_default)
    rslora = bool(config.get("use_rslora"))
    halves: dict[str, dict[str, TensorInfo]] = {}
    for name, t in tensors.items():
        key = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        m = _STREAMABLE_LORA_KEYS.match(key)
        if m and len(t.shape) == 2:
            halves.setdefault(m.group("module"), {})[m.group("ab")] = t
        else:
            info.other_tensors.append(name)
    for module, ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{weights}: module {module} has lora_{next(iter(ab))} but not its pair; the adapter is damaged")
        r = int(_pattern_value(config.get("rank_pattern"), module, r_default))
        alpha = float(_pattern_value(config.get("alpha_pattern"), module, alpha_default))
        a, b = ab["A"], ab["B"]
        if a.shape[0] != b.shape[1]:
            raise AdapterError(f"{weights}: module {module} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, "
                               "whose ranks differ; the adapter is damaged")
        if a.shape[0] != r:
            r = a.shape[0]  # the stored tensors are the truth; PEFT scales by the configured r
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        info.pairs[module + ".weight"] = LoraPair(module, a, b, scale)

    reasons = info.reasons_not_streamable
    if config.get("use_dora"):
        reasons.append("DoRA (use_dora)")
    if config.get("fan_in_fan_out"):
        reasons.append("fan_in_fan_out layers")
    if config.get("modules_to_save"):
        reasons.append(f"modules_to_save ({', '.join(map(str, config['modules_to_save']))})")
    if str(config.get("bias", "none")) != "none" or config.get("lora_bias"):
        reasons.append(f"trained biases (bias={config.get('bias')})")
    for opt in ("layer_replication", "target_parameters", "trainable_token_indices", "use_qalora", "alora_invocation_tokens"):
        if config.get(opt):
            reasons.append(opt)
    if info.other_tensors:
        reasons.append(f"{len(info.other_tensors)} tensors that are not LoRA pairs (e.g. {info.other_tensors[0]})")
    if not info.pairs and not info.other_tensors:
        raise AdapterError(f"{weights} holds no LoRA weights")
    return info


def check_against_base(adapter: AdapterInfo, base_tensors: dict[str, TensorInfo], base_config: dict,
                       base_dir: Path) -> None:
    """Every LoRA pair must land on a base weight of matching shape; else say exactly what differs."""
    base_arch = ", ".join(base_config.get("architectures") or [base_config.get("model_type", "?")])
    trained_on = adapter.config.get("base_model_name_or_path") or "an unrecorded base"
    missing = [p.base_weight for p in adapter.pairs.values() if p.base_weight not in base_tensors]
    if missing:
        raise AdapterError(
            f"the adapter does not match the base model: it targets {len(missing)} weight(s) the base does not have "
            f"(first: {missing[0]}). Base {base_dir} is {base_arch}; the adapter was trained on {trained_on}. "
            "Pass the base it was trained on with --base")
    bad = []
    for pair in adapter.pairs.values():
        w = base_tensors[pair.base_weight]
        want = (pair.b.shape[0], pair.a.shape[1])
        if len(w.shape) != 2 or tuple(w.shape) != want:
            bad.append(f"{pair.base_weight}: base {list(w.shape)}, adapter needs {list(want)}")
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise AdapterError(
            f"the adapter does not match the base model's shapes: {bad[0]}{more}. Base {base_dir} is {base_arch} "
            f"(hidden size {base_config.get('hidden_size')}); the adapter was trained on {trained_on}. "
            "Pass the base it was trained on with --base")
    for pair in adapter.pairs.values():
        if base_tensors[pair.base_weight].dtype not in {"BF16", "F16", "F32"}:
            raise AdapterError(
                f"base weight {pair.base_weight} is stored as {base_tensors[pair.base_weight].dtype}: the base "
                "is quantized. Merge into the 16-bit base model (the original, unquantized weights) with --base")
