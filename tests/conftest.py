"""Shared fixtures: an isolated medtui home (demo model cache) and workspace per test session.

Everything here is real: the demo model is built once per session with the real Qwen tokenizer,
and tests spawn real processes that inherit these variables.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "huatuo_o1_demo_en.json"


@pytest.fixture(scope="session", autouse=True)
def medtui_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MEDTUI_HOME for the whole session (set before anything reads it; inherited by subprocesses).

    MEDTUI_TEST_HOME reuses a directory across sessions (a developer's speed-up; CI builds fresh).
    """
    home = Path(os.environ.get("MEDTUI_TEST_HOME") or tmp_path_factory.mktemp("medtui-home"))
    os.environ["MEDTUI_HOME"] = str(home)
    os.environ["MEDTUI_CONFIG"] = str(home / "no-config.toml")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["UNSLOTH_COMPILE_LOCATION"] = str(home / "unsloth_compiled_cache")
    return home


@pytest.fixture(scope="session")
def demo_model(medtui_home: Path) -> Path:
    """The embedded demo model directory, built once per session."""
    from medtui_engine.demo import ensure_demo_model

    return ensure_demo_model()


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace for one test; MEDTUI_WORKSPACE points at it (subprocesses inherit it)."""
    ws = tmp_path / "workspace"
    monkeypatch.setenv("MEDTUI_WORKSPACE", str(ws))
    return ws


@pytest.fixture(scope="session")
def demo_data_dir() -> Path:
    return ROOT / "data"


@pytest.fixture(scope="session")
def shared_records() -> Path:
    """The 198 real records beside the project (never copied into it); MEDTUI_TEST_RECORDS names another copy.

    Absent, the tests that read them fail (they never skip): a suite that did not run them did not pass."""
    path = Path(os.environ.get("MEDTUI_TEST_RECORDS") or SHARED_DATA)
    if not path.is_file():
        pytest.fail(f"the real records are missing: {path} does not exist; put huatuo_o1_demo_en.json there "
                    "or set MEDTUI_TEST_RECORDS to its path", pytrace=False)
    return path
