"""Many cases at once: prompts padded on the left and decoded together by ``generate``, each case
stopping at its own end token, for the evaluation and comparisons (not the console, which streams).

Greedy answers equal the one-at-a-time answers within numerics (a test holds them to it). Cases are
sorted by prompt length before batching so that a batch pads little, and come back in the order given.
The sampling is the same as on every other path (``SamplingSettings``, the repetition penalty resolved
once). The batch's wall time is shared by its cases: ``BatchResult`` says how many cases a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import UserError
from ..vram import ModelShape
from .decoder import CompiledDecoder, compiled_cache_len
from .loader import LoadedModel
from .sampling import SamplingSettings, resolve_repetition_penalty
from .stream import (
    COMPILE_CONFIG,
    GenerationResult,
    GenerationStats,
    IncrementalDetokenizer,
    build_prompt,
    repetition_penalty_note,
)

DEFAULT_BATCH = 16
# The evaluation's batch on a GPU when the user does not say (``fit_batch``): at most this many cases, their
# KV cache within this share of the memory free after loading. Measured (``medtui bench eval``, H200,
# 2026-12-02, Qwen2.5-7B shape, 64 cases x 256 new tokens): 64 on the compiled static cache 390.9 cases/min,
# 12.5x one at a time (31.2, graph decode); 64 uncompiled 181.4 (5.8x); peak 23.5 GiB.
EVAL_MAX_BATCH = 64
EVAL_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class BatchResult:
    results: list[GenerationResult]   # in the order of the questions given (after a cancel: those answered)
    seconds: float
    batches: int

    @property
    def cases_per_minute(self) -> float | None:
        return 60.0 * len(self.results) / self.seconds if self.seconds > 0 and self.results else None


class _Cancel:
    """generate's stopping criterion: every row stops when the user's cancel is set."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


def answer_batch(loaded: LoadedModel, questions: Sequence[str], settings: SamplingSettings | None = None, *,
                 batch_size: int = DEFAULT_BATCH, cancel: threading.Event | None = None,
                 on_batch: Callable[[list[int], list[GenerationResult]], None] | None = None,
                 ignore_eos: bool = False, compiled: bool = False) -> BatchResult:
    """Answer ``questions`` ``batch_size`` at a time. ``on_batch(indices, results)`` is called after each
    batch (a job saves those answers at once); a cancelled batch's cases come back with finish_reason
    "cancelled" and the rest are not started. ``ignore_eos`` decodes every case to ``max_new_tokens``
    (benchmarks on random weights). ``compiled``: transformers' static cache, its decode step compiled by
    torch.compile on a GPU (``stream.COMPILE_CONFIG``), in the compiled path's long-lived thread."""
    import torch
    from transformers import StoppingCriteriaList

    settings = (settings or SamplingSettings()).checked()
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1 (got {batch_size})")
    cancel = cancel or threading.Event()
    tok = loaded.tokenizer
    prompts = [build_prompt(loaded, q) for q in questions]
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    limit = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    eos = list(loaded.eos_ids)
    eos_set = set(eos)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    penalty = resolve_repetition_penalty(settings, loaded.model)
    penalty_note = repetition_penalty_note(settings, loaded.model)
    results: list[GenerationResult | None] = [None] * len(prompts)
    t_all = time.perf_counter()
    batches = 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if cancel.is_set():
            break
        batches += 1
        longest = max(lengths[i] for i in idx)
        max_new = settings.max_new_tokens
        notes: list[str] = [penalty_note] if penalty_note else []
        if limit and longest >= limit:
            worst = max(idx, key=lambda i: lengths[i])
            raise UserError(f"case {worst + 1}: the prompt is {longest} tokens, more than the model's context of "
                            f"{limit}: shorten it")
        if limit and longest + max_new > limit:
            max_new = limit - longest
            notes.append(f"max_new_tokens lowered to {max_new} to fit the model's context of {limit}")
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=False)
        input_ids = enc["input_ids"].to(loaded.device)
        mask = enc["attention_mask"].to(loaded.device)
        kwargs = dict(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, eos_token_id=eos,
                      pad_token_id=pad_id, repetition_penalty=penalty,
                      stopping_criteria=StoppingCriteriaList([_Cancel(cancel)]))
        if ignore_eos:
            kwargs["min_new_tokens"] = max_new
        if settings.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                          top_k=settings.top_k or None)
        if compiled:
            dec = _compiled_decoder(loaded)
            kwargs.update(cache_implementation="static", max_cache_len=dec.cache_len(longest + max_new + 1))
            if loaded.device == "cuda":
                from transformers import CompileConfig

                kwargs["compile_config"] = CompileConfig(**COMPILE_CONFIG)
        t0 = time.perf_counter()

        def run(kwargs=kwargs):
            with torch.no_grad():
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
                return loaded.model.generate(**kwargs)

        out = _in_thread(dec.submit, run) if compiled else run()
        seconds = time.perf_counter() - t0
        new = out[:, input_ids.shape[1]:].tolist()
        done: list[GenerationResult] = []
        for row, i in enumerate(idx):
            ids = new[row]
            end = None if ignore_eos else next((n for n, t in enumerate(ids) if t in eos_set), None)
            if end is not None:
                ids, finish = ids[:end], "eos"
            elif len(ids) >= max_new:
                finish = "length"
            else:  # generate stopped this row early without an end token: only the cancel does that
                finish = "cancelled"
            text = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            stats = GenerationStats(
                prompt_tokens=lengths[i], output_tokens=len(ids), ttft_s=None, total_s=seconds,
                decode_tokens_per_s=None, finish_reason=finish, think_tokens=_think_tokens(tok, ids),
                decode_path=f"batched ({len(idx)}{', compiled' if compiled else ''})", notes=tuple(notes))
            result = GenerationResult(questions[i], prompts[i], loaded.source.template, text, stats, loaded.label,
                                      settings)
            results[i] = result
            done.append(result)
        if on_batch is not None:
            on_batch(list(idx), done)
    return BatchResult([r for r in results if r is not None], time.perf_counter() - t_all, batches)


