"""GPU tier: inference on Qwen2.5-shape models with random weights (``pytest -m gpu``).

- 256 greedy tokens of each fast path (our CUDA-graph loop, the same with its step compiled ("fused"),
  transformers' static cache + torch.compile)
  on the Qwen2.5-7B shape against transformers' eager ``generate``: equal, or the first divergence is at
  a position whose top-2 logits lie within bf16 noise (reported);
- the fast decode path (our loop with each step replayed as a CUDA graph) against eager decoding, 64
  greedy steps on real CUDA;
- the evaluation's batch on a GPU (as many cases as fit, on the compiled static cache): the answers of one
  case at a time through ``auto`` (the fused loop), in float32;
- 4-bit loading through bitsandbytes, and an answer from the 4-bit model;
- Unsloth's fast inference on the 4-bit model, through the real ``medtui ask``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from medtui_engine.infer import LoadOptions, SamplingSettings, answer, load_model, resolve_source
from medtui_engine.infer.decoder import NOISE_FACTOR, ULP_FLOOR, StaticDecoder
from medtui_engine.infer.loader import LoadedModel
from medtui_engine.infer.stream import FIRST_COMPILE, _tokens_via_compiled, _tokens_via_loop, build_prompt

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parent.parent
CASE = "男性，62岁，进行性吞咽困难2月，体重下降8kg，胃镜示食管中段溃疡型肿物"
STEPS = 64
LONG = 256
QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                 rms_norm_eps=1e-6, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def bf16_model(qwen05_model: Path):
    loaded = load_model(resolve_source(str(qwen05_model)), LoadOptions(backend="hf"))
    yield loaded
    loaded.unload()


def _greedy_ids(loaded, input_ids, use_graph: bool, notes: list[str]) -> list[int]:
    """The token ids our decode loop yields (the loop ``stream_answer`` runs), EOS suppressed."""
    greedy = SamplingSettings(temperature=0, max_new_tokens=STEPS).checked()
    return list(_tokens_via_loop(loaded, input_ids, greedy, STEPS, threading.Event(), True,
                                 use_graph=use_graph, notes=notes))


def _teacher_forced(loaded, input_ids, ids: list[int]):
    """The model's own logits (one plain forward over prompt + ``ids``) at each of the generated positions."""
    import torch

    n = int(input_ids.shape[1])
    full = torch.cat([input_ids, torch.tensor([ids], device=input_ids.device)], dim=1)
    with torch.no_grad():
        logits = loaded.model(input_ids=full).logits[0, n - 1:n - 1 + len(ids)].float()
    logits[:, list(loaded.eos_ids)] = float("-inf")  # the loops suppressed EOS too
    return logits


