"""The dataset benchmark runs end to end on a small generated file and reports its numbers.
(The 20,000-record timing itself is printed by ``medtui bench dataset``, never asserted.)"""

from __future__ import annotations

import json
from pathlib import Path

from medtui.screens.dataset import PathSuggester
from medtui_engine.bench_dataset import main, run_dataset_bench


def test_bench_reports_numbers(tmp_path: Path, demo_model: Path, capsys) -> None:
    result = run_dataset_bench(tmp_path, records=300)
    out = capsys.readouterr().out
    assert "validate + measure" in out and "target <= 30 s" in out
    assert result["records"] == 300 and result["rows_usable"] == 300
    assert result["tokens_total"] > 300 * 500 and result["tokens_p50"] <= result["tokens_max"]
    saved = json.loads((tmp_path / "bench_dataset.json").read_text(encoding="utf-8"))
    assert saved["validate_and_measure_s"] == result["validate_and_measure_s"]
    assert main(["--records", "20"]) == 0


async def test_path_input_completes_names(tmp_path: Path) -> None:
    (tmp_path / "cases_train.jsonl").write_text("{}\n", encoding="utf-8")
    (tmp_path / "cases_dir").mkdir()
    s = PathSuggester()
    assert await s.get_suggestion(str(tmp_path / "cases_t")) == str(tmp_path / "cases_train.jsonl")
    assert await s.get_suggestion(str(tmp_path / "cases_d")) == str(tmp_path / "cases_dir") + "/"
    assert await s.get_suggestion(str(tmp_path / "nothing")) is None
