"""Which model the user means: a merged directory, a run (base + its adapter), an adapter, or a base.

Pure path logic (no torch): the console's picker and ``medtui ask`` both resolve what the user typed
into a ``ModelSource`` before anything heavy is imported. The prompt template comes with the model:
``medtui.json`` beside a merged model, or the run's ``spec.json``; "seed" when neither says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..demo import DEMO_LABEL, is_demo_model, model_label, resolve_model
from ..errors import UserError
from ..paths import ADAPTER_META, PROVENANCE_FILE
from ..runs.store import run_adapter
from ..templates import TEMPLATES

DEFAULT_TEMPLATE = "seed"
SPEC_FILE = "spec.json"
ADAPTER_CONFIG = "adapter_config.json"

# Keys a run's spec.json may use for its base model (the training engine's TrainSpec uses one of these).
_SPEC_MODEL_KEYS = ("model", "base_model", "model_path", "model_dir", "model_name_or_path")


@dataclass(frozen=True)
class ModelSource:
    kind: str                      # "demo" | "base" | "merged" | "run" | "adapter"
    model_dir: Path                # weights to load (the base when an adapter is applied)
    adapter_dir: Path | None       # PEFT adapter applied on top, or None
    template: str                  # the prompt template recorded with the model
    template_from: str             # where the template came from: "medtui.json", "spec.json" or "default"
    label: str                     # how the model is shown to the user
    run_id: str | None = None
    given: str = ""                # what the user typed

    @property
    def is_demo(self) -> bool:
        """Random weights: the demo model itself, or anything trained or merged on it."""
        return is_demo_model(self.model_dir) or DEMO_LABEL in self.label

    def base(self) -> ModelSource:
        """The same model without its adapter, keeping the template (so base and tuned get the same prompt)."""
        if self.kind == "merged":
            base_dir = _merged_base(self.model_dir)
            if base_dir is None:
                raise UserError(
                    f"{self.model_dir / PROVENANCE_FILE} does not name a base model that exists on this machine; "
                    "pick the base model directory for the comparison yourself"
                )
            return ModelSource("base", base_dir, None, self.template, self.template_from,
                               _label(base_dir), None, str(base_dir))
        return ModelSource("base", self.model_dir, None, self.template, self.template_from,
                           _label(self.model_dir), None, str(self.model_dir))

    def with_template(self, template: str) -> ModelSource:
        return replace(self, template=template, template_from="chosen")

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "model_dir": str(self.model_dir),
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
            "template": self.template,
            "template_from": self.template_from,
            "label": self.label,
            "run_id": self.run_id,
            "demo": self.is_demo,
        }


def _label(model_dir: Path) -> str:
    return model_label(model_dir)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}; fix or remove the file") from None
    return data if isinstance(data, dict) else {}


def _template_of(data: dict, where: Path) -> str | None:
    t = data.get("template")
    if isinstance(t, dict):  # tolerate {"template": {"name": "seed"}}
        t = t.get("name")
    if t is None:
        return None
    if t not in TEMPLATES:
        raise UserError(f"{where} records the template {t!r}, which this medtui does not know "
                        f"(known: {', '.join(TEMPLATES)})")
    return str(t)


def _merged_base(model_dir: Path) -> Path | None:
    data = _read_json(model_dir / PROVENANCE_FILE)
    base = data.get("base") or data.get("base_model")
    if isinstance(base, dict):
        base = base.get("path") or base.get("model")
    if not base:
        return None
    try:
        return resolve_model(str(base))
    except FileNotFoundError:
        return None


def _spec_model(spec: dict, spec_path: Path) -> Path:
    value = None
    for key in _SPEC_MODEL_KEYS:
        v = spec.get(key)
        if isinstance(v, dict):
            v = v.get("path") or v.get("model_dir") or v.get("name")
        if isinstance(v, str) and v:
            value = v
            break
    if value is None:
        raise UserError(f"{spec_path} does not name the base model (looked for {', '.join(_SPEC_MODEL_KEYS)})")
    try:
        return resolve_model(value)
    except FileNotFoundError as exc:
        raise UserError(f"{spec_path}: the run's base model is not usable: {exc}") from None


def _from_run(run_dir: Path, given: str) -> ModelSource:
    spec_path = run_dir / SPEC_FILE
    spec = _read_json(spec_path)
    base = _spec_model(spec, spec_path)
    template = _template_of(spec, spec_path)
    adapter = run_adapter(run_dir)
    if adapter is None:
        raise UserError(f"run {run_dir.name} has no adapter yet (no adapter/ and no checkpoint): wait for the first "
                        "checkpoint, or ask the base model alone")
    which = "final adapter" if adapter.name == "adapter" else adapter.name
    label = f"{run_dir.name} ({which}) on {_label(base)}"
    return ModelSource("run", base, adapter, template or DEFAULT_TEMPLATE,
                       "spec.json" if template else "default", label, run_dir.name, given)


def _from_adapter(adapter: Path, given: str, base_override: str | None) -> ModelSource:
    cfg = _read_json(adapter / ADAPTER_CONFIG)
    # A checkpoint inside a run: the run's spec knows the base and the template.
    for parent in (adapter.parent, adapter.parent.parent):
        if (parent / SPEC_FILE).exists():
            src = _from_run(parent, given)
            return replace(src, adapter_dir=adapter, label=f"{parent.name} ({adapter.name}) on {_label(src.model_dir)}")
    base_arg = base_override or cfg.get("base_model_name_or_path")
    if not base_arg:
        raise UserError(f"{adapter / ADAPTER_CONFIG} does not name its base model; give it with --base DIR")
    try:
        base = resolve_model(base_arg)
    except FileNotFoundError as exc:
        raise UserError(f"the adapter's base model is not usable: {exc}; give it with --base DIR") from None
    # an adapter-only export records its template in medtui.json; a final adapter copied out of its
    # run, in the training job's medtui_adapter.json: the end-of-turn token to stop on depends on it
    prov, template, where = {}, None, "default"
    for name in (PROVENANCE_FILE, ADAPTER_META):
        data = _read_json(adapter / name)
        template = _template_of(data, adapter / name)
        if template:
            prov, where = data, name
            break
    return ModelSource("adapter", base, adapter, template or DEFAULT_TEMPLATE, where,
                       f"{adapter.name} on {_label(base)}", prov.get("run_id"), given)


def resolve_source(arg: str | None, runs_dir: Path | None = None, merged_dir: Path | None = None,
                   base_override: str | None = None) -> ModelSource:
    """What the user typed (``demo``, a directory, a run id, a merged model's name) -> a ModelSource."""
    given = (arg or "demo").strip()
    if given in ("", "demo"):
        path = resolve_model("demo")
        return ModelSource("demo", path, None, DEFAULT_TEMPLATE, "default", f"{_label(path)}", None, given)
    candidates = [Path(given).expanduser()]
    if runs_dir is not None:
        candidates.append(Path(runs_dir) / given)
    if merged_dir is not None:
        candidates.append(Path(merged_dir) / given)
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None and runs_dir is not None:
        from ..runs.store import find_run  # a unique prefix of a run id, or "last"

        try:
            path = find_run(Path(runs_dir), given)
        except LookupError:
            pass
    if path is None:
        raise UserError(f"no model called {given!r}: give 'demo', a model directory (config.json + weights), "
                        "a run directory or run id, or an adapter directory")
    path = path.resolve()
    if (path / SPEC_FILE).exists() and not (path / "config.json").exists():
        return _from_run(path, given)
    if (path / ADAPTER_CONFIG).exists():
        return _from_adapter(path, given, base_override)
    if (path / "config.json").exists():
        prov = _read_json(path / PROVENANCE_FILE)
        template = _template_of(prov, path / PROVENANCE_FILE)
        kind = "demo" if is_demo_model(path) else ("merged" if prov else "base")
        label = _label(path)
        base = prov.get("base")
        if isinstance(base, dict) and base.get("random_weights_demo") and DEMO_LABEL not in label:
            label = f"{label} (merged on the demo model: {DEMO_LABEL})"
        return ModelSource(kind, path, None, template or DEFAULT_TEMPLATE,
                           PROVENANCE_FILE if template else "default", label, prov.get("run_id"), given)
    if (path / SPEC_FILE).exists():
        return _from_run(path, given)
    raise UserError(f"{path} is neither a model directory (config.json), a run (spec.json) nor an adapter "
                    f"({ADAPTER_CONFIG})")


def list_choices(runs_dir: Path | None, merged_dir: Path | None) -> list[tuple[str, str]]:
    """What the console's model picker offers: (argument, description), demo first. Cheap: no loading."""
    out: list[tuple[str, str]] = [("demo", f"the built-in demo model ({DEMO_LABEL})")]
    if merged_dir and Path(merged_dir).is_dir():
        for p in sorted(Path(merged_dir).iterdir()):
            if (p / "config.json").exists() and not p.name.startswith("."):
                out.append((str(p), f"merged: {p.name}"))
    if runs_dir and Path(runs_dir).is_dir():
        for p in sorted(Path(runs_dir).iterdir(), reverse=True):
            if (p / SPEC_FILE).exists():
                if (p / "merged" / "config.json").exists():
                    out.append((str(p / "merged"), f"merged: {p.name}/merged"))
                adapter = run_adapter(p)
                if adapter is not None:
                    which = "final adapter" if adapter.name == "adapter" else adapter.name
                    out.append((str(p), f"run: {p.name} ({which})"))
    return out
