"""What every verb and screen starts from: the settings and the workspace."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, Settings, load_settings
from .errors import UserError
from .paths import config_path, ensure_workspace, resolve_workspace


@dataclass(frozen=True)
class Context:
    settings: Settings
    workspace: Path
    config_file: Path

    @property
    def runs_dir(self) -> Path:
        return self.workspace / "runs"

    @property
    def merged_dir(self) -> Path:
        return self.workspace / "merged"

    @property
    def transcripts_dir(self) -> Path:
        return self.workspace / "transcripts"

    @property
    def reports_dir(self) -> Path:
        return self.workspace / "reports"


def load_context(workspace: str | Path | None = None, config: str | Path | None = None, create: bool = True) -> Context:
    cfg_path = Path(config).expanduser() if config else config_path()
    try:
        settings = load_settings(cfg_path)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    ws = resolve_workspace(workspace, settings.workspace or None)
    if create:
        try:
            ensure_workspace(ws)
        except OSError as exc:
            raise UserError(f"cannot create the workspace {ws}: {exc.strerror}; choose another with --workspace") from None
    return Context(settings, ws, cfg_path)