def test_graph_decode_agrees_with_eager_decoding_over_64_greedy_steps(bf16_model) -> None:
    """Both loops are checked against the model's own forward pass over what they produced: at every one
    of the 64 steps the token chosen must be the greedy choice, up to bf16 rounding (a token whose logit is
    within the tolerance of the best one: on random weights near-ties are common, and a CUDA graph over a
    static cache may round differently from the eager step over a dynamic cache). The two loops must give
    the same tokens up to the first such near-tie; a broken graph (a stale cache position, a step replayed
    on the wrong input) picks tokens far from the greedy choice and fails at once."""
    import torch

    loaded = bf16_model
    assert loaded.device == "cuda" and loaded.backend == "hf" and loaded.dtype == "bfloat16"
    prompt = build_prompt(loaded, CASE)
    input_ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to("cuda")

    graph_notes: list[str] = []
    graph_ids = _greedy_ids(loaded, input_ids, True, graph_notes)
    dec = loaded.decoder
    assert isinstance(dec, StaticDecoder) and dec.use_graph
    assert dec.graph_failed is None and not graph_notes, (dec.graph_failed, graph_notes)
    assert dec.graph is not None and dec.captures == 1  # the steps were replays of one captured graph
    eager_notes: list[str] = []
    eager_ids = _greedy_ids(loaded, input_ids, False, eager_notes)
    assert not loaded.decoder.use_graph and not eager_notes
    assert len(graph_ids) == len(eager_ids) == STEPS

    checked = {}
    for name, ids in (("graph", graph_ids), ("eager", eager_ids)):
        logits = _teacher_forced(loaded, input_ids, ids)
        best = logits.max(dim=-1).values
        chosen = logits.gather(1, torch.tensor(ids, device="cuda")[:, None])[:, 0]
        tol = 0.05 * max(1.0, float(best.abs().max()))
        bad = [(t, round(b, 4)) for t, b in enumerate((best - chosen).tolist()) if b > tol]
        assert not bad, f"{name}: steps whose token is not the greedy choice (step, logit behind, tolerance {tol:.3f}): {bad}"
        top2 = logits.topk(2, dim=-1).values
        checked[name] = (tol, (top2[:, 0] - top2[:, 1]).tolist())
    first_diff = next((t for t in range(STEPS) if graph_ids[t] != eager_ids[t]), None)
    print(f"\ngraph and eager decoding: identical for {first_diff if first_diff is not None else STEPS} of {STEPS} steps")
    if first_diff is not None:  # up to there both saw the same tokens, so the same logits up to rounding
        tol, margins = checked["graph"]
        assert margins[first_diff] <= 2 * tol, (
            f"the loops part at step {first_diff}, where the greedy choice leads by {margins[first_diff]:.3f} "
            f"(more than rounding, tolerance {tol:.3f})")

    # the public path reports the graph it used
    r = answer(loaded, CASE, SamplingSettings(temperature=0, max_new_tokens=STEPS), ignore_eos=True, decode="graph")
    s = r.stats
    assert s.decode_path == "graph" and not s.notes, (s.decode_path, s.notes)
    assert s.output_tokens == STEPS and s.finish_reason == "length" and s.decode_tokens_per_s > 0
    print(f"graph decode on the 0.5B shape: {s.summary()}")


def test_the_evaluations_gpu_batch_gives_the_answers_of_one_case_at_a_time(qwen05_model: Path) -> None:
    """What ``medtui eval`` does on a GPU when not told a batch: ``default_batch`` fits the cases, which then
    decode together on the compiled static cache, padded on the left, each stopping at its own end. In float32
    (bf16 near-ties on random weights would break greedy ties either way), the answers equal those of one
    case at a time through ``auto``, which on a GPU is the fused loop."""
    from medtui_engine.evaluate.cases import EvalCase
    from medtui_engine.evaluate.runner import Item, answer_items, default_batch
    from medtui_engine.infer.stream import AUTO_GPU_DECODE

    loaded = load_model(resolve_source(str(qwen05_model)), LoadOptions(backend="hf", dtype="fp32"))
    try:
        assert loaded.device == "cuda" and loaded.dtype == "float32"
        qs = [CASE, CASE[:9], "女性，45岁，右上腹痛3天，TBil 68μmol/L", CASE + "，既往高血压10年"]
        greedy = SamplingSettings(temperature=0, max_new_tokens=24)
        one = [answer(loaded, q, greedy) for q in qs]
        batch = default_batch(loaded, qs, greedy.max_new_tokens)
        items = [Item(EvalCase(id=f"c{i}", question=q, reference_diagnosis=None, reference_answer=None), 0, i)
                 for i, q in enumerate(qs)]
        rows = [row for _, row in answer_items(loaded, loaded.source, items, greedy, batch=batch)]
        same = [r["answer"] == o.output for r, o in zip(rows, one, strict=True)]
        print(f"\nevaluation batch on the GPU: {batch} cases; one at a time: "
              f"{[(o.stats.decode_path, o.stats.notes) for o in one]}; batched: "
              f"{[r['stats']['decode_path'] for r in rows]}; answers equal: {same}")
        for r, o in zip(rows, one, strict=True):
            if r["answer"] != o.output:
                at = next((i for i, (a, b) in enumerate(zip(r["answer"], o.output, strict=False)) if a != b),
                          min(len(r["answer"]), len(o.output)))
                print(f"  differ at character {at}: batched {r['answer'][at:at + 40]!r} one {o.output[at:at + 40]!r}")
        assert AUTO_GPU_DECODE == "fused"  # (should compiling be refused in float32, the graph runs, saying why)
        assert all(o.stats.decode_path == "fused" or (o.stats.decode_path == "graph" and o.stats.notes) for o in one)
        assert batch == len(qs)
        assert [r["stats"]["decode_path"] for r in rows] == [f"batched ({len(qs)}, compiled)"] * len(qs)
        assert [r["answer"] for r in rows] == [o.output for o in one]
    finally:
        loaded.unload()


