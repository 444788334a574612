"""Streaming an answer: a generator yielding text chunks as tokens arrive, then one ``StreamDone``
with the whole output and its timing (time to first token, tokens/s, total, cut off or not).

Five decode paths, picked per loaded model (``auto``: ``fused`` on a GPU, ``eager`` on the CPU):

* ``graph`` (transformers on a GPU): our own loop over a static KV cache whose single-token step is
  captured once as a CUDA graph and replayed, so a step costs one launch instead of hundreds of
  kernel launches from Python. The capture is checked before it is trusted (``decoder.judge``: the
  captured step against eager, measured against eager's own bf16 noise, and 32 greedy steps against
  the model's full forward); on a refusal the loop goes on eagerly over the same static cache and the
  stats say why (``decode_path`` "graph-failed" and a note with the measured figures).
* ``fused`` (transformers on a GPU): the ``graph`` loop, its step first compiled by ``torch.compile``
  (inductor, no CUDA graphs of its own) so its elementwise work runs in far fewer kernels, then captured
  and checked as ``graph`` is (the compiled, captured step held against the uncompiled one). Should
  compiling fail, or the compiled step fail its check, the uncompiled step is captured instead
  (``decode_path`` "graph", a note says why).
* ``compiled`` (transformers on a GPU): transformers' maintained path, ``generate`` over its static
  cache with the decode step compiled by ``torch.compile`` (reduce-overhead), in one long-lived thread
  (``decoder.CompiledDecoder``). On the CPU the same static-cache ``generate`` runs uncompiled.
* ``eager`` (transformers on the CPU): the same loop over a growing (dynamic) cache; a static cache
  only pays off once its step is a graph (eager, its full-length mask costs more than it saves).
* ``generate`` (Unsloth's fast inference, or plain transformers ``generate`` when asked): ``generate``
  runs in a helper thread and hands token ids over a queue.

The static cache and the graph live in ``decoder``; choosing the next token in ``sampling``.

The host reads token t while the GPU already computes step t+1 (an event marks when t is ready), so
detokenising and yielding cost no GPU time. Cancellation is a ``threading.Event`` checked every token.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UserError
from ..sections import split_think
from ..templates import generation_prefix, render_prompt
from .decoder import CompiledDecoder, StaticDecoder, first_line
from .loader import LoadedModel
from .sampling import SamplingSettings, make_generator, resolve_repetition_penalty, sample_next

DECODE_MODES = ("auto", "graph", "fused", "compiled", "eager", "generate")
# What ``auto`` decodes with on a GPU: our CUDA-graph loop ("graph"), the same with its step compiled
# ("fused"), or transformers' static cache with torch.compile ("compiled"). Decided by ``medtui bench infer``
# on the GPU (its hf-bf16 rows, same call): the project's own loop stays only where it is clearly faster
# and its check holds. H200, 2026-12-02, Qwen2.5-7B shape, bf16, batch 1: fused 171.5 tok/s, graph 133.3,
# compiled 122.9 (transformers' own static cache + torch.compile, bare, 135.6); the first answer of a
# loaded model compiles the step (~25 s there), and falls back to the plain graph with a note if it must.
AUTO_GPU_DECODE = "fused"
# ``auto`` where a process answers once (``medtui ask``): compiling the fused step costs more than it saves
# over a single answer (the H200 figures above: ~25 s of compiling against ~1.7 s saved on 1,024 tokens).
AUTO_GPU_DECODE_ONE_ANSWER = "graph"
WARM_UP_CASE = "warm-up"  # what the warm-up asks (two tokens, thrown away)
WARM_UP_NOTE = "compiling the decode step for full-speed answers (once per loaded model; ~25 s for a 7B model on an H200)"
# transformers' static-cache decode step compiled as its documentation recommends (and as the bench's bare
# reference compiles it): CUDA graphs (reduce-overhead), the whole step one graph
COMPILE_CONFIG = {"fullgraph": True, "mode": "reduce-overhead"}
COMPILE_OFF = "torch.compile off"   # the heads of the notes that say a fast path was refused (decode_path follows)
GRAPH_OFF = "CUDA graph off"
FIRST_COMPILE = "the first answer compiles the decode step (torch.compile); later answers reuse it"


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None           # request start -> first token on the host
    total_s: float
    decode_tokens_per_s: float | None  # tokens after the first, over the time after the first
    finish_reason: str             # "eos" | "length" | "cancelled"
    think_tokens: int | None       # tokens up to and including </think>; None if the block never closed
    decode_path: str               # "graph" | "graph-failed" (eager on the static cache) | "fused" (the graph of the
                                   # compiled step; "graph" when compiling failed, "graph-failed" when no captured
                                   # step held) | "compiled" | "compiled-failed"
                                   # (transformers' generate, uncompiled) | "eager" | "generate"
    notes: tuple[str, ...] = ()

    @property
    def cut_off(self) -> bool:
        return self.finish_reason == "length"

    @property
    def tokens_per_s(self) -> float | None:
        return self.output_tokens / self.total_s if self.total_s > 0 and self.output_tokens else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d["cut_off"] = self.cut_off
        d["tokens_per_s"] = self.tokens_per_s
        return d

    def summary(self) -> str:
        bits = []
        bits.append(f"first token {self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "no tokens")
        if self.decode_tokens_per_s:
            bits.append(f"{self.decode_tokens_per_s:.1f} tok/s")
        bits.append(f"{self.total_s:.1f} s")
        bits.append(f"{self.output_tokens} tokens")
        if self.finish_reason == "length":
            bits.append("CUT OFF at max_new_tokens")
        elif self.finish_reason == "cancelled":
            bits.append("stopped")
        return " · ".join(bits)


@dataclass(frozen=True)
class GenerationResult:
    question: str
    prompt: str
    template: str
    output: str                    # the generated text (the prompt's opening <think> not repeated)
    stats: GenerationStats
    model_label: str = ""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    @property
    def split(self):
        return split_think(self.output, prompt_opened_think=bool(generation_prefix(self.template)))

    @property
    def think(self) -> str:
        return self.split.think

    @property
    def answer(self) -> str:
        return self.split.answer


@dataclass(frozen=True)
class StreamChunk:
    text: str                      # new text since the previous chunk
    output_tokens: int
    elapsed_s: float
    think_tokens: int | None       # None while the think block is still open


@dataclass(frozen=True)
class StreamDone:
    result: GenerationResult


class IncrementalDetokenizer:
    """Token ids in, new text out; holds back a partial UTF-8 character (a Chinese character can span
    two byte-level tokens) until the token completing it arrives. Decodes a short window, not the
    whole answer, so each token costs the same."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):]


