"""`medtui check` and the CLI's contract: --json, exit codes, no tracebacks for user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import nvidia_gpus

ROOT = Path(__file__).resolve().parent.parent


def medtui(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)


def test_check_json_reports_the_gpus_and_exits_0(workspace):
    out = medtui("check", "--json", "--model", "demo", "--seq", "512")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    gpus = nvidia_gpus()
    assert report["gpu_found"] is (gpus > 0)
    assert report["verdict"] in ("ok", "info", "warning")   # nothing is a problem: exit 0
    names = {ln["name"]: ln for ln in report["lines"]}
    if gpus:
        assert f"{gpus} found" in names["GPUs"]["value"], names["GPUs"]
        assert report["packages"]["unsloth"].get("not_imported") is None   # a GPU box imports it, as it trains with it
    else:
        assert "CPU demo only" in names["GPUs"]["fix"]
        # no GPU: Unsloth's installed version is read, not imported (seconds saved), and the line says so
        assert report["packages"]["unsloth"]["imported"] is False
        assert names["unsloth"]["value"] == "not installed" or \
            names["unsloth"]["value"].endswith("(installed; not imported: no GPU here)"), names["unsloth"]
    assert report["packages"]["torch"]["imported"] is True
    assert report["workspace"]["path"] == str(workspace.resolve())
    assert report["fit"]["label"].endswith("(random weights, demo only)")
    assert report["settings"]["backend"] == "auto"
    assert "Traceback" not in out.stderr


def test_bad_settings_file_is_a_clear_message(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[medtui]\ntemplate = 'fancy'\n")
    out = medtui("check", "--config", str(cfg))
    assert out.returncode == 2
    assert str(cfg) in out.stderr and "template" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_model_dir_is_a_clear_message(tmp_path):
    out = medtui("check", "--model", str(tmp_path / "nope"))
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_help_lists_the_verbs():
    out = medtui("--help")
    assert out.returncode == 0
    for verb in ("check", "validate", "train"):
        assert verb in out.stdout
    out = medtui("check", "--help")
    assert out.returncode == 0 and "--json" in out.stdout
