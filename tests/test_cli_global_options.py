"""The global options (--workspace, --config, --json, --debug) work before and after the verb, through the real
``medtui`` entry point in a subprocess; with no verb they still reach the terminal UI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GLOBAL = ("--workspace", "--config", "--json", "--debug")


def medtui(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEDTUI_WORKSPACE"}  # the options alone say where
    return subprocess.run([sys.executable, "-m", "medtui", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def test_help_lists_the_global_options_and_the_verbs() -> None:
    top = medtui("--help")
    assert top.returncode == 0, top.stderr
    assert all(flag in top.stdout for flag in GLOBAL), top.stdout
    assert "before or after the verb" in top.stdout
    assert all(verb in top.stdout for verb in ("check", "runs", "merge", "ask", "bench"))
    below = medtui("runs", "list", "--help")
    assert below.returncode == 0 and all(flag in below.stdout for flag in GLOBAL), below.stdout


@pytest.mark.parametrize("where", ["before", "after", "between"])
def test_workspace_before_or_after_the_verb(where: str, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    args = {"before": ("--workspace", str(ws), "runs", "list"),
            "after": ("runs", "list", "--workspace", str(ws)),
            "between": ("runs", "--workspace", str(ws), "list")}[where]
    r = medtui(*args)
    assert r.returncode == 0, r.stderr
    assert f"no runs yet in {ws / 'runs'}" in r.stdout
    assert (ws / "runs").is_dir()


def test_workspace_with_equals_sign_before_the_verb(tmp_path: Path) -> None:
    r = medtui(f"--workspace={tmp_path / 'ws'}", "runs", "list")
    assert r.returncode == 0, r.stderr
    assert f"no runs yet in {tmp_path / 'ws' / 'runs'}" in r.stdout


def test_given_on_both_sides_the_one_after_the_verb_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    r = medtui("--workspace", str(first), "runs", "list", "--workspace", str(second))
    assert r.returncode == 0, r.stderr
    assert f"no runs yet in {second / 'runs'}" in r.stdout and str(first) not in r.stdout


@pytest.mark.parametrize("args", [("--json", "runs", "list"), ("runs", "list", "--json"),
                                  ("--json", "--debug", "runs", "list"), ("--debug", "runs", "list", "--json")])
def test_json_before_or_after_the_verb(args: tuple[str, ...], tmp_path: Path) -> None:
    r = medtui("--workspace", str(tmp_path / "ws"), *args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_json_before_validate_gives_the_same_report_as_after(demo_model: Path) -> None:
    data = str(ROOT / "data" / "demo_train.jsonl")
    before, after = medtui("--json", "validate", data), medtui("validate", data, "--json")
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr
    assert json.loads(before.stdout)["summary"] == json.loads(after.stdout)["summary"]
    assert json.loads(before.stdout)["summary"].startswith("GO:")


def test_json_before_demo(demo_model: Path) -> None:
    r = medtui("--json", "demo")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == str(demo_model)


def test_config_before_the_verb_is_read(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[medtui]\ntemplate = 'fancy'\n")
    for args in (("--config", str(cfg), "runs", "list"), ("runs", "list", "--config", str(cfg))):
        r = medtui("--workspace", str(tmp_path / "ws"), *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert str(cfg) in r.stderr and "template" in r.stderr and "Traceback" not in r.stderr


def test_no_verb_opens_the_terminal_ui_with_that_workspace(tmp_path: Path) -> None:
    # An unknown screen is refused once the app is built on the workspace: the options reached the UI.
    ws = tmp_path / "ws"
    r = medtui("--workspace", str(ws), "--screen", "nosuch")
    assert r.returncode == 2, r.stderr
    assert "no screen called 'nosuch'" in r.stderr
    assert (ws / "runs").is_dir()


def test_no_verb_refuses_what_only_verbs_take_and_names_unknown_verbs() -> None:
    r = medtui("--json")
    assert r.returncode == 2 and "--json is for the verbs" in r.stderr
    r = medtui("--workspace", "x", "frobnicate")
    assert r.returncode == 2 and "'frobnicate' is not a verb" in r.stderr and "runs" in r.stderr
    # a screen named like a verb is the --screen option's value, not the verb
    r = medtui("--screen", "runs", "--json")
    assert r.returncode == 2 and "--json is for the verbs" in r.stderr
