"""GGUF files of a merged model, written in-process with the ``gguf`` library, verified, with an
Ollama ``Modelfile`` beside each.

What is written (one file per type, ``gguf/NAME-TYPE.gguf`` in the merged directory):

* weights: 2-D tensors in the chosen type (F16, BF16, Q8_0, Q5_x, Q4_x: the types the ``gguf``
  library quantizes in Python), 1-D tensors (norms, biases) in F32; a matrix whose rows do not split
  into the type's blocks stays F16. Tensor names come from the library's own table for the
  architecture (``gguf.get_tensor_name_map``); Llama's query and key rows are reordered into the
  interleaved rotary layout GGUF runtimes expect (Qwen's are not: they use the split layout).
* hyperparameters under the architecture's keys (context length, heads, rope base, norm epsilon ...);
* the tokenizer as ``gpt2`` BPE: every token with its type (control, user-defined, normal, unused
  padding up to the embedding's rows), the merges, a pre-tokenizer name read from the tokenizer's
  splitting rule, BOS/EOS/EOT/padding ids from the stop-token contract (``medtui_engine.stoptokens``:
  EOS and EOT are the template's end of turn), and a chat template that renders what medtui renders
  (``seed``: the seed prompt around the last user message; ``chat``: the model's own chat template
  with medtui's system prompt when the conversation has none).

Each file is written under a hidden temporary name and renamed when complete. Verification runs in
a fresh process (``python -m medtui_engine.merge.gguf_export verify MODEL_DIR GGUF...``): the GGUF is
loaded back with transformers' GGUF loader and its logits on rendered prompts are compared with the
merged model's (both in float32), within a tolerance per type relative to the largest logit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..templates import CHAT_SYSTEM, check_template, render_prompt
from .verify import MIN_TOP1_DECISIVE, top1_figures

GGUF_DIR = "gguf"
# what ``--gguf`` accepts, in the order the files are written
GGUF_TYPES = ("f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "f32")
DEFAULT_GGUF = "f16"
# Per type: the most |logit diff| over the largest |logit| of the merged model. 16-bit types carry the
# merged weights exactly (bf16 -> f16 is exact in range); quantized types lose precision (measured:
# q8_0 0.08 on SmolLM2-135M, 0.12 on a random-weight Qwen2.5-7B shape; q4_0 0.10 on the demo model). A
# wrong tensor name, layout or hyperparameter gives differences of the order of the logits themselves.
# Top-1 agreement is judged, as for the merge, at decisive positions only (merge.verify.top1_figures):
# over all positions it depends on how many near-ties the model has (78% on random 7B weights at q8_0,
# 96% on SmolLM2), which says nothing about the file.
TOLERANCE = {"f32": 1e-3, "f16": 1e-3, "bf16": 1e-3, "q8_0": 0.15, "q5_1": 0.3, "q5_0": 0.3,
             "q4_1": 0.5, "q4_0": 0.5}
# the model types whose tensors and hyperparameters are mapped here (config.json's model_type)
ARCHITECTURES = ("qwen2", "qwen3", "llama")
VERIFY_QUESTIONS = ("男，45岁，反复上腹痛3月，进食后加重，伴反酸。", "A 60-year-old woman with sudden chest pain and dyspnoea.")
_QUESTION_SLOT = "MEDTUI_QUESTION_SLOT"


class GGUFError(UserError):
    """A model that cannot be written as GGUF here (architecture, rope scaling, tokenizer)."""


# ------------------------------------------------------------------------------------ requests

def parse_types(value) -> list[str]:
    """``"f16,q8_0"`` (or a list, or True for the default) -> ``["f16", "q8_0"]``; a clear message
    for anything else."""
    if value in (None, False, "", []):
        return []
    if value is True:
        return [DEFAULT_GGUF]
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for raw in items:
        t = str(raw).strip().lower().replace("-", "_")
        if not t:
            continue
        if t == "fp16":
            t = "f16"
        if t not in GGUF_TYPES:
            raise UserError(f"--gguf {raw}: unknown GGUF type; choose from {', '.join(GGUF_TYPES)} "
                            "(comma-separated, e.g. --gguf f16,q8_0)")
        if t not in out:
            out.append(t)
    return out


def gguf_bytes(gtype: str, params: int) -> int:
    """About how large a GGUF of ``params`` parameters is in ``gtype`` (for the disk check)."""
    per = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32, "q4_1": 20 / 32,
           "q4_0": 18 / 32}[gtype]
    return int(params * per)


def _read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GGUFError(f"{path} is missing: {model_dir} is not a Hugging Face model directory (a merged model "
                        "has config.json, the safetensors weights and the tokenizer)") from None
    except (OSError, ValueError) as exc:
        raise GGUFError(f"{path} is unreadable ({exc}): fix or re-create the merged model") from None
    if not isinstance(cfg, dict):
        raise GGUFError(f"{path} is not a JSON object: fix or re-create the merged model")
    return cfg


def rope_theta(cfg: dict) -> float:
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    return float(cfg.get("rope_theta") or rp.get("rope_theta") or 10000.0)


def check_exportable(model_dir: Path, cfg: dict | None = None) -> str:
    """The model type to export (qwen2 | qwen3 | llama); GGUFError naming the field otherwise."""
    model_dir = Path(model_dir)
    cfg = cfg if cfg is not None else _read_config(model_dir)
    mt = str(cfg.get("model_type") or "")
    if mt not in ARCHITECTURES:
        raise GGUFError(f"{model_dir}/config.json: model_type {mt or '(none)'!r} cannot be written as GGUF by medtui "
                        f"(it maps {', '.join(ARCHITECTURES)}); the merged model itself serves with transformers or vLLM")
    if cfg.get("quantization_config"):
        raise GGUFError(f"{model_dir}/config.json has quantization_config: GGUF is written from 16-bit weights only")
    rp = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rtype = rp.get("rope_type") or rp.get("type") or "default"
    if rtype != "default":
        raise GGUFError(f"{model_dir}/config.json: rope scaling {rtype!r} is not written into GGUF by medtui; "
                        "export without --gguf and convert the merged directory with llama.cpp's own converter")
    if not (model_dir / "tokenizer.json").is_file():
        raise GGUFError(f"{model_dir}/tokenizer.json is missing: GGUF needs the fast (BPE) tokenizer's file")
    return mt


# ----------------------------------------------------------------------------- templates

def _question_rendering(template: str, tokenizer) -> tuple[str, str]:
    """(text before the question, text after it) of the run's prompt, as templates.py renders it."""
    text = render_prompt(template, _QUESTION_SLOT, tokenizer)
    if text.count(_QUESTION_SLOT) != 1:
        raise GGUFError("the prompt template does not hold the question exactly once")
    before, after = text.split(_QUESTION_SLOT)
    return before, after


