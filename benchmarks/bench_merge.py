"""GPU benchmark of the merge: ``python benchmarks/bench_merge.py OUT_DIR [--shape qwen2.5-7b]``.

Builds a random-weight model of a real shape on the GPU (bf16, the real Qwen tokenizer), saves it to
local disk as a downloaded model would be, makes an r=32 LoRA adapter on the 7 projections with random
B, then in one process:

1. the product's merge (plan -> streamed merge -> config, tokenizer, generation config -> hashes),
   timed as merge + save, and its verification, timed apart;
2. the plain PEFT path on the same files: load base on the GPU (timed apart), PeftModel,
   ``merge_and_unload`` + ``save_pretrained`` (timed: the reference figure's definition);
3. a cross-check: every merged tensor of the product against PEFT's, max |difference|;
4. the product's GGUF export of its merged model (``--gguf``, default q8_0): each file's write time,
   then its verification in a fresh process (load back through transformers' GGUF loader, logits
   against the merged model), timed apart.

Prints one table and writes OUT_DIR/bench_merge.json. Weights are random: timings only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):   # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medtui_engine.offline import apply_offline  # noqa: E402

SHAPES = {
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    # a smoke-test size that also runs on a CPU-only machine
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False),
}
DEVICE = "cuda"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_REFERENCE_S = 18.3   # PEFT merge_and_unload + save_pretrained, Qwen2.5-7B shape, r=32, H100 (docs/gpu.md)


def build_base(out: Path, shape: str) -> dict:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from medtui_engine.demo import _qwen3_chat_template, _tokenizer_config
    from medtui_engine.qwen_vocab import write_bpe_files

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    write_bpe_files(out)
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), ensure_ascii=False, indent=2))
    tok = AutoTokenizer.from_pretrained(str(out))
    try:
        tok.chat_template = _qwen3_chat_template()
    except FileNotFoundError:
        pass
    tok.save_pretrained(str(out))
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = Qwen2Config(max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, bos_token_id=pad,
                      eos_token_id=eos, pad_token_id=pad, **SHAPES[shape])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(DEVICE):
        model = Qwen2ForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.config.dtype = "bfloat16"
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size="5GB")
    del model
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return {"params": params, "seconds": round(time.perf_counter() - t0, 1)}


def build_adapter(base: Path, out: Path, shape: str, r: int = 32) -> dict:
    """A PEFT-format r=32 adapter on the 7 projections, random A and B (what training would leave)."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    s = SHAPES[shape]
    h, i, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    kv = s["num_key_value_heads"] * (h // s["num_attention_heads"])
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}   # (in, out)
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(layers):
        for name, (fan_in, fan_out) in dims.items():
            part = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{part}.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, generator=g) / fan_in ** 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=g) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    LoraConfig(r=r, lora_alpha=r, lora_dropout=0.05, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM",
               base_model_name_or_path=str(base)).save_pretrained(str(out))
    return {"lora_tensors": len(tensors)}


