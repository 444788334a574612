"""Our decode loop's state: a static KV cache kept between answers, and one decode step captured as a
CUDA graph and replayed (on a GPU), so a step costs one launch instead of hundreds from Python.

A captured step is trusted only after a check that tells bf16 noise from wrong output (:func:`judge`):
the captured step against the eager step, measured against how much two correct eager computations of
the same step differ (the cached step against the model's full forward over the same tokens: other
kernels, other rounding), and VERIFY_STEPS greedy steps of the graph against the full forward.
With ``compile_step`` (decode "fused") the single-token step is first compiled by ``torch.compile``
(inductor, no CUDA graphs of its own: this loop captures the graph), so the step's elementwise work runs
fused in far fewer kernels; the check then holds the compiled, captured step against the truly eager one.
``CompiledDecoder`` holds the other fast path, transformers' own static cache with ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass

CACHE_ROUND = 256  # the static cache grows in steps of this many positions, so most answers reuse it
COMPILED_CACHE_ROUND = 2048  # the compiled path's cache: a new length recompiles, so grow it rarely


def compiled_cache_len(needed: int) -> int:
    """``needed`` positions rounded up to the compiled path's cache lengths (steps of COMPILED_CACHE_ROUND)."""
    return -(-needed // COMPILED_CACHE_ROUND) * COMPILED_CACHE_ROUND
VERIFY_STEPS = 32  # greedy steps of a newly captured graph checked against the model's full forward
# How big bf16 noise is: on the Qwen2.5-7B shape (random weights, bf16, CPU) the eager cached step and the
# full forward over the same tokens -- both correct -- differ by up to 0.094 with 8 of its 28 layers (logits
# up to 6.1) and 0.125 with 16 (up to 5.3); the old check's fixed 1e-2 x max|logit| (~0.06) refused noise
# of that size (the H200's "differs from eager by 0.117").
NOISE_FACTOR = 4.0  # the captured step may differ from eager by this many times eager's own noise...
ULP_FLOOR = 2.0  # ...and is never held closer than this many units in the last place of the largest logit
# The "fused" step's torch.compile: inductor's default mode. Not "max-autotune-no-cudagraphs": a decode step's
# matmuls have one row (bound by weight bytes, where cuBLAS is already at bandwidth), so autotuning them costs
# minutes of compiling for little; the gain sought is fusing the elementwise work (RMSNorm and its casts,
# rotary, SiLU x mul, residual adds) into few kernels, which the default mode does. Not fullgraph: the loop
# captures the whole step as one CUDA graph anyway, so a graph break costs only the fusion across it, never
# Python at replay (the tests assert that the Qwen2 step compiles as one graph). dynamic=False: one shape,
# positions stay on-device tensors (the static cache's), so one compile serves every position and answer.
STEP_COMPILE = {"mode": "default", "fullgraph": False, "dynamic": False}


class GraphRefused(RuntimeError):
    """The captured step failed its check; ``check`` says by how much and where."""

    def __init__(self, check: GraphCheck):
        super().__init__(check.summary())
        self.check = check


@dataclass(frozen=True)
class GraphCheck:
    """What the capture check measured, and its verdict (all in logits, the largest |logit| is ``scale``)."""

    ok: bool
    position: int                 # the cache position of the captured step
    captured_vs_eager: float      # max |graph - eager step| over the positions both computed
    eager_noise: float            # max |eager step - full forward| (or eager step twice), same positions
    tolerance: float              # max(NOISE_FACTOR x eager_noise, ULP_FLOOR units of the logits' precision)
    scale: float
    steps: int                    # greedy steps of the graph checked against the full forward
    agreed: int                   # steps whose token is also the full forward's greedy choice
    first_divergence: int | None  # the first step that is not, if any
    divergence_margin: float | None  # there: how far the graph's token lags the full forward's best logit
    worst_lag: float              # the largest such lag over all steps
    reason: str = ""

    def summary(self) -> str:
        head = (f"captured step vs eager {self.captured_vs_eager:.3g}, eager vs full forward {self.eager_noise:.3g} "
                f"(bf16 noise; tolerance {self.tolerance:.3g}); greedy {self.agreed}/{self.steps} steps agree")
        if self.first_divergence is not None:
            head += (f", first divergence at step {self.first_divergence} where the top-2 logits lie "
                     f"{self.divergence_margin:.3g} apart")
        return (f"{self.reason}: {head}" if self.reason else head)

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def judge(graph, eager, full, repeat: float, eps: float, position: int = 0) -> GraphCheck:
    """The verdict on a captured step, from logits (rows: consecutive positions, columns: the vocabulary).

    ``graph`` (K, V): K greedy steps of the captured graph, each fed the previous row's argmax;
    ``eager`` (E, V), E <= K: the eager step at the first E of those positions, fed the same tokens;
    ``full`` (K, V): the model's full forward (no cache) over the same tokens, at the same positions;
    ``repeat``: how much the same eager step computed twice differed; ``eps``: the logits' dtype epsilon.

    Two correct computations of a step differ by rounding; a wrong one (a stale cache position, a step
    replayed on the wrong input) differs by the size of the logits. So the captured step must lie within
    NOISE_FACTOR times the eager noise floor of the eager step (never closer than ULP_FLOOR ulps), and at
    every greedy step the graph's token must be the full forward's greedy choice, or lag it by no more
    than the tolerance (a near-tie that rounding may break either way)."""
    import torch

    graph, eager, full = graph.float(), eager.float(), full.float()
    k, e = graph.shape[0], eager.shape[0]
    scale = max(1.0, float(full.abs().max()))
    captured = float((graph[:e] - eager).abs().max())
    noise = max(float(repeat), float((eager - full[:e]).abs().max()))
    tol = max(NOISE_FACTOR * noise, ULP_FLOOR * eps * scale)
    tokens = graph.argmax(dim=-1)
    best = full.max(dim=-1).values
    lag = (best - full.gather(-1, tokens[:, None])[:, 0]).clamp(min=0)
    agree = tokens == full.argmax(dim=-1)
    diverge = [j for j in range(k) if not bool(agree[j])]
    first = diverge[0] if diverge else None
    worst = float(lag.max()) if k else 0.0
    reason = ""
    if not (bool(torch.isfinite(graph).all()) and bool(torch.isfinite(eager).all())):
        reason = "the captured step gives non-finite logits"
    elif not captured <= tol:
        reason = (f"the captured step differs from eager by {captured:.3g}, "
                  f"{captured / max(noise, 1e-30):.1f}x the eager noise floor")
    elif worst > tol:
        at = int(lag.argmax())
        reason = f"at greedy step {at} the graph's token lags the full forward's best by {worst:.3g}: wrong output"
    return GraphCheck(ok=not reason, position=position, captured_vs_eager=captured, eager_noise=noise,
                      tolerance=tol, scale=scale, steps=k, agreed=int(agree.sum()), first_divergence=first,
                      divergence_margin=float(lag[first]) if first is not None else None, worst_lag=worst,
                      reason=reason)


class CudaGraphs:
    """How a decode step becomes a CUDA graph: warm it up on a side stream, then capture it."""

    def warm(self, fn, restore):
        """The step run twice eagerly (from the same state): both results, for the noise floor."""
        import torch

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            first = fn().clone()
            restore()
            second = fn().clone()
        torch.cuda.current_stream().wait_stream(side)
        restore()
        return first, second

    def capture(self, fn):
        import torch

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()


class EagerReplay:
    """A stand-in for CUDA graphs where there is no GPU (tests): "replay" runs the step again into the
    same output tensor. It exercises all of the graph path's bookkeeping except CUDA itself."""

    def warm(self, fn, restore):
        first = fn().clone()
        restore()
        second = fn().clone()
        restore()
        return first, second

    def capture(self, fn):
        out = fn().clone()

        class _Replay:
            def replay(self) -> None:
                out.copy_(fn())

        return _Replay(), out

    def synchronize(self) -> None:
        pass


def _decode_step(model, cache, ids):
    """The single-token step (what ``torch.compile`` compiles for the fused path): logits after ``ids``."""
    return model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]