def test_4bit_loading_through_bitsandbytes_and_an_answer(qwen05_model: Path, bf16_model) -> None:
    import bitsandbytes as bnb
    import torch

    bf16_mib = sum(p.numel() * p.element_size() for p in bf16_model.model.parameters()) / 2**20
    before = torch.cuda.memory_allocated()
    loaded = load_model(resolve_source(str(qwen05_model)), LoadOptions(backend="hf", load_in_4bit=True))
    try:
        assert loaded.quantized and loaded.device == "cuda" and loaded.backend == "hf"
        four_bit = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert len(four_bit) == 24 * 7  # every projection of every layer
        assert all(m.weight.quant_type == "nf4" for m in four_bit)
        mib = (torch.cuda.memory_allocated() - before) / 2**20
        print(f"\n4-bit: {mib:.0f} MiB on the GPU against {bf16_mib:.0f} MiB of bf16 weights")
        assert mib < 0.65 * bf16_mib  # the embeddings stay 16-bit; the projections shrink 4x
        r = answer(loaded, CASE, SamplingSettings(temperature=0, max_new_tokens=16), ignore_eos=True)
        s = r.stats
        assert s.output_tokens == 16 and s.finish_reason == "length" and r.output
        # a GPU chooses the fused path; should compiling or the capture refuse itself, the answer says why
        assert s.decode_path in ("fused", "graph", "graph-failed"), s.decode_path
        assert (s.decode_path == "fused") == (not any(n.startswith(("CUDA graph off", "torch.compile off"))
                                                      for n in s.notes)), s.notes
        print(f"4-bit answer: {s.decode_path}, {s.summary()} {list(s.notes)}")
    finally:
        loaded.unload()


