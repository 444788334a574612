"""The "fused" decode path: our loop with its single-token step compiled by ``torch.compile`` before the
step is captured (and checked) as the graph path captures it. On the CPU: the demo model in fp32, a
stand-in for CUDA graphs (``EagerReplay``, which runs the step again at every "replay", so each replay
passes through dynamo's guards at a new position), and a light backend ("aot_eager": dynamo's tracing
and AOTAutograd's functionalised cache writes, without inductor's C++ compile, which takes minutes on the
CPU). The GPU tier (tests/test_gpu_infer.py) runs the product's inductor on CUDA."""

from __future__ import annotations

import pytest

from medtui_engine.infer import SamplingSettings, answer
from medtui_engine.infer.decoder import EagerReplay, StaticDecoder
from medtui_engine.infer.stream import COMPILE_OFF, FIRST_COMPILE, pick_decode

CASE = "男性，62岁，进行性吞咽困难2月，体重下降8kg，胃镜示食管中段溃疡型肿物"
OTHER = "女性，58岁，右上腹痛伴寒战高热2天，皮肤巩膜黄染"
GREEDY = SamplingSettings(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def eager_answers(cpu_demo) -> dict[str, str]:
    cpu_demo.decoder = None
    return {q: answer(cpu_demo, q, GREEDY, decode="eager", ignore_eos=True).output for q in (CASE, OTHER)}


def _fused(loaded, backend) -> StaticDecoder:
    dec = loaded.decoder = StaticDecoder(loaded.model, "cpu", True, graphs=EagerReplay(), verify_steps=8,
                                         compile_step=True, compile_backend=backend)
    return dec


def test_fused_answers_as_eager_compiled_once_for_every_position_and_answer(cpu_demo, eager_answers) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    dec = _fused(cpu_demo, counter)
    assert pick_decode(cpu_demo, "fused") == "fused" and pick_decode(cpu_demo, "graph") == "eager"
    got = [answer(cpu_demo, q, GREEDY, decode="fused", ignore_eos=True) for q in (CASE, OTHER, CASE)]
    assert [g.output for g in got] == [eager_answers[CASE], eager_answers[OTHER], eager_answers[CASE]]
    assert [g.stats.decode_path for g in got] == ["fused"] * 3
    assert got[0].stats.notes == (FIRST_COMPILE,) and not got[1].stats.notes and not got[2].stats.notes
    # one compile, one graph (no graph break in the Qwen2 step), though the stand-in ran the compiled step
    # at ~40 different cache positions over three answers: positions are on-device tensors, not constants
    assert counter.frame_count == 1, f"{counter.frame_count} compiles"
    assert dec.captures == 1 and dec.compile_failed is None and dec.graph_failed is None
    assert dec.max_len == 2048  # the fused path's cache grows rarely: a new length compiles again
    c = dec.check  # the compiled, "captured" step held against the uncompiled eager step
    assert c.ok and c.steps == c.agreed == 8 and c.captured_vs_eager < 1e-3, c.summary()
    # a new decoder (a new cache of the same length: another session's model switch) reuses the compile
    again = _fused(cpu_demo, counter)
    r = answer(cpu_demo, OTHER, GREEDY, decode="fused", ignore_eos=True)
    assert r.output == eager_answers[OTHER] and r.stats.decode_path == "fused" and again.captures == 1
    assert counter.frame_count == 1


def test_a_compile_failure_captures_the_uncompiled_step_and_says_so(cpu_demo, eager_answers) -> None:
    calls = []

    def broken(gm, example_inputs):
        calls.append(len(example_inputs))
        raise RuntimeError("simulated compile failure\nsecond line")

    dec = _fused(cpu_demo, broken)
    for q in (CASE, OTHER):  # said on every answer; the compile is not tried again
        r = answer(cpu_demo, q, GREEDY, decode="fused", ignore_eos=True)
        assert r.output == eager_answers[q] and r.stats.output_tokens == 12
        assert r.stats.decode_path == "graph"  # what ran: the uncompiled step, captured and checked
        [note] = [n for n in r.stats.notes if n.startswith(COMPILE_OFF)]
        assert "RuntimeError: simulated compile failure" in note and "second line" not in note
        assert note.endswith("; the decode step runs uncompiled"), note
    assert len(calls) == 1 and dec.compiled is None
    assert dec.graph is not None and dec.captures == 1 and dec.check.ok


def test_a_compiled_step_that_fails_its_check_is_not_used(cpu_demo, eager_answers) -> None:
    """A compiled step that computes something else (here its logits shifted by 0.5) is refused by the
    capture check like a broken graph, and the uncompiled step is captured instead."""
    vocab = cpu_demo.model.config.vocab_size

    def shifted(gm, example_inputs):
        def run(*args):
            out = gm(*args)
            return type(out)(o + 0.5 if o.is_floating_point() and o.shape[-1] == vocab else o for o in out)

        return run

    dec = _fused(cpu_demo, shifted)
    r = answer(cpu_demo, CASE, GREEDY, decode="fused", ignore_eos=True)
    assert r.output == eager_answers[CASE] and r.stats.decode_path == "graph"
    [note] = [n for n in r.stats.notes if n.startswith(COMPILE_OFF)]
    assert "the compiled step failed its check: the captured step differs from eager by 0.5" in note, note
    assert dec.captures == 1 and dec.check.ok and dec.check.captured_vs_eager < 1e-3


def test_a_session_prepares_the_compiled_step_before_its_first_answer(cpu_demo, eager_answers) -> None:
    """``warm_up`` (the console, after loading): compiles, captures and checks the step with a two-token
    answer, so the first real answer neither compiles nor captures again; where nothing compiles it does
    nothing."""
    from medtui_engine.infer.stream import needs_warm_up, warm_up

    cpu_demo.decoder = None
    assert pick_decode(cpu_demo, "auto") == "eager" and not needs_warm_up(cpu_demo) and warm_up(cpu_demo) is None
    dec = _fused(cpu_demo, "aot_eager")
    assert needs_warm_up(cpu_demo, "fused")
    said = warm_up(cpu_demo, "fused")
    assert said is not None and said.startswith("decode step compiled and checked in"), said
    assert dec.captures == 1 and dec.compiled is not None and not needs_warm_up(cpu_demo, "fused")
    assert warm_up(cpu_demo, "fused") is None  # prepared once
    r = answer(cpu_demo, CASE, GREEDY, decode="fused", ignore_eos=True)
    assert r.output == eager_answers[CASE] and r.stats.decode_path == "fused" and not r.stats.notes
    assert dec.captures == 1


def test_auto_on_a_gpu_compiles_for_sessions_and_not_for_one_answer(cpu_demo) -> None:
    """``auto`` on a GPU: the fused step where many answers repay its compile (console, evaluation), the plain
    CUDA graph for a process that answers once (``medtui ask``). (The model's device is relabelled: only
    the choice is under test; the GPU tier runs both paths on CUDA.)"""
    import dataclasses

    from medtui_engine.infer.stream import AUTO_GPU_DECODE, AUTO_GPU_DECODE_ONE_ANSWER

    on_gpu = dataclasses.replace(cpu_demo, device="cuda", decoder=None)
    assert pick_decode(on_gpu, "auto") == AUTO_GPU_DECODE == "fused"
    assert pick_decode(on_gpu, "auto", one_answer=True) == AUTO_GPU_DECODE_ONE_ANSWER == "graph"
    assert pick_decode(on_gpu, "fused", one_answer=True) == "fused"  # asked for by name: kept
    assert pick_decode(cpu_demo, "auto", one_answer=True) == "eager"
