"""Our decode loop's state: a static KV cache kept between answers, and one decode step captured as a
CUDA graph and replayed (on a GPU), so a step costs one launch instead of hundreds from Python."""

from __future__ import annotations

CACHE_ROUND = 256  # the static cache grows in steps of this many positions, so most answers reuse it


class CudaGraphs:
    """How a decode step becomes a CUDA graph: warm it up on a side stream, then capture it."""

    def warm(self, fn, restore):
        import torch

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            first = fn().clone()
            restore()
            fn()
        torch.cuda.current_stream().wait_stream(side)
        restore()
        return first

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
        fn()
        restore()
        return first

    def capture(self, fn):
        out = fn().clone()

        class _Replay:
            def replay(self) -> None:
                out.copy_(fn())

        return _Replay(), out

    def synchronize(self) -> None:
        pass


class StaticDecoder:
    """A static KV cache kept between answers, and (on a GPU) one decode step captured as a CUDA graph.

    The cache is sized up to a multiple of CACHE_ROUND and reused while answers fit, so the graph is
    captured once per model rather than once per answer. Without graphs (``use_graph`` False) it is a
    fresh dynamic cache per answer.
    """

    def __init__(self, model, device: str, use_graph: bool, graphs=None):
        self.model = model
        self.device = device
        self.graphs = graphs or (CudaGraphs() if device == "cuda" else None)
        self.use_graph = use_graph and self.graphs is not None
        self.cache = None
        self.max_len = 0
        self.graph = None
        self.graph_failed: str | None = None
        self.captures = 0
        self.static_ids = None
        self.static_logits = None

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
        self.max_len = -(-needed // CACHE_ROUND) * CACHE_ROUND
        self.cache = StaticCache(config=self.model.config, max_cache_len=self.max_len)

    def _forward(self, ids):
        return self.model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def prefill(self, input_ids):
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
                text = str(exc).splitlines()[0][:200] if str(exc) else ""
                self.graph_failed = f"{type(exc).__name__}: {text}"
                self.graphs.synchronize()
                self._restore(at)
                return self._forward(ids)
        if self.graph is not None:
            self.static_ids.copy_(ids)
            self.graph.replay()
            return self.static_logits
        return self._forward(ids)

    def _capture(self, ids, at):
        self.static_ids = ids.clone()

        def step():
            return self._forward(self.static_ids)

        real = self.graphs.warm(step, lambda: self._restore(at))  # the true step for `ids` (position p)
        graph, static_logits = self.graphs.capture(step)
        self._restore(at)
        # Trust the graph only if it reproduces eager steps, at this position and at the next one.
        graph.replay()
        check1 = static_logits.clone()
        probe = real.argmax(dim=-1, keepdim=True)
        nxt = self._positions()
        eager = self._forward(probe).clone()
        self._restore(nxt)
        self.static_ids.copy_(probe)
        graph.replay()
        check2 = static_logits.clone()
        self._restore(nxt)
        for got, want in ((check1, real), (check2, eager)):
            scale = max(1.0, float(want.abs().max()))
            diff = float((got.float() - want.float()).abs().max())
            if not diff <= 1e-2 * scale:
                raise RuntimeError(f"captured step differs from eager by {diff:.3g}")
        self.graph, self.static_logits = graph, static_logits
        self.captures += 1
        return real
