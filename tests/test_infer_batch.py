"""Batched answers (the evaluation's path) equal one-at-a-time answers; every decode path applies the
same sampling, the repetition penalty of the model's generation config included. The demo model's shape
and tokenizer with larger random weights (the demo's own greedy answer is the same token for any case,
which would prove nothing), on the CPU, in float32: greedy answers must agree token for token."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from medtui_engine.errors import UserError
from medtui_engine.infer import SamplingSettings, answer, load_model, resolve_source
from medtui_engine.infer.batch import answer_batch

ROOT = Path(__file__).resolve().parent.parent
# prompts of different lengths, so the batch pads on the left
CASES = [json.loads(line)["Question"] for line in (ROOT / "data" / "demo_eval.jsonl").read_text("utf-8").splitlines()[:5]]
CASES[1] = CASES[1][:12]


@pytest.fixture(scope="module")
def varied_model(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("varied") / "model"
    shutil.copytree(demo_model, out)
    (out / "medtui_demo.json").unlink()
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def loaded_model(varied_model: Path):
    from helpers import load_on_cpu

    return load_on_cpu(str(varied_model))  # float32 on the CPU on any machine: answers compared token for token


def test_batched_greedy_answers_equal_one_at_a_time(loaded_model) -> None:
    greedy = SamplingSettings(temperature=0, max_new_tokens=24)
    one = [answer(loaded_model, q, greedy, decode="eager") for q in CASES]
    batched = answer_batch(loaded_model, CASES, greedy, batch_size=3)
    assert batched.batches == 2 and len(batched.results) == len(CASES)
    for single, many in zip(one, batched.results, strict=True):
        assert many.question == single.question and many.prompt == single.prompt
        assert many.output == single.output
        assert many.stats.output_tokens == single.stats.output_tokens
        assert many.stats.finish_reason == single.stats.finish_reason
        assert many.stats.prompt_tokens == single.stats.prompt_tokens
        assert many.stats.decode_path.startswith("batched")
    assert len({r.output for r in one}) == len(CASES)  # five different answers, each matched
    assert batched.cases_per_minute and batched.cases_per_minute > 0


def test_each_case_stops_at_its_own_end(loaded_model) -> None:
    greedy = SamplingSettings(temperature=0, max_new_tokens=16)
    free = answer_batch(loaded_model, CASES, greedy).results
    # an end id that the first case writes early and some other case never writes: it stops the one alone
    tokenizer = loaded_model.tokenizer
    ids = [tokenizer(r.output, add_special_tokens=False)["input_ids"] for r in free]
    end = next(t for t in ids[0][2:8] if any(t not in other for other in ids[1:]))
    ended = replace(loaded_model, eos_ids=(*loaded_model.eos_ids, end))
    one = [answer(ended, q, greedy, decode="eager") for q in CASES]
    batched = answer_batch(ended, CASES, greedy, batch_size=len(CASES)).results
    assert one[0].stats.finish_reason == "eos" and one[0].stats.output_tokens < 8
    assert any(r.stats.finish_reason == "length" for r in one)
    assert [(r.output, r.stats.output_tokens, r.stats.finish_reason) for r in batched] == \
        [(r.output, r.stats.output_tokens, r.stats.finish_reason) for r in one]


def test_cancel_stops_the_batch_and_says_so(loaded_model) -> None:
    cancel = threading.Event()
    seen: list[list[int]] = []

    def after(indices, results):
        seen.append(indices)
        cancel.set()  # stop after the first batch

    got = answer_batch(loaded_model, CASES, SamplingSettings(temperature=0, max_new_tokens=8), batch_size=2,
                       cancel=cancel, on_batch=after)
    assert len(seen) == 1 and got.batches == 1 and len(got.results) == 2
    assert sorted(r.question for r in got.results) == sorted(CASES[i] for i in seen[0])


def test_bad_batch_size_is_a_message(loaded_model) -> None:
    with pytest.raises(UserError, match="batch size"):
        answer_batch(loaded_model, CASES[:1], batch_size=0)


def test_every_path_applies_the_models_repetition_penalty(demo_model: Path, tmp_path: Path) -> None:
    # the demo repeats one token: the penalty changes its answer, the same way on every path
    model_dir = tmp_path / "penalised"
    shutil.copytree(demo_model, model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    gen["repetition_penalty"] = 1.6
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    loaded = load_model(resolve_source(str(model_dir)))
    greedy = SamplingSettings(temperature=0, max_new_tokens=24)
    loop = answer(loaded, CASES[0], greedy, decode="eager")
    gen_path = answer(loaded, CASES[0], greedy, decode="generate")
    batched = answer_batch(loaded, CASES[:1], greedy).results[0]
    assert loop.output == gen_path.output == batched.output
    assert "repetition penalty 1.6 (the model's generation config)" in loop.stats.notes
    # the penalty really acts: without it the loop answers differently
    plain = answer(loaded, CASES[0], SamplingSettings(temperature=0, max_new_tokens=24, repetition_penalty=1.0),
                   decode="eager")
    assert plain.output != loop.output and not any("repetition" in n for n in plain.stats.notes)
    off_generate = answer(loaded, CASES[0], SamplingSettings(temperature=0, max_new_tokens=24, repetition_penalty=1.0),
                          decode="generate")
    assert off_generate.output == plain.output


def test_repetition_penalty_setting_is_checked() -> None:
    assert SamplingSettings(repetition_penalty=3).problems() == [
        "repetition_penalty must be between 0.5 and 2 (1 = off), or empty for the model's own"]
    assert SamplingSettings(repetition_penalty=1.05).problems() == []


def test_batched_on_the_static_cache_path_equals_one_at_a_time(loaded_model) -> None:
    """``compiled``: transformers' static cache (compiled on a GPU; here the same cache uncompiled), padded
    on the left, in the compiled path's own thread."""
    from medtui_engine.infer.decoder import CompiledDecoder

    greedy = SamplingSettings(temperature=0, max_new_tokens=12)
    one = [answer(loaded_model, q, greedy, decode="eager") for q in CASES[:3]]
    batched = answer_batch(loaded_model, CASES[:3], greedy, batch_size=3, compiled=True)
    assert [r.output for r in batched.results] == [r.output for r in one]
    assert all(r.stats.decode_path == "batched (3, compiled)" for r in batched.results)
    assert isinstance(loaded_model.decoder, CompiledDecoder) and loaded_model.decoder.thread.is_alive()