def test_unsloth_fast_inference_on_4bit_weights_through_ask(qwen05_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MEDTUI_WORKSPACE": str(tmp_path / "ws")}
    p = subprocess.run(
        [sys.executable, "-m", "medtui", "ask", "--model", str(qwen05_model), "--backend", "unsloth", "--4bit",
         "--temperature", "0", "--max-new-tokens", "12", "--json", CASE],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    start = p.stdout.index('{\n  "disclaimer"')  # the JSON object, whatever a library printed before it
    out, _ = json.JSONDecoder().raw_decode(p.stdout[start:])
    a = out["answers"][0]
    assert a["backend"] == "unsloth" and a["quantized"] and a["device"] == "cuda", a
    s = a["stats"]
    assert s["decode_path"] == "generate" and s["prompt_tokens"] > 20
    assert 1 <= s["output_tokens"] <= 12 and s["finish_reason"] in ("length", "eos"), s
    print(f"\nUnsloth 4-bit through ask: {s['output_tokens']} tokens, {s['decode_tokens_per_s']} tok/s")


# ---------------------------------------------------------------- the 7B shape: 256 tokens against generate


@pytest.fixture(scope="module")
def qwen7b(demo_model: Path):
    """The Qwen2.5-7B shape with random weights, built in bf16 on the GPU (not saved: 15 GB), with the real
    Qwen tokenizer; wrapped as the loader would wrap it."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos, pad = 151645, 151643
    cfg = Qwen2Config(**QWEN25_7B, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    loaded = LoadedModel(source=resolve_source("demo"), model=model, tokenizer=AutoTokenizer.from_pretrained(str(demo_model)),
                         backend="hf", device="cuda", dtype="bfloat16", quantized=False, adapter_merged=False, load_s=0.0,
                         gpu_mem_mib=None, eos_ids=(eos, pad))
    prompt = build_prompt(loaded, "，".join([CASE] * 12))
    input_ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to("cuda")
    with torch.no_grad():  # the reference: transformers' own eager generate, EOS held off as the fast paths hold it
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=LONG,
                             min_new_tokens=LONG, do_sample=False, eos_token_id=list(loaded.eos_ids), pad_token_id=pad)
    reference = out[0, input_ids.shape[1]:].tolist()
    yield loaded, input_ids, reference
    loaded.unload()
    torch.cuda.empty_cache()


def _first_divergence_within_noise(loaded, input_ids, fast: list[int], reference: list[int]) -> str:
    """Where the two token lists part, the two tokens' logits must lie within bf16 noise: the model's own
    logits at that position (a full forward over the common prefix), against the same position computed
    in another kernel configuration (one token longer), sets the noise; the tolerance is the capture
    check's (NOISE_FACTOR x noise, at least ULP_FLOOR bf16 ulps of the largest logit)."""
    import torch

    t = next((i for i, (a, b) in enumerate(zip(fast, reference, strict=True)) if a != b), None)
    if t is None:
        return f"identical for all {len(fast)} tokens"
    prefix = torch.tensor([reference[:t]], device=input_ids.device, dtype=input_ids.dtype)
    seq = torch.cat([input_ids, prefix], dim=1)
    longer = torch.cat([seq, torch.tensor([[reference[t]]], device=input_ids.device, dtype=input_ids.dtype)], dim=1)
    with torch.no_grad():
        here = loaded.model(input_ids=seq, use_cache=False, logits_to_keep=1).logits[0, -1].float()
        other = loaded.model(input_ids=longer, use_cache=False, logits_to_keep=2).logits[0, 0].float()
    noise = float((here - other).abs().max())
    scale = max(1.0, float(here.abs().max()))
    tol = max(NOISE_FACTOR * noise, ULP_FLOOR * 2.0**-7 * scale)
    margin = abs(float(here[fast[t]] - here[reference[t]]))
    report = (f"first divergence at token {t}: the two tokens' logits lie {margin:.3g} apart "
              f"(bf16 noise {noise:.3g}, tolerance {tol:.3g})")
    assert margin <= tol, report
    return report


@pytest.mark.parametrize("path", ["graph", "fused", "compiled"])
def test_256_greedy_tokens_of_the_fast_path_match_eager_generate_on_the_7b_shape(qwen7b, path: str) -> None:
    loaded, input_ids, reference = qwen7b
    greedy = SamplingSettings(temperature=0, max_new_tokens=LONG).checked()
    notes: list[str] = []
    if path in ("graph", "fused"):
        fused = path == "fused"
        fast = list(_tokens_via_loop(loaded, input_ids, greedy, LONG, threading.Event(), True, use_graph=True,
                                     notes=notes, compile_step=fused))
        dec = loaded.decoder
        check = dec.check
        print(f"\n7B capture check ({path}): {check.summary() if check else dec.graph_failed}")
        assert dec.compile_step == fused and dec.compile_failed is None, dec.compile_failed  # fused: it compiled, and held
        assert dec.graph is not None and notes == ([FIRST_COMPILE] if fused else []), (dec.graph_failed, notes)
    else:
        fast = list(_tokens_via_compiled(loaded, input_ids, greedy, LONG, threading.Event(), True, notes))
        assert not any(n.startswith("torch.compile off") for n in notes), notes  # it compiled, and held
    assert len(fast) == len(reference) == LONG
    print(f"{path} vs transformers' eager generate, 7B shape, {LONG} greedy tokens: "
          + _first_divergence_within_noise(loaded, input_ids, fast, reference))
