"""The inference engine on the real demo model: resolving models (merged, run, adapter, base),
loading with an adapter, streaming, timing, cancellation, cut-off and EOS, the template on record."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from helpers import make_adapter

from medtui_engine.errors import UserError
from medtui_engine.infer import (
    LoadOptions,
    SamplingSettings,
    StreamChunk,
    StreamDone,
    answer,
    load_model,
    resolve_source,
    stream_answer,
)
from medtui_engine.infer.stream import (
    AUTO_GPU_DECODE,
    COMPILE_OFF,
    GRAPH_OFF,
    IncrementalDetokenizer,
    pick_decode,
)

CASE = "男性，62岁，进行性吞咽困难2月，体重下降8kg，胃镜示食管中段溃疡型肿物"


@pytest.fixture(scope="module")
def adapter_run(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "20261124-120000-demo"
    run.mkdir()
    make_adapter(demo_model, run / "adapter", r=8, alpha=16, seed=0, scale=0.5)
    (run / "spec.json").write_text(json.dumps({"model": "demo", "template": "chat", "lora_r": 8}))
    return run


@pytest.fixture(scope="module")
def demo_loaded(demo_model: Path):
    return load_model(resolve_source("demo"))


def test_resolve_demo_merged_and_errors(demo_model: Path, tmp_path: Path) -> None:
    src = resolve_source("demo")
    assert src.kind == "demo" and src.template == "seed" and src.template_from == "default"
    assert "random weights, demo only" in src.label and src.is_demo

    merged = tmp_path / "merged-model"
    merged.mkdir()
    for f in demo_model.iterdir():
        if f.name != "medtui_demo.json":
            (merged / f.name).write_bytes(f.read_bytes())
    (merged / "medtui.json").write_text(json.dumps({
        "template": "chat", "run_id": "r1", "base": {"path": str(demo_model), "random_weights_demo": True}}))
    m = resolve_source(str(merged))
    assert (m.kind, m.template, m.template_from, m.run_id) == ("merged", "chat", "medtui.json", "r1")
    assert m.is_demo and "random weights, demo only" in m.label
    b = m.base()
    assert b.model_dir == demo_model and b.template == "chat" and b.adapter_dir is None

    (merged / "medtui.json").write_text(json.dumps({"template": "alpaca"}))
    with pytest.raises(UserError, match="alpaca"):
        resolve_source(str(merged))
    with pytest.raises(UserError, match="no model called"):
        resolve_source(str(tmp_path / "nowhere"))


def test_resolve_run_picks_final_adapter_else_newest_checkpoint(adapter_run: Path, demo_model: Path, tmp_path: Path) -> None:
    src = resolve_source(adapter_run.name, runs_dir=adapter_run.parent)
    assert src.kind == "run" and src.adapter_dir == adapter_run / "adapter"
    assert src.template == "chat" and src.template_from == "spec.json" and src.model_dir == demo_model

    run = tmp_path / "run2"
    for step in (2, 10):
        ck = run / "checkpoints" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "adapter_config.json").write_text((adapter_run / "adapter" / "adapter_config.json").read_text())
    (run / "spec.json").write_text(json.dumps({"model": "demo"}))
    src2 = resolve_source(str(run))
    assert src2.adapter_dir.name == "checkpoint-10" and src2.template == "seed"
    # a checkpoint directory named directly still gets the run's spec
    src3 = resolve_source(str(run / "checkpoints" / "checkpoint-2"))
    assert src3.adapter_dir.name == "checkpoint-2" and src3.model_dir == demo_model

    empty = tmp_path / "run3"
    empty.mkdir()
    (empty / "spec.json").write_text(json.dumps({"model": "demo"}))
    with pytest.raises(UserError, match="no adapter yet"):
        resolve_source(str(empty))


def test_stream_chunks_timing_and_cut_off(demo_loaded) -> None:
    events = list(stream_answer(demo_loaded, CASE, SamplingSettings(max_new_tokens=24, seed=3), ignore_eos=True))
    chunks = [e for e in events if isinstance(e, StreamChunk)]
    done = events[-1]
    assert isinstance(done, StreamDone) and not any(isinstance(e, StreamDone) for e in events[:-1])
    r = done.result
    assert "".join(c.text for c in chunks) == r.output
    assert [c.output_tokens for c in chunks][:24] == list(range(1, 25))
    s = r.stats
    assert s.output_tokens == 24 and s.finish_reason == "length" and s.cut_off
    assert s.ttft_s is not None and 0 < s.ttft_s <= s.total_s and s.decode_tokens_per_s > 0
    assert s.prompt_tokens > 20
    # the path this machine chose, as reported: eager on the CPU; on a GPU the auto path (the compiled step
    # captured as a CUDA graph), or, each with its reason in the notes, the uncompiled step's graph when
    # compiling failed and eager on the static cache ("graph-failed") when the captured step did not match eager
    expected = pick_decode(demo_loaded, "auto")
    assert expected == (AUTO_GPU_DECODE if demo_loaded.device == "cuda" else "eager")
    refused = [n for n in s.notes if n.startswith((GRAPH_OFF, COMPILE_OFF))]
    if expected == "fused" and s.decode_path in ("graph", "graph-failed"):
        assert (s.decode_path == "graph-failed") == any(n.startswith(GRAPH_OFF) for n in refused), s.notes
        assert s.decode_path == "graph-failed" or any(n.startswith(COMPILE_OFF) for n in refused), s.notes
    else:
        assert s.decode_path == expected and not refused, (s.decode_path, s.notes)
    assert r.prompt.endswith("<think>") and CASE in r.prompt  # the seed template, as trained
    assert "CUT OFF" in s.summary()


def test_seeded_sampling_repeats_and_greedy_paths_agree(demo_loaded) -> None:
    s = SamplingSettings(max_new_tokens=16, seed=7)
    assert answer(demo_loaded, CASE, s).output == answer(demo_loaded, CASE, s).output
    g = SamplingSettings(temperature=0, max_new_tokens=16)
    loop = answer(demo_loaded, CASE, g, decode="eager", ignore_eos=True)
    gen = answer(demo_loaded, CASE, g, decode="generate", ignore_eos=True)
    assert loop.output == gen.output and gen.stats.decode_path == "generate"


def test_cancel_mid_generation(demo_loaded) -> None:
    cancel = threading.Event()
    n = 0
    for ev in stream_answer(demo_loaded, CASE, SamplingSettings(max_new_tokens=500), cancel, ignore_eos=True):
        if isinstance(ev, StreamChunk):
            n += 1
            if n == 5:
                cancel.set()
        else:
            r = ev.result
    assert r.stats.finish_reason == "cancelled" and r.stats.output_tokens == 5 and not r.stats.cut_off


def test_stops_at_any_eos_id(demo_loaded) -> None:
    """The model stops when it produces an EOS id (random weights never do, so name its first token one)."""
    g = SamplingSettings(temperature=0, max_new_tokens=8)
    first = answer(demo_loaded, CASE, g, decode="eager", ignore_eos=True)
    tid = demo_loaded.tokenizer(first.output, add_special_tokens=False)["input_ids"][0]
    saved = demo_loaded.eos_ids
    try:
        demo_loaded.eos_ids = (*saved, tid)
        for decode in ("eager", "generate"):
            r = answer(demo_loaded, CASE, g, decode=decode)
            assert r.stats.finish_reason == "eos" and r.stats.output_tokens == 0 and r.output == ""
    finally:
        demo_loaded.eos_ids = saved


def test_run_adapter_loads_merged_with_its_template(adapter_run: Path, demo_loaded) -> None:
    tuned = load_model(resolve_source(str(adapter_run)), LoadOptions(backend="hf"))
    assert tuned.adapter_merged and tuned.backend == "hf" and tuned.device == demo_loaded.device
    g = SamplingSettings(temperature=0, max_new_tokens=12)
    rt = answer(tuned, CASE, g, ignore_eos=True)
    assert "<|im_start|>" in rt.prompt and rt.template == "chat"  # the run's chat template
    rb = answer(demo_loaded, CASE, g, prompt=rt.prompt, ignore_eos=True)
    assert rt.output != rb.output  # the adapter changes what the model says


def test_detokenizer_streams_chinese_exactly(demo_loaded) -> None:
    tok = demo_loaded.tokenizer
    text = "疑似诊断：食管癌（中段）。诊断依据：1. 进行性吞咽困难；2. 体重下降8kg 🙂"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    d = IncrementalDetokenizer(tok)
    pieces = [d.push(i) for i in ids]
    assert "".join(pieces) + d.flush() == text
    assert all("\ufffd" not in p for p in pieces)


def test_sampling_settings_are_checked() -> None:
    d = SamplingSettings()
    assert (d.temperature, d.top_p, d.max_new_tokens) == (0.3, 0.9, 1024)
    assert SamplingSettings(temperature=-1, top_p=0, max_new_tokens=0).problems() == [
        "temperature must be between 0 (greedy) and 5", "top_p must be above 0 and at most 1",
        "max_new_tokens must be a whole number from 1 to 32768"]
    with pytest.raises(UserError, match="top_p"):
        SamplingSettings(top_p=1.5).checked()


def test_empty_case_and_4bit_on_cpu_are_user_errors(demo_loaded) -> None:
    with pytest.raises(UserError, match="empty"):
        answer(demo_loaded, "   ")
    if demo_loaded.device == "cpu":
        with pytest.raises(UserError, match="4-bit loading needs a CUDA GPU"):
            load_model(resolve_source("demo"), LoadOptions(load_in_4bit=True))
    else:  # on a GPU machine there is nothing to refuse: the same call loads the weights in 4-bit
        four_bit = load_model(resolve_source("demo"), LoadOptions(load_in_4bit=True))
        assert four_bit.quantized and four_bit.device == "cuda"
        four_bit.unload()


@pytest.fixture(scope="module")
def cpu_loaded(demo_loaded):
    """The demo model on the CPU in fp32, also on a GPU machine (where ``demo_loaded`` is on the GPU)."""
    if demo_loaded.device == "cpu":
        return demo_loaded
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(demo_loaded.source.model_dir), dtype=torch.float32).eval()
    return dataclasses.replace(demo_loaded, model=model, device="cpu", dtype="float32", gpu_mem_mib=None, decoder=None)


def test_graph_path_bookkeeping_matches_eager(cpu_loaded) -> None:
    """The GPU path (static cache, captured step, replay, pipelined reads, cache reuse) on the CPU: a
    stand-in replays the step eagerly instead of as a CUDA graph; everything else is the real code.
    (In fp32 on the CPU the two agree exactly; the real CUDA graph is the GPU tier's, test_gpu_infer.py.)"""
    from medtui_engine.infer.decoder import EagerReplay, StaticDecoder

    demo_loaded = cpu_loaded

    s = SamplingSettings(max_new_tokens=30, seed=11)
    other = "女性，58岁，右上腹痛伴寒战高热2天，皮肤巩膜黄染"
    ref = [answer(demo_loaded, q, s, decode="eager", ignore_eos=True).output for q in (CASE, other)]
    saved = demo_loaded.decoder
    try:
        dec = demo_loaded.decoder = StaticDecoder(demo_loaded.model, "cpu", True, graphs=EagerReplay(), verify_steps=8)
        got = [answer(demo_loaded, q, s, decode="graph", ignore_eos=True) for q in (CASE, other, CASE)]
        assert [g.output for g in got] == [ref[0], ref[1], ref[0]]
        assert all(g.stats.decode_path == "graph" and not g.stats.notes for g in got)
        assert dec.captures == 1 and dec.graph_failed is None  # one capture, reused by every answer
        # a longer case outgrows the cache: a new cache and a new capture, still matching eager
        long_case = CASE + "，" + "，".join([other] * 12)
        s2 = SamplingSettings(max_new_tokens=8, seed=5)
        long = answer(demo_loaded, long_case, s2, decode="graph", ignore_eos=True)
        assert long.stats.prompt_tokens > 256 and dec.captures == 2 and dec.max_len == 512
        demo_loaded.decoder = saved
        assert long.output == answer(demo_loaded, long_case, s2, decode="eager", ignore_eos=True).output
    finally:
        demo_loaded.decoder = saved