def test_the_gpu_batch_is_what_the_free_memory_holds(loaded_model) -> None:
    """``fit_batch``: each case's KV cache as long as the compiled path makes it (the longest prompt plus the
    new tokens, rounded up to COMPILED_CACHE_ROUND), within EVAL_MEMORY_SHARE of the free memory; capped, and
    never below one."""
    from medtui_engine.infer.batch import EVAL_MAX_BATCH, EVAL_MEMORY_SHARE, fit_batch, kv_bytes_per_token
    from medtui_engine.infer.decoder import COMPILED_CACHE_ROUND
    from medtui_engine.infer.stream import build_prompt

    cfg = loaded_model.model.config
    assert kv_bytes_per_token(cfg) == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (
        cfg.hidden_size // cfg.num_attention_heads) * 2
    tok = loaded_model.tokenizer
    longest = max(len(tok(build_prompt(loaded_model, q), add_special_tokens=False)["input_ids"]) for q in CASES)
    per_case = COMPILED_CACHE_ROUND * kv_bytes_per_token(cfg) + 8 * cfg.vocab_size
    assert longest + 64 + 1 <= COMPILED_CACHE_ROUND  # one cache length for these cases
    for cases in (3, 5):
        free = int(cases * per_case / EVAL_MEMORY_SHARE)  # room for exactly `cases` caches
        assert fit_batch(loaded_model, CASES * 20, 64, free_bytes=free) == cases
        assert fit_batch(loaded_model, CASES * 20, 64, free_bytes=free - 1) == cases - 1
    assert fit_batch(loaded_model, CASES * 20, 64, free_bytes=10**15) == EVAL_MAX_BATCH
    assert fit_batch(loaded_model, CASES[:3], 64, free_bytes=10**15) == 3
    assert fit_batch(loaded_model, CASES, 64, free_bytes=0) == 1
    # a longer answer needs a longer cache: fewer cases fit in the same memory
    free = int(4 * per_case / EVAL_MEMORY_SHARE)
    longer = 2 * COMPILED_CACHE_ROUND * kv_bytes_per_token(cfg) + 8 * cfg.vocab_size
    assert fit_batch(loaded_model, CASES * 20, COMPILED_CACHE_ROUND, free_bytes=free) == int(
        free * EVAL_MEMORY_SHARE // longer) < 4


def test_the_evaluation_splits_its_cases_into_even_batches(loaded_model) -> None:
    """Five cases at a batch of at most four: two batches of three and two (not four and one: each new batch
    size is compiled again on a GPU), in the order given, the same greedy answers as one at a time."""
    from medtui_engine.evaluate.cases import EvalCase
    from medtui_engine.evaluate.runner import Item, answer_items

    items = [Item(EvalCase(id=f"c{i}", question=q, reference_diagnosis=None, reference_answer=None), 0, i)
             for i, q in enumerate(CASES)]
    greedy = SamplingSettings(temperature=0, max_new_tokens=8)
    one = {it.case.id: row["answer"] for it, row in answer_items(loaded_model, loaded_model.source, items, greedy)}
    got = list(answer_items(loaded_model, loaded_model.source, items, greedy, batch=4))
    assert [it.case.id for it, _ in got] == [it.case.id for it in items]
    assert [row["stats"]["decode_path"] for _, row in got] == ["batched (3)"] * 3 + ["batched (2)"] * 2
    assert {it.case.id: row["answer"] for it, row in got} == one