_COMPILED: dict = {}  # backend -> the compiled step


def _loud_recompile_limit():
    import torch._dynamo

    if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
        return torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)
    return contextlib.nullcontext()


def first_line(exc: BaseException) -> str:
    """An exception in one line; a wrapper's bare heading ("backend='inductor' raised:") gets its cause's."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    cause = exc.__cause__ or getattr(exc, "inner_exception", None)
    if cause is not None and cause is not exc and (not text or text.endswith(":")):
        text = f"{text} {first_line(cause)}".strip()
    return f"{type(exc).__name__}: {text}"


class StaticDecoder:
    """A static KV cache kept between answers, and (on a GPU) one decode step captured as a CUDA graph.

    The cache is sized up to a multiple of CACHE_ROUND and reused while answers fit, so the graph is
    captured once per model rather than once per answer. Without graphs (``use_graph`` False) it is a
    fresh dynamic cache per answer. ``check`` keeps what the last capture check measured.

    ``compile_step`` (with graphs only): the captured step is the ``torch.compile``d one (``compile_backend``:
    inductor on a GPU; tests on the CPU pass a lighter one). It is compiled in the warm-up before capture,
    never under it; should compiling fail or the compiled step fail its check, ``compile_failed`` says why
    and the uncompiled step is captured instead (the answer goes on either way). Its cache grows in steps of
    COMPILED_CACHE_ROUND: a new cache length compiles again.
    """

    def __init__(self, model, device: str, use_graph: bool, graphs=None, verify_steps: int = VERIFY_STEPS,
                 compile_step: bool = False, compile_backend="inductor"):
        self.model = model
        self.device = device
        self.graphs = graphs or (CudaGraphs() if device == "cuda" else None)
        self.use_graph = use_graph and self.graphs is not None
        self.verify_steps = verify_steps
        self.compile_step = compile_step and self.use_graph
        self.compile_backend = compile_backend
        self.compile_failed: str | None = None
        self.compiled = None  # the compiled step, once the warm-up compiled it
        self.round = COMPILED_CACHE_ROUND if self.compile_step else CACHE_ROUND
        self.cache = None
        self.max_len = 0
        self.graph = None
        self.graph_failed: str | None = None
        self.check: GraphCheck | None = None
        self.captures = 0
        self.static_ids = None
        self.static_logits = None
        self._fed: list = []  # the ids fed since the prefill, until a graph exists (the check's full forward)

    def prepare(self, needed: int) -> None:
        from transformers import DynamicCache, StaticCache

        if not self.use_graph:
            self.cache = DynamicCache(config=self.model.config)
            return
        if self.cache is not None and needed <= self.max_len:
            self.cache.reset()
            return
        self.graph = None
        self.static_logits = None
        self.cache = None
        self.max_len = -(-needed // self.round) * self.round
        self.cache = StaticCache(config=self.model.config, max_cache_len=self.max_len)

    def close(self) -> None:
        self.cache = self.graph = self.static_logits = None
        self._fed = []

    def _forward(self, ids):
        return _decode_step(self.model, self.cache, ids)

    @property
    def will_compile(self) -> bool:
        """The next capture compiles the step first (the first answer on this decoder, or a new cache length)."""
        return self.compile_step and self.compile_failed is None and self.graph is None and self.graph_failed is None

    def prefill(self, input_ids):
        if self.use_graph and self.graph is None and self.graph_failed is None:
            self._fed = [input_ids]
        return self._forward(input_ids)

    def _positions(self):
        return [layer.cumulative_length.clone() for layer in self.cache.layers]

    def _restore(self, saved) -> None:
        for layer, value in zip(self.cache.layers, saved, strict=True):
            layer.cumulative_length.copy_(value)

    def step(self, ids):
        """Logits for the next position after feeding ``ids`` (1, 1), advancing the cache by one."""
        if self.use_graph and self.graph is None and self.graph_failed is None:
            at = self._positions()
            try:
                return self._capture(ids, at)
            except Exception as exc:  # capture is an optimisation: go on eagerly, and say why
                self.graph = None
                if isinstance(exc, GraphRefused):
                    self.check = exc.check
                    self.graph_failed = exc.check.summary()
                else:
                    self.graph_failed = first_line(exc)
                self.graphs.synchronize()
                self._restore(at)
                self._fed = []
                return self._forward(ids)
        if self.graph is not None:
            self.static_ids.copy_(ids)
            self.graph.replay()
            return self.static_logits
        if self._fed:
            self._fed.append(ids)
        return self._forward(ids)

    def _capture(self, ids, at):
        if self.compile_step and self.compile_failed is None:
            try:
                return self._capture_step(ids, at, compiled=True)
            except Exception as exc:  # compiling is an optimisation: capture the uncompiled step instead
                self.compile_failed = (f"the compiled step failed its check: {exc.check.summary()}" if isinstance(exc, GraphRefused)
                                       else first_line(exc))
                self.compiled = None
                self.graphs.synchronize()
                self._restore(at)
        return self._capture_step(ids, at, compiled=False)

    def _compiled_step(self):
        import torch

        if self.compiled is None:  # one compiled step per backend in the process: a new decoder (a new cache of
            # the same length) reuses what was compiled, as the positions do
            fn = _COMPILED.get(self.compile_backend)
            if fn is None:
                fn = _COMPILED[self.compile_backend] = torch.compile(_decode_step, backend=self.compile_backend,
                                                                     **STEP_COMPILE)
            self.compiled = fn
        return self.compiled

    def _capture_step(self, ids, at, compiled: bool):
        import torch

        self.static_ids = ids.clone()
        fn = self._compiled_step() if compiled else _decode_step

        def step():
            return fn(self.model, self.cache, self.static_ids)

        # the step for `ids` at position p, twice (the compiled step is compiled here, by its first call; past
        # dynamo's recompile limit -- many cache lengths or models in one process -- it would quietly run
        # uncompiled: made to raise instead, so that the stats say so)
        with _loud_recompile_limit() if compiled else contextlib.nullcontext():
            real, again = self.graphs.warm(step, lambda: self._restore(at))
        if compiled:  # what the warm-up compiled serves the capture: never a compile under torch.cuda.graph
            with torch.compiler.set_stance("fail_on_recompile"):
                graph, static_logits = self.graphs.capture(step)
        else:
            graph, static_logits = self.graphs.capture(step)
        self._restore(at)
        check = self._verify(graph, static_logits, ids, real, again, at, compiled)
        self.check = check
        if not check.ok:
            raise GraphRefused(check)
        self.graph, self.static_logits = graph, static_logits
        self.captures += 1
        self._fed = []
        return real

    def _verify(self, graph, static_logits, ids, real, again, at, compiled: bool = False) -> GraphCheck:
        """Replay the graph for up to ``verify_steps`` greedy steps from position p, compute the eager step
        at p and p+1 and the model's full forward (no cache) over the same tokens, and :func:`judge`.
        (A compiled step is held against the uncompiled one: the eager step at p is computed afresh.)
        Leaves the cache as after the step at p (slots past p are written again before they are read)."""
        import torch

        p = int(at[0])
        prefix = torch.cat(self._fed, dim=1) if self._fed else None
        if prefix is None or prefix.shape[1] != p:
            raise RuntimeError(f"the capture check lost track of the tokens before position {p}")
        repeat = float((real.float() - again.float()).abs().max())  # the same step twice
        if compiled:
            self._restore(at)
            real = self._forward(ids).clone()
            self._restore(at)
        k = max(1, min(self.verify_steps, self.max_len - p))
        rows, feeds = [], [ids.reshape(1, 1)]
        for j in range(k):
            self.static_ids.copy_(feeds[-1])
            graph.replay()
            rows.append(static_logits.float().clone())
            if j + 1 < k:
                feeds.append(static_logits.argmax(dim=-1, keepdim=True))
        eager = [real.float()]
        if k > 1:  # the eager step at p+1 on the cache as the graph's step at p left it (a stale position shows here)
            self._restore([a + 1 for a in at])
            eager.append(self._forward(feeds[1]).float().clone())
        self._restore([a + 1 for a in at])
        seq = torch.cat([prefix, *feeds], dim=1)
        full = self.model(input_ids=seq, use_cache=False, logits_to_keep=k).logits[0]
        eps = torch.finfo(real.dtype).eps if real.dtype.is_floating_point else 0.0
        return judge(torch.cat(rows), torch.cat(eager), full, repeat, eps, position=p)


class CompiledDecoder:
    """transformers' maintained fast path: ``generate`` over its static cache, the decode step compiled by
    ``torch.compile`` (mode reduce-overhead: CUDA graphs). Every ``generate`` call runs in one long-lived
    thread, because torch.compile's CUDA graphs belong to the thread that recorded them (a new thread per
    answer would record them again, and hold their memory, every time)."""

    def __init__(self):
        self.jobs: queue.Queue = queue.Queue()
        self.max_cache_len = 0
        self.calls = 0
        self.failed: str | None = None  # why compiling failed here (then answers go on without it)
        self.thread = threading.Thread(target=self._run, name="medtui-compiled-decode", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job()

    def submit(self, job) -> None:
        self.jobs.put(job)

    def cache_len(self, needed: int) -> int:
        """The static cache length for an answer: grown in steps of COMPILED_CACHE_ROUND, never shrunk."""
        self.max_cache_len = max(self.max_cache_len, compiled_cache_len(needed))
        return self.max_cache_len

    def close(self) -> None:
        self.jobs.put(None)
