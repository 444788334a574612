"""The CUDA-graph capture check tells bf16 noise from wrong output (``decoder.judge``), and the
product says when and why it falls back; transformers' static-cache path (``decode="compiled"``) gives
the same greedy answer as our loop. On the CPU: ``judge`` on made-up logits, the whole check on the demo
model in fp32 with stand-ins for CUDA graphs (one faithful, one that replays at a stale cache position)."""

from __future__ import annotations

import pytest

from medtui_engine.infer import SamplingSettings, answer
from medtui_engine.infer.decoder import CompiledDecoder, EagerReplay, StaticDecoder, judge

BF16_EPS = 2.0**-7
CASE = "男性，62岁，进行性吞咽困难2月，体重下降8kg，胃镜示食管中段溃疡型肿物"


def _logits(k: int = 8, v: int = 400, seed: int = 0):
    """Rows of logits whose best token leads the second by at least 1 (no accidental near-ties)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    full = torch.randn(k, v, generator=g) * 2
    top = full.argmax(dim=-1)
    full[torch.arange(k), top] = full.max(dim=-1).values + 1.0
    return full, g


def _jitter(x, size: float, g):
    import torch

    return x + (torch.rand(x.shape, generator=g) * 2 - 1) * size


def test_bf16_noise_passes_when_eager_is_as_noisy() -> None:
    # the H200 case: the captured step 0.117 from eager, while two correct eager computations differ by 0.06
    full, g = _logits()
    eager = _jitter(full[:2], 0.06, g)
    graph = _jitter(full, 0.06, g)
    graph[:2] = eager + 0.117 * (torch_sign_like(eager))
    check = judge(graph, eager, full, repeat=0.0, eps=BF16_EPS, position=512)
    assert check.ok, check.summary()
    assert check.captured_vs_eager == pytest.approx(0.117, abs=1e-5)
    assert 0.05 < check.eager_noise <= 0.06 and check.tolerance >= 4 * check.eager_noise
    assert check.agreed == check.steps == 8 and check.first_divergence is None
    assert "greedy 8/8 steps agree" in check.summary()


def torch_sign_like(x):
    import torch

    return torch.where(torch.arange(x.numel()).reshape(x.shape) % 2 == 0, 1.0, -1.0)


def test_a_step_far_outside_the_noise_is_refused() -> None:
    full, g = _logits()
    eager = _jitter(full[:2], 0.01, g)
    graph = full.clone()
    graph[1] = full[5]  # the second step computed at a stale position: another row's logits
    check = judge(graph, eager, full, repeat=0.0, eps=BF16_EPS)
    assert not check.ok
    assert check.reason.startswith("the captured step differs from eager by")
    assert "x the eager noise floor" in check.summary()


def test_exact_fp32_leaves_no_room() -> None:
    # fp32 on the CPU: eager agrees with the full forward to 1e-5; a 1e-2 error is far outside it
    full, g = _logits()
    eager = _jitter(full[:2], 1e-5, g)
    fine = judge(_jitter(full, 1e-5, g), eager, full, repeat=0.0, eps=2.0**-23)
    off = judge(full + 1e-2, eager, full, repeat=0.0, eps=2.0**-23)
    assert fine.ok and not off.ok and off.tolerance < 1e-3


def test_a_near_tie_may_diverge_a_clear_choice_may_not() -> None:
    full, g = _logits()
    eager = _jitter(full[:2], 0.03, g)
    graph = full.clone()
    # step 3: the two best logits lie 0.02 apart (inside bf16 noise) and the graph took the second
    order = full[3].argsort(descending=True)
    full[3, order[1]] = full[3, order[0]] - 0.02
    graph[3] = full[3]
    graph[3, order[1]] = full[3, order[0]] + 0.01
    check = judge(graph, eager, full, repeat=0.0, eps=BF16_EPS)
    assert check.ok, check.summary()
    assert check.first_divergence == 3 and check.divergence_margin == pytest.approx(0.02, abs=1e-5)
    assert check.agreed == 7 and "first divergence at step 3 where the top-2 logits lie 0.02 apart" in check.summary()
    # step 5: the graph's token is 1.5 behind the best: not rounding
    graph[5, order[-1]] = graph[5].max() + 1
    bad = judge(graph, eager, full, repeat=0.0, eps=BF16_EPS)
    assert not bad.ok and "at greedy step 5" in bad.reason and "wrong output" in bad.reason


def test_non_finite_logits_are_refused() -> None:
    full, g = _logits()
    graph = full.clone()
    graph[0, 0] = float("nan")
    assert not judge(graph, full[:1], full, 0.0, BF16_EPS).ok


class StaleReplay(EagerReplay):
    """A broken graph: each replay computes the step but leaves the cache position where it was."""

    dec: StaticDecoder

    def capture(self, fn):
        out = fn().clone()
        dec = self.dec

        class _Replay:
            def replay(self) -> None:
                at = dec._positions()
                out.copy_(fn())
                dec._restore(at)

        return _Replay(), out


def test_faithful_capture_is_checked_and_kept(cpu_demo) -> None:
    s = SamplingSettings(temperature=0, max_new_tokens=12)
    want = answer(cpu_demo, CASE, s, decode="eager", ignore_eos=True).output
    dec = cpu_demo.decoder = StaticDecoder(cpu_demo.model, "cpu", True, graphs=EagerReplay())
    got = answer(cpu_demo, CASE, s, decode="graph", ignore_eos=True)
    assert got.output == want and got.stats.decode_path == "graph" and not got.stats.notes
    c = dec.check
    assert c.ok and c.steps == 32 and c.agreed == 32 and c.captured_vs_eager == 0.0
    assert c.eager_noise < 1e-3 and c.position == got.stats.prompt_tokens


def test_broken_capture_falls_back_and_the_stats_say_why(cpu_demo) -> None:
    s = SamplingSettings(temperature=0, max_new_tokens=12)
    want = answer(cpu_demo, CASE, s, decode="eager", ignore_eos=True).output
    graphs = StaleReplay()
    dec = cpu_demo.decoder = graphs.dec = StaticDecoder(cpu_demo.model, "cpu", True, graphs=graphs)
    for _ in range(2):  # the refusal is said on every answer that decodes eagerly because of it
        r = answer(cpu_demo, CASE, s, decode="graph", ignore_eos=True)
        assert r.output == want  # the fallback answers as eager does
        assert r.stats.decode_path == "graph-failed"
        [note] = [n for n in r.stats.notes if n.startswith("CUDA graph off")]
        assert "the captured step differs from eager by" in note and "eager vs full forward" in note
        assert note.endswith("; decoding eagerly")
    assert dec.graph is None and dec.captures == 0 and not dec.check.ok


def test_compiled_path_answers_as_the_loop_does(cpu_demo) -> None:
    s = SamplingSettings(temperature=0, max_new_tokens=10)
    loop = answer(cpu_demo, CASE, s, decode="eager", ignore_eos=True)
    first = answer(cpu_demo, CASE, s, decode="compiled", ignore_eos=True)
    dec = cpu_demo.decoder
    assert isinstance(dec, CompiledDecoder)
    second = answer(cpu_demo, CASE + "，伴反酸", s, decode="compiled")
    assert first.output == loop.output and first.stats.output_tokens == 10
    assert first.stats.decode_path == second.stats.decode_path == "compiled"
    assert "no torch.compile on the CPU: transformers' static cache, uncompiled" in first.stats.notes
    assert cpu_demo.decoder is dec and dec.calls == 2 and dec.thread.is_alive()  # one thread for every answer
    assert dec.max_cache_len == 2048
    answer(cpu_demo, CASE, s, decode="eager")  # switching paths ends the compiled path's thread
    dec.thread.join(timeout=30)
    assert not dec.thread.is_alive() and isinstance(cpu_demo.decoder, StaticDecoder)


def test_a_failing_compiled_step_goes_on_without_it_and_says_so(cpu_demo) -> None:
    """Should the static-cache step fail mid-answer (a graph break under fullgraph, say), the answer goes on
    with transformers' generate from the token it reached, the same greedy answer; later answers skip it."""
    from transformers import StaticCache

    s = SamplingSettings(temperature=0, max_new_tokens=10)
    want = answer(cpu_demo, CASE, s, decode="eager", ignore_eos=True).output
    model = cpu_demo.model
    plain = model.forward
    calls = {"static": 0}

    def flaky(*args, **kwargs):
        if isinstance(kwargs.get("past_key_values"), StaticCache):
            calls["static"] += 1
            if calls["static"] == 4:  # the prefill and two steps went through
                raise RuntimeError("simulated compile failure\nsecond line")
        return plain(*args, **kwargs)

    model.forward = flaky
    try:
        r = answer(cpu_demo, CASE, s, decode="compiled", ignore_eos=True)
        again = answer(cpu_demo, CASE, s, decode="compiled", ignore_eos=True)
    finally:
        del model.forward
    assert r.output == want and r.stats.output_tokens == 10
    assert r.stats.decode_path == again.stats.decode_path == "compiled-failed"
    note = "torch.compile off (RuntimeError: simulated compile failure); decoding with transformers' generate"
    assert note in r.stats.notes and note in again.stats.notes
    assert again.output == want and calls["static"] == 4  # the second answer did not try the static path again
