"""The stop-token contract: which token ids end an answer, and whether a model's files agree on them.

Three places name the end of an answer: the generation config's end ids (``generation_config.json``,
else ``config.json``: what transformers, vLLM and most runtimes stop on), the tokenizer's EOS token,
and the template's end-of-turn token (what training appended to every answer: the tokenizer's EOS
for ``seed``, ``<|im_end|>`` for ``chat`` on Qwen; see :func:`medtui_engine.templates.eos_text`).
With ``chat`` the model's own chat template closes an assistant turn with a token too; it must be
the same one. The contract:

1. the tokenizer has an EOS token, and the template's end-of-turn is one token of its vocabulary;
2. the generation config's end ids are tokens of this tokenizer, and special ones (an ordinary token
   as an end id cuts every answer at that word);
3. the generation config's end ids include the tokenizer's EOS and the template's end-of-turn;
4. with ``chat``, the chat template closes a turn with the template's end-of-turn token.

Whatever the files say, medtui stops on the template's end-of-turn and the tokenizer's EOS
(:attr:`StopContract.stop_ids`): a ``chat`` run on a base Qwen, whose generation config names only
``<|endoftext|>``, still stops at ``<|im_end|>``. What medtui writes (a merged model's
``generation_config.json``, the demo model) keeps the contract; a user's model that breaks it is
named by ``medtui check --model DIR`` with the fix in words.

No torch here: a tokenizer object (or a model directory, read with transformers' tokenizer) is
enough. Used by the loader (console, ask, eval), the merge (what it writes, what it verifies) and
the environment check.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .paths import PROVENANCE_FILE
from .templates import TEMPLATES, TemplateError, eos_text

# Tokens a Qwen-family runtime may end an answer with; a merged model's generation config lists the
# ones its vocabulary has, after the contract's own (so any of them stops where training ended).
QWEN_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_MARK = "MEDTUI_END_OF_TURN_PROBE"


@dataclass(frozen=True)
class StopIssue:
    severity: str      # "warning" | "problem"
    what: str          # the mismatch, in words
    fix: str           # what to change, in words


@dataclass(frozen=True)
class StopContract:
    template: str
    turn_end: str | None               # the template's end-of-turn token
    turn_end_id: int | None
    tokenizer_eos: str | None
    tokenizer_eos_id: int | None
    config_eos_ids: tuple[int, ...]    # the generation config's end ids, as the files give them
    config_source: str                 # "generation_config.json" | "config.json" | "generation config" | "none"
    chat_turn_end: str | None          # what the model's chat template closes an assistant turn with
    stop_ids: tuple[int, ...]          # what medtui stops on: end-of-turn first, then EOS, then valid config ids
    issues: tuple[StopIssue, ...] = field(default_factory=tuple)
    tokens: dict[int, str] = field(default_factory=dict)   # id -> token text, for the ids above

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def verdict(self) -> str:
        if any(i.severity == "problem" for i in self.issues):
            return "problem"
        return "warning" if self.issues else "ok"

    @property
    def added(self) -> tuple[int, ...]:
        """Stop ids medtui adds that the generation config does not list."""
        return tuple(i for i in self.stop_ids if i not in self.config_eos_ids)

    @property
    def ignored(self) -> tuple[int, ...]:
        """End ids of the generation config that medtui does not stop on (ordinary or unknown tokens)."""
        return tuple(i for i in self.config_eos_ids if i not in self.stop_ids)

    def name(self, token_id: int) -> str:
        return f"{self.tokens.get(token_id, '?')} ({token_id})"

    def summary(self) -> str:
        """One sentence: what ends an answer, and where the files disagree."""
        ids = ", ".join(self.name(i) for i in self.stop_ids) or "none"
        head = f"template {self.template}: stops on {ids}"
        if not self.issues:
            return head + f"; {self.config_source}, tokenizer and template agree"
        return head + "; " + "; ".join(i.what for i in self.issues)

    def fixes(self) -> str:
        return "; ".join(dict.fromkeys(i.fix for i in self.issues if i.fix))

    def notes(self) -> list[str]:
        """What a loaded model's user is told (the console's status line, the ask/eval records)."""
        out = []
        if self.added:
            out.append("also stops on " + ", ".join(self.name(i) for i in self.added) +
                       f" (not in {self.config_source})")
        if self.ignored:
            out.append("does not stop on " + ", ".join(self.name(i) for i in self.ignored) +
                       f" (in {self.config_source}, but not an end-of-text token)")
        out += [i.what for i in self.issues if i.severity == "problem"]
        return out

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tokens"] = {str(k): v for k, v in self.tokens.items()}
        d["verdict"] = self.verdict
        return json.loads(json.dumps(d))   # lists, not tuples: the same after a round trip through medtui.json


def _ids(value: Any) -> tuple[int, ...]:
    vals = value if isinstance(value, (list, tuple)) else [value]
    return tuple(dict.fromkeys(int(v) for v in vals if isinstance(v, int) and not isinstance(v, bool)))


def chat_turn_end(tokenizer) -> str | None:
    """The token the model's chat template writes right after an assistant's answer (None without
    a chat template, or when what follows is not one added token)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}],
                                             tokenize=False)
    except Exception:  # a template that needs other roles or fields: nothing to compare
        return None
    at = text.rfind(_MARK)
    if at < 0:
        return None
    rest = text[at + len(_MARK):].lstrip(" ")
    for tok in sorted(tokenizer.get_added_vocab(), key=len, reverse=True):
        if tok and rest.startswith(tok):
            return tok
    eos = tokenizer.eos_token
    return eos if eos and rest.startswith(eos) else None


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    ids.update(tokenizer.get_added_vocab().values())
    return ids


