"""Verdict rules and the "will it fit" estimate, as pure functions (GPU readings built by hand: the
hardware edge is the only thing faked)."""

from __future__ import annotations

import pytest

from medtui_engine.config import ConfigError, Settings, load_settings, render_default_config
from medtui_engine.envcheck import (
    NOT_IMPORTED_NO_GPU,
    installed_versions,
    rule_compute_capability,
    rule_disk,
    rule_driver_vs_torch,
    rule_gpu_memory,
    rule_gpu_present,
    rule_package,
    rule_ram,
    rule_torch,
)
from medtui_engine.gpu import GpuProcess, GpuSnapshot, NvmlInfo
from medtui_engine.vram import ModelShape, TrainSetting, estimate_training_vram, fit_verdict

QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
QWEN15_14B = dict(hidden_size=5120, intermediate_size=13696, num_hidden_layers=40, num_attention_heads=40,
                  num_key_value_heads=40, vocab_size=152064, tie_word_embeddings=False)
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)


def gpu(cc=(9, 0), used=1000.0, total=81559.0, procs=()):
    return GpuSnapshot(0, "NVIDIA H100 80GB HBM3", "GPU-x", total, used, total - used, 0.0, 30.0, 70.0, 700.0, cc, procs)


@pytest.mark.parametrize(("cc", "verdict"), [((6, 1), "problem"), ((7, 0), "info"), ((7, 5), "info"),
                                             ((8, 0), "ok"), ((9, 0), "ok"), (None, "warning")])
def test_compute_capability(cc, verdict):
    line = rule_compute_capability("GPU 0", cc)
    assert line.verdict == verdict
    if verdict == "problem":
        assert "Unsloth needs compute capability >= 7.0" in line.fix


def test_no_gpu_says_cpu_demo_only():
    line = rule_gpu_present(NvmlInfo(False, error="NVML Shared Library Not Found"))
    assert line.verdict == "warning" and "CPU demo only" in line.fix
    assert rule_gpu_present(NvmlInfo(True, "580.1", "13.0", None, (gpu(),))).verdict == "ok"


def test_driver_older_than_torch_cuda_is_a_problem():
    assert rule_driver_vs_torch("12.2", "13.0").verdict == "problem"
    assert "update the NVIDIA driver" in rule_driver_vs_torch("12.2", "13.0").fix
    assert rule_driver_vs_torch("13.0", "12.8").verdict == "ok"
    assert rule_driver_vs_torch(None, "12.8") is None


def test_missing_unsloth_on_a_gpu_box_says_how_to_install():
    line = rule_package({"name": "unsloth", "version": None, "imported": False}, gpu_present=True)
    assert line.verdict == "warning" and "[gpu]" in line.fix
    assert rule_package({"name": "unsloth", "version": None, "imported": False}, gpu_present=False).verdict == "info"
    assert rule_package({"name": "torch", "version": None, "imported": False}, gpu_present=False).verdict == "problem"
    broken = rule_package({"name": "transformers", "version": "5.17.0", "imported": False,
                           "error": "RuntimeError: operator torchvision::nms does not exist"}, gpu_present=False)
    assert broken.verdict == "problem" and "pip uninstall torchvision" in broken.fix


def test_unsloth_on_a_box_without_a_gpu_is_read_not_imported():
    # no GPU: the check reads Unsloth's installed version (importing it costs seconds for a backend not used)
    (probe,) = installed_versions(("unsloth",), NOT_IMPORTED_NO_GPU).values()
    assert probe["imported"] is False and probe["not_imported"] == NOT_IMPORTED_NO_GPU
    line = rule_package(probe, gpu_present=False)
    if probe["version"] is None:   # not installed: said as before
        assert line.value == "not installed" and line.verdict == "info"
    else:
        assert line.value == f"{probe['version']} (installed; not imported: no GPU here)" and line.verdict == "info"
    assert installed_versions(("no_such_package_here",), "why")["no_such_package_here"]["version"] is None


def test_cpu_torch_on_a_gpu_box_is_a_problem():
    lines = rule_torch({"version": "2.13.0+cpu", "cuda": None, "cuda_available": False}, gpu_present=True)
    assert lines[0].verdict == "problem" and "CUDA build" in lines[0].fix


def test_low_disk_and_ram():
    assert rule_disk(__import__("pathlib").Path("/w"), 2 * 2**30, 50).verdict == "problem"
    assert rule_disk(__import__("pathlib").Path("/w"), 20 * 2**30, 50).verdict == "warning"
    assert rule_disk(__import__("pathlib").Path("/w"), 200 * 2**30, 50).verdict == "ok"
    assert rule_ram(8 * 2**30).verdict == "warning"
    assert rule_ram(64 * 2**30).verdict == "ok"


def test_busy_gpu_warns_with_the_processes():
    line = rule_gpu_memory(gpu(used=60000.0, procs=(GpuProcess(4242, 58000.0, "python train.py"),)))
    assert line.verdict == "warning" and "4242" in line.fix


@pytest.mark.parametrize(("shape", "setting", "measured"), [
    (QWEN25_7B, TrainSetting(4, 2048, 2, 32, True, "unsloth"), 7.0),
    (QWEN15_14B, TrainSetting(4, 8192, 1, 32, True, "unsloth"), 12.1),
    (QWEN25_05B, TrainSetting(16, 1024, 4, 32, True, "unsloth"), 1.4),
    (QWEN25_7B, TrainSetting(4, 2048, 2, 32, True, "hf"), 11.2),
    (QWEN15_14B, TrainSetting(4, 8192, 1, 32, True, "hf"), 22.2),
])
def test_estimate_within_25_percent_of_measured_peaks(shape, setting, measured):
    est = estimate_training_vram(ModelShape.from_config(shape), setting)
    assert abs(est.total_gib - measured) / measured <= 0.25, (est.total_gib, measured)


def test_estimate_grows_with_batch_and_sequence_and_16bit():
    s = ModelShape.from_config(QWEN25_7B)
    base = estimate_training_vram(s, TrainSetting(4, 2048, 1)).total_gib
    assert estimate_training_vram(s, TrainSetting(4, 4096, 1)).total_gib > base
    assert estimate_training_vram(s, TrainSetting(4, 2048, 4)).total_gib > base
    assert estimate_training_vram(s, TrainSetting(16, 2048, 1)).total_gib > base + 8


def test_fit_verdicts():
    est = estimate_training_vram(ModelShape.from_config(QWEN25_7B), TrainSetting(4, 2048, 2))
    assert fit_verdict(est, 80000)[0] == "ok"
    assert fit_verdict(est, 5000)[0] == "problem"
    assert fit_verdict(est, None)[0] == "info"


def test_settings_file(tmp_path):
    p = tmp_path / "c.toml"
    assert load_settings(p) == Settings()
    p.write_text(render_default_config())
    assert load_settings(p).backend == "auto"
    p.write_text("[medtui]\nbackend = 'fast'\n")
    with pytest.raises(ConfigError, match="backend"):
        load_settings(p)
    p.write_text("[medtui]\nworkspce = '/x'\n")
    with pytest.raises(ConfigError, match="unknown setting 'workspce'"):
        load_settings(p)
    p.write_text("not = [toml")
    with pytest.raises(ConfigError, match=str(p)):
        load_settings(p)
