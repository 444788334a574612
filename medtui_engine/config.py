"""Settings, from a TOML file with documented defaults.

The file is optional; a missing key takes its default. Unknown keys and wrong types are reported
with the file and key named, never with a traceback.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .paths import config_path


class ConfigError(ValueError):
    """A settings file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Settings:
    # Where runs, merged models, transcripts and reports go ("" = the user's data directory).
    workspace: str = ""
    # The model used when none is given: a local directory, or "demo" (tiny random-weight Qwen3).
    default_model: str = "demo"
    # Training backend: auto (Unsloth where it imports and a GPU is present), unsloth, or hf.
    backend: str = "auto"
    # Prompt format: seed (the seed document's Chinese template with <think>) or chat.
    template: str = "seed"
    # Allow the hub (model downloads) in job processes; telemetry stays off either way.
    allow_network: bool = False
    # Warn when less than this many GiB are free where runs and merged models are written.
    min_free_disk_gib: float = 50.0
    # TUI: mouse support (also --no-mouse) and animations (off: SSH first).
    mouse: bool = True
    animations: bool = False
    source: str = field(default="defaults", compare=False)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


DOCS = {
    "workspace": "directory for runs, merged models, transcripts, reports ('' = user data dir)",
    "default_model": "model used when none is given: a local directory, or 'demo'",
    "backend": "training backend: auto | unsloth | hf",
    "template": "prompt format: seed | chat",
    "allow_network": "let job processes reach the hub (telemetry stays off)",
    "min_free_disk_gib": "warn below this much free disk in the workspace",
    "mouse": "mouse support in the TUI",
    "animations": "TUI animations",
}

_CHOICES = {"backend": {"auto", "unsloth", "hf"}, "template": {"seed", "chat"}}


def load_settings(path: Path | None = None) -> Settings:
    path = path or config_path()
    if not path.exists():
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file or delete it to use the defaults") from None
    table = raw.get("medtui", raw)
    known = {f.name: f for f in fields(Settings) if f.name != "source"}
    values: dict[str, object] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{path}: unknown setting '{key}'; known settings: {', '.join(sorted(known))}")
        default = known[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConfigError(f"{path}: setting '{key}' must be a {type(default).__name__}, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"{path}: setting '{key}' must be one of {sorted(_CHOICES[key])}, got {value!r}")
        values[key] = value
    return Settings(**values, source=str(path))


def render_default_config() -> str:
    """The settings file with every default written out and documented."""
    lines = ["# medtui settings. Every key is optional; shown here with its default.", "[medtui]"]
    for f in fields(Settings):
        if f.name == "source":
            continue
        value = f.default
        text = str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, float) else f'"{value}"'
        lines.append(f"# {DOCS[f.name]}")
        lines.append(f"{f.name} = {text}")
    return "\n".join(lines) + "\n"
