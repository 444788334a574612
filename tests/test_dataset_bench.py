"""The dataset benchmark runs end to end on a small generated file and reports its numbers.
(The 20,000-record timing itself is printed by ``medtui bench dataset``, never asserted.)
``medtui bench`` runs the benchmarks of the source tree, and says so where there is none."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.bench_dataset import main, run_dataset_bench
from medtui.screens.dataset import PathSuggester

ROOT = Path(__file__).resolve().parent.parent


def test_bench_reports_numbers(tmp_path: Path, demo_model: Path, capsys) -> None:
    result = run_dataset_bench(tmp_path, records=300)
    out = capsys.readouterr().out
    assert "validate + measure" in out and "target <= 30 s" in out
    assert result["records"] == 300 and result["rows_usable"] == 300
    assert result["tokens_total"] > 300 * 500 and result["tokens_p50"] <= result["tokens_max"]
    saved = json.loads((tmp_path / "bench_dataset.json").read_text(encoding="utf-8"))
    assert saved["validate_and_measure_s"] == result["validate_and_measure_s"]
    assert main(["--records", "20"]) == 0


def test_medtui_bench_runs_the_benchmark_of_the_source_tree(tmp_path: Path, demo_model: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "medtui", "bench", "dataset", str(tmp_path), "--records", "20"],
                       capture_output=True, text=True, timeout=300, cwd=str(tmp_path), stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "validate + measure" in p.stdout
    assert json.loads((tmp_path / "bench_dataset.json").read_text(encoding="utf-8"))["records"] == 20


def test_medtui_bench_without_the_source_tree_says_where_benchmarks_live(tmp_path: Path) -> None:
    # the engine alone, as an installed wheel has it: no benchmarks/ beside the package
    shutil.copytree(ROOT / "medtui_engine", tmp_path / "medtui_engine", ignore=shutil.ignore_patterns("__pycache__"))
    # the libraries stay where they are installed (a site-packages, or a PYTHONPATH entry); the source tree goes
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *kept])}
    cmd = [sys.executable, "-m", "medtui_engine.cli", "bench"]
    helped = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=env)
    assert helped.returncode == 0, helped.stderr
    assert "not part of an installed package" in helped.stdout
    ran = subprocess.run([*cmd, "dataset"], capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=env)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "not part of an installed package" in ran.stderr and "Traceback" not in ran.stderr


def test_benchmarks_import_no_ui_and_no_ml_library_at_module_scope() -> None:
    code = ("import sys, benchmarks.bench_dataset, benchmarks.bench_eval, benchmarks.bench_infer, benchmarks.bench_merge, "
            "benchmarks.bench_train\n"
            "assert not [m for m in ('textual', 'rich', 'torch', 'transformers') if m in sys.modules], sorted(sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr[-2000:]


async def test_path_input_completes_names(tmp_path: Path) -> None:
    (tmp_path / "cases_train.jsonl").write_text("{}\n", encoding="utf-8")
    (tmp_path / "cases_dir").mkdir()
    s = PathSuggester()
    assert await s.get_suggestion(str(tmp_path / "cases_t")) == str(tmp_path / "cases_train.jsonl")
    assert await s.get_suggestion(str(tmp_path / "cases_d")) == str(tmp_path / "cases_dir") + "/"
    assert await s.get_suggestion(str(tmp_path / "nothing")) is None
