"""Where medtui keeps things: one workspace for runs, merged models, transcripts and reports.

Resolution order for the workspace: an explicit argument (``--workspace``), then the
``MEDTUI_WORKSPACE`` environment variable, then ``workspace`` in the settings file, then the
user's data directory. The demo model is cached under ``MEDTUI_HOME`` (or the user's data
directory), never in the workspace, so that wiping a workspace does not force a rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_config_dir, user_data_dir

APP_NAME = "medtui"
ENV_WORKSPACE = "MEDTUI_WORKSPACE"
ENV_HOME = "MEDTUI_HOME"
ENV_CONFIG = "MEDTUI_CONFIG"

# Files medtui writes beside a model: the training job's note on the final adapter (base model, template,
# backend, step, what was loaded), and a merged model's provenance (run, adapter, verification).
ADAPTER_META = "medtui_adapter.json"
PROVENANCE_FILE = "medtui.json"

# Subdirectories of a workspace and what lives in each.
WORKSPACE_LAYOUT = {
    "runs": "training runs: spec.json, events.jsonl, checkpoints, adapter",
    "merged": "merged 16-bit models",
    "transcripts": "console transcripts (Markdown and JSONL)",
    "reports": "evaluation and validation reports",
}


def home_dir() -> Path:
    """medtui's own data directory (the demo model cache lives here)."""
    env = os.environ.get(ENV_HOME)
    return Path(env).expanduser() if env else Path(user_data_dir(APP_NAME, appauthor=False))


def config_path() -> Path:
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env).expanduser()
    return Path(user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


def default_workspace() -> Path:
    return home_dir() / "workspace"


def resolve_workspace(explicit: str | os.PathLike[str] | None = None, configured: str | None = None) -> Path:
    """The workspace directory, by the documented order of precedence (not created here)."""
    for candidate in (explicit, os.environ.get(ENV_WORKSPACE), configured):
        if candidate:
            return Path(candidate).expanduser().resolve()
    return default_workspace()


def ensure_workspace(workspace: Path) -> Path:
    """Create the workspace and its subdirectories, owner-only: clinical data lives here."""
    workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
    for sub in WORKSPACE_LAYOUT:
        (workspace / sub).mkdir(exist_ok=True, mode=0o700)
    return workspace


def project_data_dir() -> Path:
    """The bundled demo data set (`data/` at the top of a source checkout)."""
    return Path(__file__).resolve().parent.parent / "data"
