"""The merge itself: LoRA deltas added to the 16-bit base weights, written as a deployable directory.

Two paths, same output layout:

* ``stream`` (the normal one): each base tensor is read from the base's safetensors files, the LoRA
  delta ``scale * B @ A`` is added in float32 (on the GPU when there is one), the result is cast to
  bf16/fp16 and written straight into output shards, which are hashed as they are written. The base
  is read from its 16-bit files, so a run that trained on a 4-bit load is still merged into 16-bit
  weights; memory stays at one tensor per writer thread; shards are written in parallel.
* ``peft``: adapters with features the stream does not reproduce (DoRA, modules_to_save, trained
  biases...) are merged by PEFT's ``merge_and_unload`` on the base loaded in 16 bits.

Either way the result is checked afterwards against PEFT's unmerged base + adapter (verify.py).
Heavy imports live inside functions: this module is imported by the CLI to describe a plan.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..demo import MARKER as DEMO_MARKER
from .adapter import read_adapter
from .plan import TOKENIZER_FILES, MergePlan
from .stfiles import (
    FLOAT_DTYPES,
    ShardWriter,
    TensorInfo,
    model_tensors,
    plan_shards,
    read_raw,
    sha256_file,
    write_index,
)

OUT_CODE = {"bf16": "BF16", "fp16": "F16"}
# ~2 GiB shards: a 7B model becomes 8 files written and hashed in parallel (vLLM and transformers
# read any number of shards through the index)
MAX_SHARD_BYTES = 2 << 30

Progress = Callable[[str, int, int, int], None]   # phase, done, total, bytes


class MergeError(RuntimeError):
    pass


def _torch_dtype(code: str):
    import torch

    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}[code]


def _load_tensor(info: TensorInfo):
    """One base tensor as a CPU torch tensor (read once into memory we own)."""
    import torch

    buf = bytearray(info.nbytes)
    with open(info.file, "rb") as fh:
        fh.seek(info.start)
        view = memoryview(buf)
        got = 0
        while got < info.nbytes:
            n = fh.readinto(view[got:])
            if not n:
                raise MergeError(f"{info.file} is truncated (tensor {info.name})")
            got += n
    return torch.frombuffer(buf, dtype=_torch_dtype(info.dtype)).view(info.shape) if info.nbytes else \
        torch.empty(info.shape, dtype=_torch_dtype(info.dtype))


def _tensor_bytes(t):
    import torch

    return t.contiguous().view(torch.uint8).numpy().data


def merge_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def stream_merge(plan: MergePlan, tmp: Path, progress: Progress | None = None, threads: int | None = None,
                 device: str | None = None) -> dict:
    """Write merged safetensors shards into ``tmp``; returns {file: sha256} and timing figures."""
    import torch
    from safetensors.torch import load_file

    adapter = read_adapter(Path(plan.adapter_dir))
    base = model_tensors(Path(plan.base_dir))
    out_code = OUT_CODE[plan.dtype]
    out_dtype = _torch_dtype(out_code)
    device = device or merge_device()
    # base order (file, then offset) keeps reads sequential within each input file
    order = sorted(base.values(), key=lambda t: (str(t.file), t.start))
    layout = [(t.name, out_code if t.dtype in FLOAT_DTYPES else t.dtype, t.shape) for t in order]
    shards = plan_shards(layout, MAX_SHARD_BYTES)
    files = shards.file_names()
    lora = load_file(str(Path(plan.adapter_dir) / "adapter_model.safetensors"))
    prefix = "base_model.model."

    def lora_tensor(info: TensorInfo):
        key = info.name
        t = lora.get(key)
        if t is None and key.startswith(prefix):
            t = lora.get(key[len(prefix):])
        return t

    total = len(order)
    lock = threading.Lock()
    state = {"done": 0, "bytes": 0, "merged": 0}
    t0 = time.perf_counter()

    def tick(nbytes: int, merged: bool) -> None:
        with lock:
            state["done"] += 1
            state["bytes"] += nbytes
            state["merged"] += int(merged)
            done, written = state["done"], state["bytes"]
        if progress:
            progress("merge", done, total, written)

    def write_shard(i: int) -> tuple[str, str, int]:
        path = tmp / files[i]
        writer = ShardWriter(path, shards.names[i], shards)
        try:
            for name in shards.names[i]:
                info = base[name]
                pair = adapter.pairs.get(name)
                if pair is not None:
                    w = _load_tensor(info).to(device=device, dtype=torch.float32)
                    a = lora_tensor(pair.a).to(device=device, dtype=torch.float32)
                    b = lora_tensor(pair.b).to(device=device, dtype=torch.float32)
                    w.addmm_(b, a, alpha=pair.scale)
                    out = w.to(out_dtype)
                    if out_dtype == torch.float16 and not bool(torch.isfinite(out).all()):
                        raise MergeError(f"{name}: merged values exceed the fp16 range; merge with --dtype bf16")
                    writer.add(name, [_tensor_bytes(out.cpu())])
                    del w, a, b, out
                elif info.dtype == shards.dtypes[name]:
                    writer.add(name, read_raw(info))       # untouched: copied byte for byte
                else:
                    t = _load_tensor(info).to(out_dtype)
                    if out_dtype == torch.float16 and not bool(torch.isfinite(t).all()):
                        raise MergeError(f"{name}: base values exceed the fp16 range; merge with --dtype bf16")
                    writer.add(name, [_tensor_bytes(t)])
                tick(shards.nbytes(name), pair is not None)
            return files[i], writer.close(fsync=False), writer.size   # fsynced once, before install
        except BaseException:
            writer.abort()
            raise

    n_threads = threads or max(1, min(len(files), os.cpu_count() or 1, 8))
    hashes: dict[str, str] = {}
    sizes: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="merge") as pool:
        for name, digest, size in pool.map(write_shard, range(len(files))):
            hashes[name] = digest
            sizes[name] = size
    if device == "cuda":
        torch.cuda.synchronize()
    index = write_index(tmp, shards)
    if index is not None:
        hashes[index.name] = sha256_file(index)
    if state["merged"] != len(adapter.pairs):
        raise MergeError(f"merged {state['merged']} of the adapter's {len(adapter.pairs)} LoRA pairs")
    return {"hashes": hashes, "shards": len(files), "threads": n_threads, "device": device,
            "tensors": total, "merged_tensors": state["merged"], "bytes": sum(sizes.values()),
            "seconds": time.perf_counter() - t0}


def peft_merge(plan: MergePlan, tmp: Path, progress: Progress | None = None) -> dict:
    """PEFT's merge_and_unload on the base loaded in 16 bits (adapters the stream does not cover)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    dtype = _torch_dtype(OUT_CODE[plan.dtype])
    device = merge_device()
    if progress:
        progress("load", 0, 3, 0)
    model = AutoModelForCausalLM.from_pretrained(plan.base_dir, dtype=dtype, device_map=device)
    model = PeftModel.from_pretrained(model, plan.adapter_dir)
    if progress:
        progress("merge", 1, 3, 0)
    model = model.merge_and_unload()
    if progress:
        progress("save", 2, 3, 0)
    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=MAX_SHARD_BYTES)
    del model
    hashes = {p.name: sha256_file(p) for p in tmp.iterdir() if p.name.endswith((".safetensors", ".index.json"))}
    for extra in ("config.json", "generation_config.json"):
        (tmp / extra).unlink(missing_ok=True)   # rewritten below from the base, as for the stream path
    return {"hashes": hashes, "shards": sum(1 for n in hashes if n.endswith(".safetensors")), "threads": 1,
            "device": device, "bytes": sum((tmp / n).stat().st_size for n in hashes), "seconds": time.perf_counter() - t0}