def product_merge(base: Path, adapter: Path, out: Path, job_dir: Path, verify: bool, verify_tokens: int) -> dict:
    from medtui_engine.merge.core import file_hashes, write_model
    from medtui_engine.merge.pipeline import _install
    from medtui_engine.merge.plan import make_plan, partial_dir_for
    from medtui_engine.merge.stfiles import fsync_tree
    from medtui_engine.merge.verify import verify as run_verify

    plan = make_plan(str(adapter), base=str(base), out=str(out), force=True)
    tmp = partial_dir_for(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    merge = write_model(plan, tmp)
    files = file_hashes(tmp, merge.get("hashes"))
    written = time.perf_counter() - t0
    fsync_tree(tmp)
    merge_save = time.perf_counter() - t0
    res = {"merge_save_s": round(merge_save, 2), "written_before_fsync_s": round(written, 2), "stream_s": round(merge["seconds"], 2), "shards": merge["shards"],
           "threads": merge["threads"], "device": merge["device"], "bytes": merge["bytes"], "files": len(files),
           "method": plan.method, "sha256_while_writing": True}
    if verify:
        t1 = time.perf_counter()
        record = run_verify(plan, tmp, job_dir, max_new_tokens=verify_tokens)
        res["verify_s"] = round(time.perf_counter() - t1, 2)
        res["verification"] = {k: record[k] for k in ("passed", "failed_checks", "max_abs_logit_diff", "top1_agreement",
                                                      "decisive_positions", "top1_agreement_decisive", "positions",
                                                      "adapter_effect_max_abs_logit", "forced_eos", "greedy", "device")}
    _install(tmp, out, True)
    return res


def peft_reference(base: Path, adapter: Path, out: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16, device_map=DEVICE)
    model = PeftModel.from_pretrained(model, str(adapter))
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    saved = time.perf_counter() - t1
    os.sync()
    merge_save = time.perf_counter() - t1
    del model, merged
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return {"load_s": round(load, 2), "merge_save_s": round(merge_save, 2), "saved_before_sync_s": round(saved, 2),
            "bytes": sum(p.stat().st_size for p in out.glob("*.safetensors"))}


def cross_check(ours: Path, peft_dir: Path, adapter: Path) -> dict:
    """Max |difference| between the product's and PEFT's merged tensors (every LoRA-touched weight)."""
    import torch
    from safetensors import safe_open

    from medtui_engine.merge.adapter import read_adapter
    from medtui_engine.merge.stfiles import model_tensors

    names = list(read_adapter(adapter).pairs)
    a, b = model_tensors(ours), model_tensors(peft_dir)
    worst, ulp = 0.0, 0
    handles: dict = {}

    def get(info):
        if info.file not in handles:
            handles[info.file] = safe_open(str(info.file), "pt", device=DEVICE)
        return handles[info.file].get_tensor(info.name)

    for name in names:
        x, y = get(a[name]).float(), get(b[name]).float()
        d = (x - y).abs()
        worst = max(worst, float(d.max()))
        ulp += int((d > 0).sum())
    same_other = all(torch.equal(get(a[n]), get(b[n])) for n in list(a)[:8] if n not in names)
    return {"tensors_compared": len(names), "max_abs_diff": worst, "elements_differing": ulp, "untouched_equal": same_other}


def gguf_export(merged: Path, types: str, out: Path, log: Path) -> dict:
    """The product's GGUF export of its merged model, as `medtui merge --gguf` runs it."""
    from medtui_engine.merge.gguf_export import export, parse_types

    t0 = time.perf_counter()
    entry = export(merged, parse_types(types), template="chat", name="bench", out_dir=out, log_path=log)
    entry["total_s"] = round(time.perf_counter() - t0, 2)
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    ap.add_argument("--work", default="/tmp/medtui-bench-merge", help="local scratch (needs ~3x the model size)")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--verify-tokens", type=int, default=32)
    ap.add_argument("--skip-peft", action="store_true")
    ap.add_argument("--gguf", default="q8_0", help="GGUF types to export after the merge (comma list; 'none' skips)")
    args = ap.parse_args(argv)
    apply_offline()
    import torch

    global DEVICE
    if not torch.cuda.is_available():
        if args.shape != "tiny":
            print("bench_merge needs a CUDA GPU (--shape tiny runs on the CPU as a smoke test)", file=sys.stderr)
            return 2
        DEVICE = "cpu"
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base, adapter = work / "base", work / "adapter"
    ours, theirs, job = work / "merged-medtui", work / "merged-peft", work / "job"
    job.mkdir()
    report: dict = {"shape": args.shape, "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "cpus": os.cpu_count(),
                    "peft_reference_s": PEFT_REFERENCE_S}
    report["base"] = build_base(base, args.shape)
    print(f"base built: {report['base']}", flush=True)
    report["adapter"] = build_adapter(base, adapter, args.shape)
    report["medtui"] = product_merge(base, adapter, ours, job, not args.no_verify, args.verify_tokens)
    print(f"medtui: {json.dumps(report['medtui'])}", flush=True)
    if not args.skip_peft:
        report["peft"] = peft_reference(base, adapter, theirs)
        print(f"peft: {report['peft']}", flush=True)
        report["cross_check"] = cross_check(ours, theirs, adapter)
        print(f"cross-check: {report['cross_check']}", flush=True)
        shutil.rmtree(theirs, ignore_errors=True)   # disk: the GGUF needs the room
    if args.gguf != "none":
        report["gguf"] = gguf_export(ours, args.gguf, work / "gguf", out_dir / "gguf_verify.log")
        print(f"gguf: {json.dumps(report['gguf'])}", flush=True)
    me = report["medtui"]
    m, m0 = me["merge_save_s"], me["written_before_fsync_s"]
    lines = [
        f"merge + save, {args.shape}, r=32, {me['bytes'] / 2**30:.1f} GiB bf16, {report['gpu']}",
        f"  medtui (stream, {me['shards']} shards, {me['threads']} writers, sha256 included): {m0:.1f} s written, "
        f"{m:.1f} s with fsync (on disk)",
        f"  PEFT reference figure (docs/gpu.md):            {PEFT_REFERENCE_S:.1f} s   ratio {m0 / PEFT_REFERENCE_S:.2f}x written, "
        f"{m / PEFT_REFERENCE_S:.2f}x on disk (target <= 1.3x)",
    ]
    if "peft" in report:
        p, p0 = report["peft"]["merge_save_s"], report["peft"]["saved_before_sync_s"]
        lines.append(f"  PEFT merge_and_unload + save_pretrained, here:  {p0:.1f} s saved, {p:.1f} s with sync   "
                     f"ratio {m0 / p0:.2f}x / {m / p:.2f}x (its load {report['peft']['load_s']:.1f} s not counted)")
    if "verify_s" in report["medtui"]:
        v = report["medtui"]["verification"]
        lines.append(f"  medtui verification (apart): {report['medtui']['verify_s']:.1f} s, passed={v['passed']}, "
                     f"max|dlogit| {v['max_abs_logit_diff']} (adapter effect {v['adapter_effect_max_abs_logit']}), top-1 "
                     f"{v['top1_agreement']} all / {v['top1_agreement_decisive']} at {v['decisive_positions']} decisive positions")
    for f in (report.get("gguf") or {}).get("files", []):
        v = f.get("verification") or {}
        lines.append(f"  medtui GGUF {f['type']}: {f['bytes'] / 2**30:.1f} GiB written in {f['seconds']:.1f} s; verified in a "
                     f"fresh process ({report['gguf'].get('verify_seconds', 0):.1f} s for all types), passed={v.get('passed')}, "
                     f"relative logit diff {v.get('relative')} (tolerance {v.get('tolerance')}), top-1 {v.get('top1_agreement')}")
    report["summary"] = lines
    print("\n".join(lines), flush=True)
    (out_dir / "bench_merge.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