def check_contract(tokenizer, template: str, config_eos: Any, config_source: str = "generation config") -> StopContract:
    """The contract for one tokenizer, template and generation-config end ids (an int, a list or None)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}")
    vocab = tokenizer.get_vocab()
    size = len(tokenizer)
    special = _special_ids(tokenizer)
    config_ids = _ids(config_eos)
    where = config_source if config_source.endswith(".json") else f"the {config_source}"
    issues: list[StopIssue] = []
    tokens: dict[int, str] = {}

    def text_of(i: int) -> str:
        if i not in tokens:
            t = tokenizer.convert_ids_to_tokens(i) if 0 <= i < size else None
            tokens[i] = t if isinstance(t, str) else "?"
        return tokens[i]

    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos_id is not None:
        text_of(eos_id)
    try:
        turn_end = eos_text(tokenizer, template) or None
    except TemplateError:
        turn_end = None
    turn_id = vocab.get(turn_end) if turn_end else None
    if turn_id is not None:
        text_of(turn_id)
    if eos_id is None:
        issues.append(StopIssue("problem" if template == "seed" else "warning",
                                "the tokenizer has no EOS token",
                                "set eos_token in tokenizer_config.json to the token that ends an answer"))
    if turn_end and turn_id is None:
        issues.append(StopIssue("problem", f"the template's end of turn {turn_end} is not one token of the vocabulary",
                                "use a tokenizer that has it as a special token, or the other template"))

    valid = [i for i in config_ids if 0 <= i < size and i in special]
    stop = tuple(dict.fromkeys(i for i in (turn_id, eos_id, *valid) if i is not None))
    set_ids = f"set eos_token_id in {where} to {_id_list(stop)}"
    for i in config_ids:
        if not 0 <= i < size:
            issues.append(StopIssue("warning", f"{where} names end id {i}, which is not a token of this "
                                               f"tokenizer ({size} tokens)", set_ids))
        elif i not in special:
            issues.append(StopIssue("warning", f"{where} names end id {i} ({text_of(i)}), an ordinary "
                                               "token: runtimes that read it cut answers at that text; medtui does not "
                                               "stop on it", set_ids))
        else:
            text_of(i)
    wanted = tuple(dict.fromkeys(i for i in (turn_id, eos_id) if i is not None))
    missing = [i for i in wanted if i not in config_ids]
    if not config_ids:
        issues.append(StopIssue("warning", f"{where} names no end id: runtimes that read it never stop "
                                           "by themselves",
                                set_ids))
    elif missing:
        what = []
        if turn_id in missing:
            what.append(f"the template's end of turn {text_of(turn_id)} ({turn_id})")
        if eos_id in missing and eos_id != turn_id:
            what.append(f"the tokenizer's EOS {text_of(eos_id)} ({eos_id})")
        issues.append(StopIssue("warning", f"{where} ends on {list(config_ids)}, leaving out "
                                           + " and ".join(what) + ": runtimes that read it run past the end of the answer"
                                           " (medtui stops there itself)",
                                set_ids))

    chat_end = chat_turn_end(tokenizer) if template == "chat" else None
    if template == "chat" and chat_end and turn_end and chat_end != turn_end:
        issues.append(StopIssue("warning", f"the chat template closes a turn with {chat_end}, but medtui's chat "
                                           f"template trains the model to end with {turn_end}",
                                "use the seed template with this model, or a tokenizer whose chat template ends "
                                f"turns with {turn_end}"))
    return StopContract(template, turn_end, turn_id, eos, eos_id, config_ids, config_source, chat_end, stop,
                        tuple(issues), tokens)


def _id_list(ids) -> str:
    ids = list(ids)
    return str(ids[0]) if len(ids) == 1 else str(ids)


def config_eos_of_dir(model_dir: Path) -> tuple[Any, str]:
    """The end ids a runtime reads from a model directory, and which file gave them."""
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return None, f"{name} (unreadable)"
        if isinstance(data, dict) and (name == "generation_config.json" or "eos_token_id" in data):
            return data.get("eos_token_id"), name
    return None, "none"


def config_eos_of_model(model) -> tuple[Any, str]:
    """The end ids of a loaded model's generation config (transformers fills it from config.json when
    the directory has no generation_config.json)."""
    gc = getattr(model, "generation_config", None)
    return (getattr(gc, "eos_token_id", None) if gc is not None else None), "generation config"


def contract_for_dir(model_dir: Path, template: str, tokenizer=None) -> StopContract:
    """The contract of a model directory's files (the tokenizer read with transformers)."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids, source = config_eos_of_dir(Path(model_dir))
    return check_contract(tokenizer, template, ids, source)