def gguf_chat_template(template: str, tokenizer) -> str:
    """The Jinja chat template written into the GGUF: it renders a user-only conversation (with a
    generation prompt) exactly as medtui's template does."""
    check_template(template)
    if template == "chat":
        own = tokenizer.chat_template
        system = json.dumps(CHAT_SYSTEM, ensure_ascii=False)
        return ("{%- if not messages or messages[0]['role'] != 'system' %}"
                "{%- set messages = [{'role': 'system', 'content': " + system + "}] + messages %}"
                "{%- endif %}" + own)
    before, after = _question_rendering("seed", tokenizer)
    for part in (before, after):
        if "{{" in part or "{%" in part or "{#" in part:
            raise GGUFError("the seed prompt contains Jinja delimiters; it cannot be written as a chat template")
    return ("{%- set ns = namespace(q='') %}{%- for message in messages %}{%- if message['role'] == 'user' %}"
            "{%- set ns.q = message['content'] %}{%- endif %}{%- endfor %}" + before + "{{ ns.q }}" + after)


def _go_literal(text: str) -> str:
    """Literal text inside an Ollama (Go) template: ``{{`` must be written as an action."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(template: str, tokenizer) -> tuple[str, str | None]:
    """(TEMPLATE, SYSTEM) of the Modelfile: the run's prompt with the question as ``{{ .Prompt }}``
    (and, for ``chat``, medtui's system prompt as ``{{ .System }}``)."""
    before, after = _question_rendering(template, tokenizer)
    if template == "chat":
        if before.count(CHAT_SYSTEM) != 1:
            raise GGUFError("the chat template does not hold the system prompt exactly once")
        b1, b2 = before.split(CHAT_SYSTEM)
        text = _go_literal(b1) + "{{ .System }}" + _go_literal(b2) + "{{ .Prompt }}" + _go_literal(after)
        return text, CHAT_SYSTEM
    return _go_literal(before) + "{{ .Prompt }}" + _go_literal(after), None


def render_ollama_template(text: str, system: str | None, prompt: str) -> str:
    """What Ollama sends the model for one prompt: the TEMPLATE's three kinds of action substituted
    (a check that the Modelfile says what templates.py renders; anything else left is an error)."""
    out, pos = [], 0
    for m in re.finditer(r"\{\{\s*(\.System|\.Prompt|\"\{\{\")\s*\}\}", text):
        out.append(text[pos:m.start()])
        out.append({".System": system or "", ".Prompt": prompt, '"{{"': "{{"}[m.group(1)])
        pos = m.end()
    rest = text[pos:]
    if "{{" in "".join(out[::2]) + rest:
        raise ValueError("the template has actions other than .System, .Prompt and literal braces")
    return "".join(out) + rest


def _quote_modelfile(text: str) -> str:
    if '"""' in text:
        raise GGUFError('the template contains """, which a Modelfile cannot quote')
    return '"""' + text + '"""'


def ollama_name(name: str, gtype: str) -> str:
    base = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "medtui-model"
    return f"{base}:{gtype}"


def modelfile_text(gguf_name: str, template: str, tokenizer, stop_texts: list[str],
                   generation: dict | None = None) -> str:
    tmpl, system = ollama_template(template, tokenizer)
    lines = [f"# written by medtui: the {template} template this model was trained with", f"FROM ./{gguf_name}",
             f"TEMPLATE {_quote_modelfile(tmpl)}"]
    if system:
        lines.append(f"SYSTEM {_quote_modelfile(system)}")
    for s in stop_texts:
        lines.append(f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}")
    g = generation or {}
    for key, param in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if isinstance(g.get(key), (int, float)) and not isinstance(g.get(key), bool) and g.get("do_sample", True):
            lines.append(f"PARAMETER {param} {g[key]}")
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict:
    """FROM, TEMPLATE, SYSTEM and PARAMETER lines of a Modelfile written above (for checks and tests)."""
    out: dict = {"parameters": []}
    for m in re.finditer(r'^(TEMPLATE|SYSTEM) """(.*?)"""', text, re.S | re.M):
        out[m.group(1).lower()] = m.group(2)
    for line in text.splitlines():
        if line.startswith("FROM "):
            out["from"] = line[5:].strip()
        elif line.startswith("PARAMETER "):
            key, _, value = line[10:].partition(" ")
            out["parameters"].append((key, json.loads(value) if value.startswith('"') else value))
    return out


# ------------------------------------------------------------------------------ tokenizer

# the pre-tokenizer names GGUF runtimes know, recognised by the tokenizer's splitting rule
_QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def pre_tokenizer_name(tok_json: dict) -> str:
    pre = tok_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts if isinstance(p, dict)]
    regexes = [((p.get("pattern") or {}).get("Regex")) for p in parts if isinstance(p, dict) and p.get("type") == "Split"]
    if _QWEN2_SPLIT in regexes:
        return "qwen2"
    if _LLAMA3_SPLIT in regexes:
        return "llama-bpe"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    raise GGUFError("tokenizer.json: its pre-tokenizer (" + ", ".join(str(k) for k in kinds) + ") is not one medtui "
                    "can name for GGUF runtimes (qwen2, llama-bpe, smollm, gpt-2)")