def write_config(plan: MergePlan, tmp: Path) -> None:
    """The base's config.json, with the merged dtype and no quantization settings."""
    cfg = json.loads((Path(plan.base_dir) / "config.json").read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    name = {"bf16": "bfloat16", "fp16": "float16"}[plan.dtype]
    cfg["dtype"] = name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = name
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def copy_tokenizer(plan: MergePlan, tmp: Path) -> list[str]:
    """The base's tokenizer files, byte for byte (the ones training used), chat template included."""
    copied = []
    for name in TOKENIZER_FILES:
        src = Path(plan.base_dir) / name
        if src.is_file():
            shutil.copyfile(src, tmp / name)
            copied.append(name)
    if (Path(plan.base_dir) / DEMO_MARKER).is_file():
        # a model derived from the random-weight demo stays labelled as such
        shutil.copyfile(Path(plan.base_dir) / DEMO_MARKER, tmp / DEMO_MARKER)
    return copied


def stop_ids(tokenizer, template: str, base_config_eos=None) -> tuple[list[int], int | None]:
    """(EOS ids, pad id) the merged model's generation config must carry: the stop-token contract's
    ids (:func:`medtui_engine.stoptokens.written_eos_ids`: the template's end of turn first, what
    training taught the model to emit, then the tokenizer's EOS and the base's own end ids), then
    Qwen's ``<|im_end|>`` and ``<|endoftext|>`` where the vocabulary has them."""
    from ..stoptokens import written_eos_ids

    ids = written_eos_ids(tokenizer, template, base_config_eos)
    vocab = tokenizer.get_vocab()
    pad = tokenizer.pad_token_id
    if pad is None and "<|endoftext|>" in vocab:
        pad = vocab["<|endoftext|>"]
    return ids, pad


def write_generation_config(plan: MergePlan, tmp: Path, tokenizer=None) -> dict:
    """generation_config.json: the base's settings with EOS/pad ids that keep the stop-token contract.
    ``tokenizer``: the one of ``tmp`` where it is already loaded (else it is read from there)."""
    from ..stoptokens import check_contract, config_eos_of_dir

    tok = tokenizer if tokenizer is not None else read_tokenizer(tmp)
    src = Path(plan.base_dir) / "generation_config.json"
    gen = {}
    if src.is_file():
        try:
            gen = json.loads(src.read_text(encoding="utf-8"))
        except ValueError:
            gen = {}
    base_eos, base_from = config_eos_of_dir(Path(plan.base_dir))
    eos, pad = stop_ids(tok, plan.template, base_eos)
    if not eos:
        raise MergeError("the tokenizer has no EOS token: the merged model could never stop")
    gen["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    if pad is not None:
        gen["pad_token_id"] = pad
    gen.setdefault("bos_token_id", tok.bos_token_id if tok.bos_token_id is not None else gen.get("bos_token_id"))
    if gen.get("bos_token_id") is None:
        gen.pop("bos_token_id")
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    base_contract = check_contract(tok, plan.template, base_eos, f"base's {base_from}")
    return {"eos_token_id": eos, "pad_token_id": pad, "eos_tokens": [tok.convert_ids_to_tokens(i) for i in eos],
            "tokenizer_eos": tok.eos_token, "tokenizer_pad": tok.pad_token,
            "base_stop_contract": {"verdict": base_contract.verdict, "issues": [i.what for i in base_contract.issues]}}


def read_tokenizer(model_dir: Path):
    """The tokenizer of a model directory (transformers' AutoTokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def write_model(plan: MergePlan, tmp: Path, progress: Progress | None = None) -> tuple[dict, object]:
    """Everything of the merged model except medtui.json; returns the merge figures and the merged
    model's tokenizer, read once from ``tmp`` (verification and the GGUF export use it again: a Qwen
    tokenizer takes a second or more to read)."""
    result = stream_merge(plan, tmp, progress) if plan.method == "stream" else peft_merge(plan, tmp, progress)
    write_config(plan, tmp)
    result["tokenizer_files"] = copy_tokenizer(plan, tmp)
    tokenizer = read_tokenizer(tmp)
    result["generation"] = write_generation_config(plan, tmp, tokenizer)
    return result, tokenizer


def write_adapter_export(plan: MergePlan, tmp: Path) -> dict:
    """Adapter-only export: the adapter (config pointing at the base), tokenizer, generation config."""
    cfg = json.loads((Path(plan.adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = plan.base_dir
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(Path(plan.adapter_dir) / "adapter_model.safetensors", tmp / "adapter_model.safetensors")
    return {"tokenizer_files": copy_tokenizer(plan, tmp), "generation": write_generation_config(plan, tmp)}


def file_hashes(tmp: Path, known: dict[str, str] | None = None) -> dict[str, dict]:
    """sha256 and size of every file in the output (hashes computed while writing are reused)."""
    known = known or {}
    out = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(tmp))
            out[rel] = {"bytes": p.stat().st_size, "sha256": known.get(rel) or sha256_file(p)}
    return out