def build_prompt(loaded: LoadedModel, question: str) -> str:
    question = (question or "").strip()
    if not question:
        raise UserError("the case is empty: type the complaint and the findings")
    return render_prompt(loaded.source.template, question, loaded.tokenizer)


def pick_decode(loaded: LoadedModel, decode: str, one_answer: bool = False) -> str:
    """The decode path ``decode`` means for ``loaded``; ``one_answer``: the process answers once (``auto``
    then skips the compile that only later answers would repay)."""
    if decode not in DECODE_MODES:
        raise UserError(f"unknown decode mode {decode!r}: choose one of {', '.join(DECODE_MODES)}")
    if loaded.backend == "unsloth":
        return "generate"  # Unsloth's fast path lives behind its patched generate
    if decode == "auto":
        if loaded.device != "cuda":
            return "eager"
        return AUTO_GPU_DECODE_ONE_ANSWER if one_answer else AUTO_GPU_DECODE
    if decode in ("graph", "fused") and loaded.device != "cuda":  # the CPU: only with a stand-in for CUDA graphs
        dec = loaded.decoder
        stand_in = isinstance(dec, StaticDecoder) and dec.use_graph and dec.compile_step == (decode == "fused")
        return decode if stand_in else "eager"
    return decode


def stream_answer(loaded: LoadedModel, question: str, settings: SamplingSettings | None = None,
                  cancel: threading.Event | None = None, *, ignore_eos: bool = False,
                  decode: str = "auto", prompt: str | None = None,
                  one_answer: bool = False) -> Iterator[StreamChunk | StreamDone]:
    """Ask ``loaded`` one case. Yields ``StreamChunk`` per token with text, then one ``StreamDone``.

    ``ignore_eos`` keeps generating to ``max_new_tokens`` (benchmarks on random weights); ``one_answer``:
    the only answer this process gives (``pick_decode``).
    """
    settings = (settings or SamplingSettings()).checked()
    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    prompt = prompt if prompt is not None else build_prompt(loaded, question)
    path = pick_decode(loaded, decode, one_answer)

    enc = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    input_ids = enc["input_ids"].to(loaded.device)
    n_prompt = int(input_ids.shape[1])
    limit = _context_limit(loaded.model)
    max_new = settings.max_new_tokens
    notes: list[str] = []
    if limit and n_prompt >= limit:
        raise UserError(f"the case is {n_prompt} tokens, more than the model's context of {limit}: shorten it")
    if limit and n_prompt + max_new > limit:
        max_new = limit - n_prompt
        notes.append(f"max_new_tokens lowered to {max_new} to fit the model's context of {limit}")
    penalty_note = repetition_penalty_note(settings, loaded.model)
    if penalty_note:
        notes.append(penalty_note)

    if path == "generate":
        token_iter = _tokens_via_generate(loaded, input_ids, settings, max_new, cancel, ignore_eos)
    elif path == "compiled":
        token_iter = _tokens_via_compiled(loaded, input_ids, settings, max_new, cancel, ignore_eos, notes)
    else:
        token_iter = _tokens_via_loop(loaded, input_ids, settings, max_new, cancel, ignore_eos,
                                      use_graph=(path in ("graph", "fused")), notes=notes,
                                      compile_step=(path == "fused"))

    detok = IncrementalDetokenizer(loaded.tokenizer)
    eos = set(loaded.eos_ids)
    pieces: list[str] = []
    n_out = 0
    t_first = t_last = None
    think_tokens: int | None = None
    finish = "length"
    tail = ""
    try:
        for tid in token_iter:
            now = time.perf_counter()
            if t_first is None:
                t_first = now
            t_last = now
            if tid in eos and not ignore_eos:
                finish = "eos"
                break
            n_out += 1
            text = detok.push(tid)
            if text:
                pieces.append(text)
                if think_tokens is None:
                    tail = (tail + text)[-16:]
                    if "</think>" in tail:
                        think_tokens = n_out
            yield StreamChunk(text, n_out, now - t0, think_tokens)
            if cancel.is_set():
                finish = "cancelled"
                break
            if n_out >= max_new:
                finish = "length"
                break
        else:
            finish = "cancelled" if cancel.is_set() else ("length" if n_out >= max_new else "eos")
    finally:
        token_iter.close()  # stops generate's helper thread; drops the loop's queued step
    rest = detok.flush()
    if rest:
        pieces.append(rest)
        yield StreamChunk(rest, n_out, time.perf_counter() - t0, think_tokens)
    total = time.perf_counter() - t0
    decode_tps = None
    if t_first is not None and t_last is not None and n_out > 1 and t_last > t_first:
        decode_tps = (n_out - 1) / (t_last - t_first)
    if path == "fused" and any(n.startswith(COMPILE_OFF) for n in notes):
        path = "graph"  # the uncompiled step was captured instead
    if path in ("fused", "graph") and any(n.startswith(GRAPH_OFF) for n in notes):
        path = "graph-failed"   # the captured step did not match eager: eager steps on the static cache
    if path == "compiled" and any(n.startswith(COMPILE_OFF) for n in notes):
        path = "compiled-failed"
    stats = GenerationStats(
        prompt_tokens=n_prompt, output_tokens=n_out,
        ttft_s=(t_first - t0) if t_first is not None else None, total_s=total,
        decode_tokens_per_s=decode_tps, finish_reason=finish, think_tokens=think_tokens,
        decode_path=path, notes=tuple(notes),
    )
    yield StreamDone(GenerationResult(question, prompt, loaded.source.template, "".join(pieces), stats,
                                      loaded.label, settings))