@dataclass
class TokenizerMeta:
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int
    eot_id: int
    pad_id: int | None
    add_bos: bool
    chat_template: str
    stop_ids: list[int]
    stop_texts: list[str]


def tokenizer_metadata(model_dir: Path, template: str, vocab_rows: int, tokenizer=None) -> TokenizerMeta:
    from gguf import TokenType

    from ..stoptokens import contract_for_dir

    model_dir = Path(model_dir)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    try:
        tok_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GGUFError(f"{model_dir}/tokenizer.json is unreadable ({exc})") from None
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFError(f"{model_dir}/tokenizer.json: model type {model.get('type')!r}; GGUF export handles BPE tokenizers")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_rows:
        raise GGUFError(f"{model_dir}: the tokenizer has token id {max(vocab.values())}, beyond the embedding's "
                        f"{vocab_rows} rows")
    tokens = [f"[PAD{i}]" for i in range(vocab_rows)]
    types = [int(TokenType.UNUSED)] * vocab_rows
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = int(TokenType.NORMAL)
    special = set(tokenizer.all_special_ids or [])
    for i, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if 0 <= i < vocab_rows:
            types[i] = int(TokenType.CONTROL if (added.special or i in special) else TokenType.USER_DEFINED)
    for i in special:
        if 0 <= i < vocab_rows:
            types[i] = int(TokenType.CONTROL)

    contract = contract_for_dir(model_dir, template, tokenizer)
    if contract.turn_end_id is None:
        raise GGUFError(f"{model_dir}: the {template} template's end of turn is not one token of the vocabulary "
                        f"({contract.summary()}); see medtui check --model {model_dir}")
    probe = tokenizer("a")["input_ids"]
    add_bos = bool(tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id)
    stop_texts = [contract.tokens.get(i) or tokenizer.convert_ids_to_tokens(i) for i in contract.stop_ids]
    return TokenizerMeta(
        pre=pre_tokenizer_name(tok_json), tokens=tokens, types=types, merges=merges,
        bos_id=tokenizer.bos_token_id, eos_id=contract.turn_end_id, eot_id=contract.turn_end_id,
        pad_id=tokenizer.pad_token_id, add_bos=add_bos, chat_template=gguf_chat_template(template, tokenizer),
        stop_ids=list(contract.stop_ids), stop_texts=stop_texts)