def kv_bytes_per_token(config) -> int:
    """Bytes of KV cache one position of one case takes, for a transformers config (``ModelShape``'s figure)."""
    return ModelShape.from_config(config.to_dict()).kv_bytes_per_token


def fit_batch(loaded: LoadedModel, questions: Sequence[str], max_new_tokens: int, free_bytes: int | None = None,
              cap: int = EVAL_MAX_BATCH) -> int:
    """How many of ``questions`` to decode together on a GPU (the compiled static cache): up to ``cap``, and
    no more than the KV cache of EVAL_MEMORY_SHARE of the free memory holds, each case's cache as long as the
    compiled path makes it (the longest prompt plus ``max_new_tokens``, rounded up as ``CompiledDecoder`` does).
    ``free_bytes``: the GPU's free memory (read from CUDA when None). Never less than 1."""
    if not questions:
        return 1
    tok = loaded.tokenizer
    longest = max(len(tok(build_prompt(loaded, q), add_special_tokens=False)["input_ids"]) for q in questions)
    shape = ModelShape.from_config(loaded.model.config.to_dict())
    # each case's cache, plus the step's fp32 logits and scores
    per_case = compiled_cache_len(longest + max_new_tokens + 1) * shape.kv_bytes_per_token + 8 * shape.vocab
    if free_bytes is None:
        import torch

        free_bytes = int(torch.cuda.mem_get_info()[0])
    fit = int(free_bytes * EVAL_MEMORY_SHARE // max(per_case, 1))
    return max(1, min(cap, len(questions), fit))


def _compiled_decoder(loaded: LoadedModel) -> CompiledDecoder:
    dec = loaded.decoder
    if not isinstance(dec, CompiledDecoder):
        if dec is not None:
            dec.close()
        dec = loaded.decoder = CompiledDecoder()
    return dec


def _in_thread(submit, fn):
    """``fn()`` run by ``submit`` (the compiled path's own thread), its result or exception handed back."""
    box: list = []
    done = threading.Event()

    def job() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # re-raised in the caller's thread
            box.append((False, exc))
        finally:
            done.set()

    submit(job)
    done.wait()
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _think_tokens(tok, ids: list[int]) -> int | None:
    """Tokens up to and including the one that closes ``</think>``, counted as the streaming path counts."""
    detok = IncrementalDetokenizer(tok)
    tail = ""
    for n, t in enumerate(ids, start=1):
        tail = (tail + detok.push(t))[-16:]
        if "</think>" in tail:
            return n
    return None