def repetition_penalty_note(settings: SamplingSettings, model) -> str | None:
    """Said in the stats when the model's own generation config sets the penalty (1.0 says nothing)."""
    if settings.repetition_penalty is None:
        value = resolve_repetition_penalty(settings, model)
        if value != 1.0:
            return f"repetition penalty {value:g} (the model's generation config)"
    return None


def needs_warm_up(loaded: LoadedModel, decode: str = "auto") -> bool:
    """Whether :func:`warm_up` has work to do: ``decode`` compiles the step and it is not compiled yet."""
    if pick_decode(loaded, decode) != "fused":
        return False
    dec = loaded.decoder
    return not (isinstance(dec, StaticDecoder) and dec.compile_step and (dec.compiled is not None or dec.compile_failed))


def warm_up(loaded: LoadedModel, decode: str = "auto") -> str | None:
    """Prepare the decode path of a session that will answer many cases (the console) before its first
    answer: where ``decode`` compiles the step (``fused``), compile, capture and check it now, with a
    two-token answer, so that the first real answer starts at full speed. Returns a line saying what was
    done (or why the step was not compiled), None where the path needs no preparing."""
    if not needs_warm_up(loaded, decode):
        return None
    t0 = time.perf_counter()
    r = answer(loaded, WARM_UP_CASE, SamplingSettings(temperature=0, max_new_tokens=2), ignore_eos=True,
               decode=decode)
    took = time.perf_counter() - t0
    if r.stats.decode_path == "fused":
        return f"decode step compiled and checked in {took:.0f} s"
    refused = [n for n in r.stats.notes if n != FIRST_COMPILE]
    return "; ".join(refused) or f"decoding on the {r.stats.decode_path} path"