# -------------------------------------------------------------------------------- weights

def _qtype(gtype: str):
    from gguf import GGMLQuantizationType as Q

    return {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q5_1": Q.Q5_1, "q5_0": Q.Q5_0,
            "q4_1": Q.Q4_1, "q4_0": Q.Q4_0}[gtype]


def _file_type(gtype: str) -> int:
    from gguf import LlamaFileType as F

    return int({"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0,
                "q5_1": F.MOSTLY_Q5_1, "q5_0": F.MOSTLY_Q5_0, "q4_1": F.MOSTLY_Q4_1, "q4_0": F.MOSTLY_Q4_0}[gtype])


def _tensor_type(gtype: str, shape: tuple[int, ...]):
    """The type one tensor is stored in: F32 for vectors, F16 for rows that do not split into blocks."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    if len(shape) < 2:
        return Q.F32
    qt = _qtype(gtype)
    block = GGML_QUANT_SIZES[qt][0]
    if shape[-1] % block:
        return Q.F16
    return qt


def _rope_interleave(w, n_head: int):
    """Llama's query/key rows, from the split-halves rotary layout to GGUF's interleaved one."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class _Tensor:
    hf_name: str
    gguf_name: str
    file: Path
    shape: tuple[int, ...]


def _plan_tensors(model_dir: Path, arch, n_layers: int, tied: bool) -> list[_Tensor]:
    from gguf import MODEL_TENSORS, get_tensor_name_map

    from .stfiles import SafetensorsError, model_tensors

    try:
        infos = model_tensors(model_dir)
    except SafetensorsError as exc:
        raise GGUFError(f"{model_dir}: {exc}") from None
    name_map = get_tensor_name_map(arch, n_layers)
    allowed = set(MODEL_TENSORS[arch])
    out = []
    for hf_name, info in infos.items():
        if tied and hf_name == "lm_head.weight":
            continue   # tied to the embedding: runtimes reuse token_embd when output is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        found = name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in allowed:
            raise GGUFError(f"{model_dir}: tensor {hf_name} has no GGUF name for this architecture; "
                            "this model cannot be exported as GGUF by medtui")
        out.append(_Tensor(hf_name, found[1], Path(info.file), tuple(int(x) for x in info.shape)))
    return out