def templates_for_dir(model_dir: Path, tokenizer=None, preferred: str | None = None) -> list[str]:
    """The templates a model directory can be used with: the one its medtui.json records (a merged
    model), else ``preferred`` and, where the tokenizer has a chat template, ``chat`` too."""
    try:
        recorded = json.loads((Path(model_dir) / PROVENANCE_FILE).read_text(encoding="utf-8")).get("template")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded in TEMPLATES:
        return [recorded]
    out = [preferred if preferred in TEMPLATES else "seed"]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None) and "chat" not in out:
        out.append("chat")
    return out


def written_eos_ids(tokenizer, template: str, base_config_eos: Any = None) -> list[int]:
    """The end ids medtui writes into a model's generation_config.json: the contract's stop ids
    (end-of-turn, tokenizer EOS, the base's valid end ids), then Qwen's end tokens the vocabulary has."""
    contract = check_contract(tokenizer, template, base_config_eos)
    vocab = tokenizer.get_vocab()
    ids = list(contract.stop_ids)
    for text in QWEN_END_TOKENS:
        if text in vocab and vocab[text] not in ids:
            ids.append(vocab[text])
    return ids


# Set in the environment of a second try with torch importable (see main).
WITH_TORCH_ENV = "MEDTUI_STOPTOKENS_WITH_TORCH"


def main(argv: list[str] | None = None) -> int:
    """``python -m medtui_engine.stoptokens MODEL_DIR [TEMPLATE]``: the contract(s) of a model
    directory as JSON (run in a subprocess by ``medtui check --model``, which imports no ML library).

    A tokenizer needs no torch, and transformers imports torch whenever it is installed: that import was
    most of this process's time (7.5 -> 3.3 CPU-seconds on the 2-core VM). So torch is marked absent
    before transformers is imported; should a tokenizer need it after all, the process starts again
    with torch importable (``WITH_TORCH_ENV``) and answers from there."""
    import os
    import sys

    from .offline import apply_offline

    argv = sys.argv[1:] if argv is None else argv
    apply_offline()
    torch_free = not os.environ.get(WITH_TORCH_ENV) and not any(m in sys.modules for m in ("torch", "transformers"))
    if torch_free:
        sys.modules["torch"] = None   # find_spec() says "not installed": transformers keeps to tokenizers
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")   # its "PyTorch was not found" notice
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model_dir = Path(argv[0])
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception:
        if not torch_free:
            raise
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "medtui_engine.stoptokens", *argv],
                  {**os.environ, WITH_TORCH_ENV: "1"})
    out = [contract_for_dir(model_dir, t, tok).as_dict()
           for t in templates_for_dir(model_dir, tok, argv[1] if len(argv) > 1 else None)]
    print(json.dumps(out, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