def answer(loaded: LoadedModel, question: str, settings: SamplingSettings | None = None, **kw) -> GenerationResult:
    """The whole answer at once (evaluation, tests)."""
    result = None
    for event in stream_answer(loaded, question, settings, **kw):
        if isinstance(event, StreamDone):
            result = event.result
    assert result is not None
    return result


def _context_limit(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None)


# ---------------------------------------------------------------- our own decode loop


def _tokens_via_loop(loaded: LoadedModel, input_ids, settings: SamplingSettings, max_new: int,
                     cancel: threading.Event, ignore_eos: bool, use_graph: bool, notes: list[str],
                     compile_step: bool = False) -> Iterator[int]:
    import torch

    model = loaded.model
    dec = loaded.decoder
    if not isinstance(dec, StaticDecoder) or dec.use_graph != use_graph or dec.compile_step != compile_step:
        if dec is not None:
            dec.close()  # free the other path's cache (and graph pool) first
        dec = loaded.decoder = StaticDecoder(model, loaded.device, use_graph, compile_step=compile_step)
    gen = make_generator(settings, loaded.device)
    suppress = torch.tensor(sorted(loaded.eos_ids), device=loaded.device) if ignore_eos and loaded.eos_ids else None
    cuda = loaded.device == "cuda"
    host = torch.empty((1, 1), dtype=torch.long, pin_memory=cuda)
    ready = torch.cuda.Event() if cuda else None
    penalty = resolve_repetition_penalty(settings, model)
    n_prompt = int(input_ids.shape[1])
    # the ids so far, on the device, for the repetition penalty (as generate applies it)
    history = None
    if penalty != 1.0:
        history = torch.empty((1, n_prompt + max_new + 1), dtype=torch.long, device=loaded.device)
        history[:, :n_prompt] = input_ids

    def pick(logits, n_seen: int):
        seen = history[:, :n_seen] if history is not None else None
        return sample_next(logits, settings, gen, suppress, seen, penalty)

    with torch.no_grad():
        dec.prepare(n_prompt + max_new + 1)
        if dec.will_compile and max_new > 1:
            notes.append(FIRST_COMPILE)
        logits = dec.prefill(input_ids)
        tok = pick(logits, n_prompt)
        produced = 0
        while True:
            if history is not None:
                history[:, n_prompt + produced] = tok.reshape(-1)
            host.copy_(tok, non_blocking=cuda)
            if cuda:
                ready.record()
            produced += 1
            more = produced < max_new and not cancel.is_set()
            if more and dec.graph is not None and produced > 1:
                # Queue step t+1 before reading token t: the GPU works while the host detokenises.
                # (Not for the first token: nothing may stand between the prefill and the user's first
                # token; measured on an H100, queueing the step first cost ~55 ms of time to first token.)
                logits = dec.step(tok)
                tok = pick(logits, n_prompt + produced)
                if cuda:
                    ready.synchronize()
                tid = int(host.item())
                yield tid
                if tid in loaded.eos_ids and not ignore_eos:
                    return
                continue
            if cuda:
                ready.synchronize()
            tid = int(host.item())
            yield tid
            if not more or (tid in loaded.eos_ids and not ignore_eos) or cancel.is_set():
                return
            logits = dec.step(tok)
            if dec.compile_failed and not any(n.startswith(COMPILE_OFF) for n in notes):
                notes.append(f"{COMPILE_OFF} ({dec.compile_failed}); the decode step runs uncompiled")
            if dec.graph_failed and not any(n.startswith(GRAPH_OFF) for n in notes):
                notes.append(f"{GRAPH_OFF} ({dec.graph_failed}); decoding eagerly")
            tok = pick(logits, n_prompt + produced)