def _layout(model_dir: Path):
    """(config, model type, GGUF architecture, tensors to write, embedding rows) of a model directory."""
    import gguf

    cfg = _read_config(model_dir)
    mt = check_exportable(model_dir, cfg)
    arch = {"qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3, "llama": gguf.MODEL_ARCH.LLAMA}[mt]
    tied = bool(cfg.get("tie_word_embeddings", mt != "llama"))
    tensors = _plan_tensors(model_dir, arch, int(cfg["num_hidden_layers"]), tied)
    vocab_rows = next(t.shape[0] for t in tensors if t.hf_name.endswith("embed_tokens.weight"))
    return cfg, mt, arch, tensors, vocab_rows


def write_gguf(model_dir: Path, path: Path, gtype: str, *, template: str, name: str, tokenizer=None,
               progress=None, tmeta: TokenizerMeta | None = None) -> dict:
    """Write one GGUF file (temp name, then rename). Returns what was written. ``tmeta``: the
    tokenizer's metadata when the caller has it already (:func:`export` reads it once for every type)."""
    import gguf
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf import quants
    from safetensors import safe_open

    model_dir, path = Path(model_dir), Path(path)
    cfg, mt, arch, tensors, vocab_rows = _layout(model_dir)
    n_layers = int(cfg["num_hidden_layers"])
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    if tmeta is None or len(tmeta.tokens) != vocab_rows:
        tmeta = tokenizer_metadata(model_dir, template, vocab_rows, tokenizer)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    t0 = time.perf_counter()
    w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    try:
        w.add_type("model")
        w.add_name(name)
        w.add_file_type(_file_type(gtype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(int(cfg.get("max_position_embeddings") or 4096))
        w.add_embedding_length(hidden)
        w.add_block_count(n_layers)
        w.add_feed_forward_length(int(cfg["intermediate_size"]))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(rope_theta(cfg))
        w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps") or 1e-6))
        w.add_vocab_size(vocab_rows)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tmeta.pre)
        w.add_token_list(tmeta.tokens)
        w.add_token_types(tmeta.types)
        w.add_token_merges(tmeta.merges)
        if tmeta.bos_id is not None:
            w.add_bos_token_id(tmeta.bos_id)
        w.add_eos_token_id(tmeta.eos_id)
        w.add_eot_token_id(tmeta.eot_id)
        if tmeta.pad_id is not None:
            w.add_pad_token_id(tmeta.pad_id)
        w.add_add_bos_token(tmeta.add_bos)
        w.add_chat_template(tmeta.chat_template)

        kinds: dict[str, int] = {}
        for t in tensors:
            qt = _tensor_type(gtype, t.shape)
            kinds[qt.name] = kinds.get(qt.name, 0) + 1
            if qt in (Q.F32, Q.F16):
                dt = np.dtype(np.float32 if qt == Q.F32 else np.float16)
                w.add_tensor_info(t.gguf_name, t.shape, dt, int(np.prod(t.shape)) * dt.itemsize)
            else:
                bshape = quants.quant_shape_to_byte_shape(t.shape, qt)
                w.add_tensor_info(t.gguf_name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=qt)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        handles: dict = {}
        try:
            for n, t in enumerate(tensors):
                f = t.file
                if f not in handles:
                    handles[f] = safe_open(str(f), framework="pt")
                data = handles[f].get_tensor(t.hf_name).to(torch.float32).numpy()
                if mt == "llama" and t.hf_name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
                    data = _rope_interleave(data, n_head if "q_proj" in t.hf_name else n_kv)
                qt = _tensor_type(gtype, t.shape)
                arr = data if qt == Q.F32 else (data.astype(np.float16) if qt == Q.F16 else quants.quantize(data, qt))
                w.write_tensor_data(np.ascontiguousarray(arr))
                if progress:
                    progress(n + 1, len(tensors))
        finally:
            handles.clear()
        w.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return {"type": gtype, "file": path.name, "bytes": path.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 3), "architecture": gguf.MODEL_ARCH_NAMES[arch],
            "tensors": len(tensors), "tensor_types": kinds, "tokenizer_pre": tmeta.pre, "tokens": len(tmeta.tokens),
            "merges": len(tmeta.merges), "eos_id": tmeta.eos_id, "eot_id": tmeta.eot_id, "bos_id": tmeta.bos_id,
            "stop_ids": tmeta.stop_ids, "stop_texts": tmeta.stop_texts}


# ------------------------------------------------------------------------------- export

def export(model_dir: Path, types: list[str], *, template: str, name: str, out_dir: Path | None = None,
           install_dir: Path | None = None, emit=None, verify: bool = True, log_path: Path | None = None,
           tokenizer=None) -> dict:
    """Write every requested GGUF with its Modelfile into ``out_dir`` (``MODEL_DIR/gguf``), verify them
    in a fresh process, and return the ``gguf`` entry of ``medtui.json``. ``install_dir`` is where
    ``model_dir`` will live once installed (the paths in the ``ollama create`` commands). A file that
    fails verification is removed (with its Modelfile) and the entry says why. ``tokenizer``: the one of
    ``model_dir`` where the caller has read it already."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir else model_dir / GGUF_DIR
    final_dir = Path(install_dir or model_dir) / out_dir.relative_to(model_dir) if out_dir.is_relative_to(model_dir) \
        else out_dir
    check_exportable(model_dir)
    check_template(template)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    generation = {}
    try:
        generation = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
    # the same tokenizer goes into every file: read it (150k tokens and merges for Qwen) once
    tmeta = tokenizer_metadata(model_dir, template, _layout(model_dir)[4], tokenizer)
    files = []
    for gtype in types:
        gname = f"{stem}-{gtype}.gguf"
        rec = write_gguf(model_dir, out_dir / gname, gtype, template=template, name=name, tokenizer=tokenizer,
                         tmeta=tmeta)
        mf = f"Modelfile.{gtype}"
        text = modelfile_text(gname, template, tokenizer, rec["stop_texts"], generation)
        (out_dir / f".{mf}.partial").write_text(text, encoding="utf-8")
        os.replace(out_dir / f".{mf}.partial", out_dir / mf)
        rec["modelfile"] = mf
        rec["ollama_create"] = f"ollama create {ollama_name(name, gtype)} -f {final_dir / mf}"
        files.append(rec)
        if emit:
            emit("gguf_written", gguf_type=gtype, file=str(final_dir / gname), bytes=rec["bytes"], seconds=rec["seconds"])
    entry = {"done": True, "path": str(final_dir), "types": list(types), "template": template, "files": files}
    if verify and files:
        t0 = time.perf_counter()
        results = verify_in_fresh_process(model_dir, [out_dir / f["file"] for f in files], template, log_path)
        entry["verify_seconds"] = round(time.perf_counter() - t0, 3)
        for f in files:
            v = results.get(f["file"]) or {"passed": False, "error": "no result from the verification process"}
            f["verification"] = v
            if emit:
                emit("gguf_verified", gguf_type=f["type"], passed=bool(v.get("passed")),
                     max_abs_logit_diff=v.get("max_abs_logit_diff"), tolerance=v.get("tolerance"))
            if not v.get("passed"):
                (out_dir / f["file"]).unlink(missing_ok=True)
                (out_dir / f["modelfile"]).unlink(missing_ok=True)
                f["removed"] = True
        entry["passed"] = all(f["verification"].get("passed") for f in files)
        if not entry["passed"]:
            bad = [f["type"] for f in files if not f["verification"].get("passed")]
            entry["why"] = ("GGUF " + ", ".join(bad) + " failed verification (logits off the merged model beyond "
                            "tolerance, or the file did not load) and was removed; details under gguf.files")
    if not any(not f.get("removed") for f in files):
        entry["done"] = False
    return entry


def failed_entry(types: list[str], why: str) -> dict:
    return {"done": False, "types": list(types), "why": why}


def commands(entry: dict | None) -> list[str]:
    """The ``ollama create`` commands of a ``gguf`` entry (files that passed)."""
    return [f["ollama_create"] for f in (entry or {}).get("files") or [] if f.get("ollama_create") and not f.get("removed")]


# ---------------------------------------------------------------------------- verification

def verify_in_fresh_process(model_dir: Path, ggufs: list[Path], template: str, log_path: Path | None = None) -> dict:
    """Run :func:`verify_files` in a new Python process; {file name: record}."""
    from ..offline import offline_env

    cmd = [sys.executable, "-m", "medtui_engine.merge.gguf_export", "verify", str(model_dir), template,
           *[str(g) for g in ggufs]]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=offline_env())
    if log_path is not None:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(proc.stderr[-20000:])
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        return {g.name: {"passed": False, "error": f"verification process exited {proc.returncode}: {tail[0]}"}
                for g in ggufs}


def read_metadata(path: Path) -> dict:
    """A GGUF's metadata (string arrays as counts), read quickly: transformers' header reader where it
    has one, else the gguf library's reader (which decodes every token)."""
    try:
        from transformers.integrations.gguf import read_gguf_metadata

        meta, _ = read_gguf_metadata(str(path))
        return dict(meta)
    except ImportError:
        from gguf import GGUFReader

        r = GGUFReader(str(path))
        return {k: (f.contents() if len(f.data) == 1 or not f.types or f.types[-1].name != "STRING" else len(f.data))
                for k, f in r.fields.items()}


def expected_metadata(config) -> dict:
    """The hyperparameters a GGUF of this config must carry (key suffix -> value)."""
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    heads = int(c["num_attention_heads"])
    return {"context_length": c.get("max_position_embeddings"), "embedding_length": c["hidden_size"],
            "block_count": c["num_hidden_layers"], "feed_forward_length": c["intermediate_size"],
            "attention.head_count": heads, "attention.head_count_kv": c.get("num_key_value_heads") or heads,
            "attention.key_length": c.get("head_dim") or c["hidden_size"] // heads,
            "rope.freq_base": rope_theta(c), "attention.layer_norm_rms_epsilon": c.get("rms_norm_eps"),
            "vocab_size": c.get("vocab_size")}


def metadata_mismatches(path: Path, config) -> list[str]:
    """Hyperparameters of the GGUF that differ from the merged model's config.json."""
    meta = read_metadata(path)
    arch = meta.get("general.architecture")
    out = []
    for key, want in expected_metadata(config).items():
        got = meta.get(f"{arch}.{key}")
        if want is None:
            continue
        if got is None or abs(float(got) - float(want)) > 1e-6 * max(1.0, abs(float(want))):
            out.append(f"{arch}.{key}: {got} (config.json: {want})")
    return out


@contextmanager
def one_read_per_file():
    """Within this block, the gguf library reads each file's header once, over a plain array.

    transformers' GGUF loader builds a fresh ``gguf.GGUFReader`` for every use of a file (the weights,
    the tokenizer's class, its vocabulary: three times per file), and with Qwen's 150k tokens and merges
    a read takes tens of seconds on a small CPU. The reader is read-only (a memory map), so the loader's
    passes share one. The shared reader also slices a plain ndarray view of the map instead of the
    ``np.memmap`` itself: the values are the same bytes, but each of the 300k slices that a vocabulary
    is read as no longer runs numpy's Python-level memmap hooks (a read 9.2 -> 3.3 s, the loader's parse
    of it 2.4 -> 1.0 s on the 2-core VM). ``gguf.get_tensor_name_map`` (which the loader asks once per
    module of the model, each time rebuilding the same table) is answered once per architecture and
    depth. What is loaded is unchanged."""
    import gguf
    import numpy as np

    class PlainArrayReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    original_reader, original_names = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}
    names: dict = {}

    def shared_reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = PlainArrayReader(path, mode)
        return readers[key]

    def shared_names(arch, n_blocks):
        if (arch, n_blocks) not in names:
            names[arch, n_blocks] = original_names(arch, n_blocks)
        return names[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, shared_names
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_names
        readers.clear()
        names.clear()


def verify_files(model_dir: Path, template: str, ggufs: list[Path]) -> dict:
    """Load the merged model and each GGUF (transformers' GGUF loader), compare last-layer logits on
    rendered prompts in float32. {file name: record}."""
    with one_read_per_file():
        return _verify_files(Path(model_dir), template, ggufs)


def _verify_files(model_dir: Path, template: str, ggufs: list[Path]) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(str(model_dir))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = [render_prompt(template, q, tok) for q in VERIFY_QUESTIONS]
    ids = [torch.tensor([tok(p)["input_ids"]], device=device) for p in prompts]

    def logits_of(model) -> list:
        with torch.no_grad():
            return [model(input_ids=i).logits[0].float() for i in ids]

    ref_model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
    ref = logits_of(ref_model)
    del ref_model
    scale = max(float(r.abs().max()) for r in ref)
    out = {}
    for g in ggufs:
        g = Path(g)
        gtype = g.stem.rsplit("-", 1)[-1]
        if gtype not in TOLERANCE:
            out[g.name] = {"passed": False, "error": f"{g.name}: the file name does not end in a GGUF type"}
            continue
        rec: dict = {"type": gtype, "prompts": len(prompts), "positions": sum(int(i.shape[1]) for i in ids)}
        t0 = time.perf_counter()
        try:
            rec["metadata_mismatches"] = metadata_mismatches(g, config)
            # the merged model's config: transformers' GGUF loader does not read every key (qwen3's
            # key_length: head_dim); the GGUF's own hyperparameters are compared with it just above
            model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, config=config,
                                                         dtype=torch.float32).to(device).eval()
            rec["load_seconds"] = round(time.perf_counter() - t0, 3)
            got = logits_of(model)
            del model
            fig = top1_figures(torch.cat(got), torch.cat(ref))
            diff, tol = fig["max_abs_logit_diff"], TOLERANCE[gtype]
            dec = fig["top1_agreement_decisive"]
            rec.update(fig, max_abs_logit=round(scale, 6), relative=round(diff / scale, 6) if scale else None,
                       tolerance=tol, min_top1_agreement_decisive=MIN_TOP1_DECISIVE,
                       passed=bool(scale and diff / scale <= tol and (dec is None or dec >= MIN_TOP1_DECISIVE)
                                   and not rec["metadata_mismatches"]))
            try:
                gtok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
                rec["tokenizer_matches"] = all(gtok(p)["input_ids"] == tok(p)["input_ids"] for p in prompts)
            except Exception as exc:  # noqa: BLE001 - transformers' GGUF tokenizer is informational
                rec["tokenizer_matches"] = None
                rec["tokenizer_error"] = f"{type(exc).__name__}: {exc}"[:300]
        except Exception as exc:  # noqa: BLE001 - a file that does not load fails its check, with the reason
            rec.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:1000])
        out[g.name] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 4 or argv[0] != "verify":
        print("usage: python -m medtui_engine.merge.gguf_export verify MODEL_DIR TEMPLATE GGUF...", file=sys.stderr)
        return 2
    from ..offline import apply_offline, skip_cuda_only_packages

    apply_offline()
    skip_cuda_only_packages()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    result = verify_files(Path(argv[1]), argv[2], [Path(a) for a in argv[3:]])
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
