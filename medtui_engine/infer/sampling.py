"""Choosing the next token on the device: greedy, or temperature + top-k + top-p (nucleus) sampling,
without a host synchronisation (so the GPU can run ahead of the host)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import UserError


@dataclass(frozen=True)
class SamplingSettings:
    """The seed's console defaults: sampling at temperature 0.3, top_p 0.9, up to 1024 new tokens.

    top_k 50 is what the seed's ``pipeline`` applied without saying (transformers' default); 0 turns it off.
    ``repetition_penalty`` None takes the model's own (its ``generation_config.json``; Qwen2.5-Instruct
    ships 1.05), else 1.0: every decode path applies the same value (:func:`resolve_repetition_penalty`).
    """

    temperature: float = 0.3
    top_p: float = 0.9
    max_new_tokens: int = 1024
    seed: int | None = None
    top_k: int = 50  # 0: off
    repetition_penalty: float | None = None  # None: the model's generation config (1.0 where it has none)

    def problems(self) -> list[str]:
        out = []
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and 0 <= self.temperature <= 5):
            out.append("temperature must be between 0 (greedy) and 5")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            out.append("top_p must be above 0 and at most 1")
        if not (isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= 32768):
            out.append("max_new_tokens must be a whole number from 1 to 32768")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            out.append("top_k must be 0 (off) or a positive whole number")
        rp = self.repetition_penalty
        if rp is not None and not (isinstance(rp, (int, float)) and math.isfinite(rp) and 0.5 <= rp <= 2):
            out.append("repetition_penalty must be between 0.5 and 2 (1 = off), or empty for the model's own")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            out.append("seed must be a non-negative whole number, or empty")
        return out

    def checked(self) -> SamplingSettings:
        problems = self.problems()
        if problems:
            raise UserError("sampling settings: " + "; ".join(problems))
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict:
        return asdict(self)



def resolve_repetition_penalty(settings: SamplingSettings, model) -> float:
    """The penalty every path applies: the setting, else the model's generation config, else 1.0."""
    if settings.repetition_penalty is not None:
        return float(settings.repetition_penalty)
    cfg = getattr(model, "generation_config", None)
    value = getattr(cfg, "repetition_penalty", None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else 1.0


def apply_repetition_penalty(logits, seen, penalty: float):
    """transformers' rule (CTRL, Keskar et al. 2019), in place: the logit of every token already in the
    prompt or the answer is divided by ``penalty`` where positive, multiplied where negative."""
    import torch

    score = logits.gather(-1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    logits.scatter_(-1, seen, score)
    return logits


def sample_next(logits, settings: SamplingSettings, generator, suppress, seen=None, penalty: float = 1.0):
    """One next token id on the device (shape (1, 1)); no host synchronisation.

    ``seen`` (shape (1, n)): the ids so far, for a ``penalty`` other than 1.0."""
    import torch

    logits = logits.float()
    if seen is not None and penalty != 1.0:
        apply_repetition_penalty(logits, seen, penalty)
    if suppress is not None:
        logits.index_fill_(-1, suppress, float("-inf"))
    if settings.greedy:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / settings.temperature
    if settings.top_k:
        # top-k first (transformers' default of 50, which the seed's pipeline applied implicitly),
        # then the nucleus inside it: no sort of the whole vocabulary.
        vals, idx = torch.topk(logits, min(settings.top_k, logits.shape[-1]), dim=-1)
        probs = vals.softmax(dim=-1)
        if settings.top_p < 1.0:
            probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > settings.top_p, 0.0)
        return idx.gather(-1, torch.multinomial(probs, 1, generator=generator))
    if settings.top_p < 1.0 and logits.device.type != "cuda":
        return _sample_nucleus_cpu(logits, settings.top_p, generator)
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > settings.top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def _sample_nucleus_cpu(logits, top_p: float, generator):
    """The same nucleus as the sort above, found by widening top-k until it holds top_p of the mass:
    a full sort of a 150k vocabulary costs ~60 ms per token on a CPU, a top-256 about 1 ms."""
    import torch

    probs = logits.softmax(dim=-1)
    vocab = probs.shape[-1]
    k = 256
    while True:
        k = min(k, vocab)
        vals, idx = torch.topk(probs, k, dim=-1)
        if k == vocab or float(vals.sum()) >= top_p:
            break
        k *= 8
    keep = (vals.cumsum(dim=-1) - vals) <= top_p
    vals = vals.masked_fill(~keep, 0.0)
    pick = torch.multinomial(vals, 1, generator=generator)
    return idx.gather(-1, pick)


def make_generator(settings: SamplingSettings, device: str):
    import torch

    if settings.greedy:
        return None
    gen = torch.Generator(device=device)
    if settings.seed is not None:
        gen.manual_seed(settings.seed)
    else:
        gen.seed()
    return gen
