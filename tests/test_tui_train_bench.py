"""The live-view benchmark runs end to end on a small history (numbers printed, not asserted)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_live_view import bench_render


def test_bench_render_runs_on_a_small_history(tmp_path: Path, capsys):
    r = bench_render(tmp_path, steps=2000)
    assert r["points"] == 2000
    assert r["events"] > 2000
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