# ---------------------------------------------------------------- generate() in a helper thread


class _CancelCriteria:
    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


class _QueueStreamer:
    """transformers' streamer protocol: ``put`` gets the prompt once, then each new token."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.seen_prompt = False

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for tid in value.reshape(-1).tolist():
            self.q.put(int(tid))

    def end(self) -> None:
        self.q.put(None)


_seed_lock = threading.Lock()


def _tokens_via_compiled(loaded: LoadedModel, input_ids, settings: SamplingSettings, max_new: int,
                         cancel: threading.Event, ignore_eos: bool, notes: list[str]) -> Iterator[int]:
    """transformers' static cache + torch.compile (reduce-overhead), as transformers documents it: a
    static-cache ``generate`` compiles its decode step; here always in the same thread."""
    from transformers import CompileConfig

    dec = loaded.decoder
    if not isinstance(dec, CompiledDecoder):
        if dec is not None:
            dec.close()
        dec = loaded.decoder = CompiledDecoder()
    if loaded.device != "cuda":
        notes.append("no torch.compile on the CPU: transformers' static cache, uncompiled")
    elif dec.calls == 0:
        notes.append(FIRST_COMPILE)
    if dec.failed:
        notes.append(f"{COMPILE_OFF} ({dec.failed}); decoding with transformers' generate")
        yield from _tokens_via_generate(loaded, input_ids, settings, max_new, cancel, ignore_eos)
        return
    n_prompt = int(input_ids.shape[1])
    extra = dict(cache_implementation="static", max_cache_len=dec.cache_len(n_prompt + max_new + 1))
    if loaded.device == "cuda":
        extra["compile_config"] = CompileConfig(**COMPILE_CONFIG)
    dec.calls += 1
    inner = _tokens_via_generate(loaded, input_ids, settings, max_new, cancel, ignore_eos, extra=extra,
                                 submit=dec.submit)
    produced: list[int] = []
    try:
        for tid in inner:
            produced.append(tid)
            yield tid
        return
    except Exception as exc:  # compiling is an optimisation: go on without it from where it stopped, and say why
        dec.failed = first_line(exc)
        notes.append(f"{COMPILE_OFF} ({dec.failed}); decoding with transformers' generate")
    finally:
        inner.close()
    rest = max_new - len(produced)
    if rest > 0 and not cancel.is_set():
        import torch

        done = torch.tensor([produced], dtype=input_ids.dtype, device=input_ids.device)
        yield from _tokens_via_generate(loaded, torch.cat([input_ids, done], dim=1), settings, rest, cancel, ignore_eos)


def _tokens_via_generate(loaded: LoadedModel, input_ids, settings: SamplingSettings, max_new: int,
                         cancel: threading.Event, ignore_eos: bool, extra: dict | None = None,
                         submit=None) -> Iterator[int]:
    """``generate`` in a helper thread (``submit``: hand the work to a long-lived thread instead)."""
    import torch
    from transformers import StoppingCriteriaList

    streamer = _QueueStreamer()
    stop = threading.Event()
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new,
        streamer=streamer, stopping_criteria=StoppingCriteriaList([_CancelCriteria(_either(cancel, stop))]),
        eos_token_id=list(loaded.eos_ids), pad_token_id=loaded.tokenizer.pad_token_id,
    )
    if settings.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                      top_k=settings.top_k or None)
    # explicit, so that generate applies what the other paths apply (not only what the model's config says)
    kwargs["repetition_penalty"] = resolve_repetition_penalty(settings, loaded.model)
    if ignore_eos:
        kwargs["min_new_tokens"] = max_new
    kwargs.update(extra or {})
    failure: list[BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            with torch.no_grad():
                if settings.seed is not None:
                    with _seed_lock:
                        torch.manual_seed(settings.seed)
                loaded.model.generate(**kwargs)
        except BaseException as exc:  # re-raised in the consumer's thread
            failure.append(exc)
        finally:
            streamer.q.put(None)
            done.set()

    if submit is None:
        threading.Thread(target=work, name="medtui-generate", daemon=True).start()
    else:
        submit(work)
    try:
        while True:
            tid = streamer.q.get()
            if tid is None:
                break
            yield tid
    finally:
        stop.set()
        done.wait()
    if failure:
        raise failure[0]


class _either:
    """Set when either event is: the user's cancel, or the consumer having stopped reading."""

    def __init__(self, a: threading.Event, b: threading.Event):
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()
