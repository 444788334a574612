"""The two packages stay honest: the TUI starts without heavy imports; the engine never imports textual."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "unsloth", "trl", "peft", "datasets", "bitsandbytes", "accelerate")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, cwd=ROOT, check=True, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_medtui_app_pulls_no_heavy_library():
    mods = _modules_after("import medtui.app, medtui.__main__")
    assert not [m for m in HEAVY if m in mods]


def test_every_registered_screen_imports_without_heavy_libraries():
    code = ("import importlib\nfrom medtui.screens import SCREENS\n"
            "for e in SCREENS: getattr(importlib.import_module(e.module), e.class_name)")
    mods = _modules_after(code)
    assert not [m for m in HEAVY if m in mods]


def test_engine_modules_never_import_textual():
    engine = ROOT / "medtui_engine"
    offenders = []
    for path in engine.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("textual", "medtui"):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_engine_cli_import_is_light():
    mods = _modules_after("import medtui_engine.cli; medtui_engine.cli.build_parser()")
    assert "textual" not in mods
    assert not [m for m in HEAVY if m in mods]
