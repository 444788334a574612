"""GPU benchmark of the case console's engine: decode speed and time to first token.

    python benchmarks/bench_infer.py OUT_DIR [--model-dir DIR] [--budget-s 420]

Builds a Qwen2.5-7B-shape model with random weights (bf16, real Qwen tokenizer) on the GPU, saves it
to local disk, then -- each arm in its own process, loading the model as a user would -- asks it a
512-token prompt for 256 new tokens, batch 1, greedy, EOS suppressed (random weights may emit it
early), through the product's own ``stream_answer``:

  unsloth-bf16 / unsloth-4bit : Unsloth's fast inference (``FastLanguageModel.for_inference``)
  hf-bf16 / hf-4bit           : transformers; decode paths ``generate`` (transformers' own loop),
                                ``eager`` (our loop, dynamic KV cache) and ``graph`` (our loop, static cache,
                                each decode step replayed as one CUDA graph)

Weights' values do not change speed. Results: OUT_DIR/bench_infer.json and a table on stdout; each
arm's log in OUT_DIR/arm-*.log. Reference (docs/gpu.md, H100): transformers generate 12.5 tok/s bf16,
14.6 4-bit; Unsloth 47.5 bf16, 45.2 4-bit. Target: >= 45 tok/s and first token <= 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                 rms_norm_eps=1e-6, tie_word_embeddings=False)
# --tiny: the same instrument on a CPU with a toy shape, to check the benchmark itself without a GPU.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=152064, max_position_embeddings=4096, rope_theta=1e6,
            rms_norm_eps=1e-6, tie_word_embeddings=False)
MARKER = "medtui_bench_model.json"
# (arm, backend, 4-bit, decode paths measured in it), most important first: the budget may cut the tail.
ARMS = (
    ("unsloth-bf16", "unsloth", False, ("generate",)),
    ("hf-bf16", "hf", False, ("graph", "generate", "eager")),
    ("hf-4bit", "hf", True, ("graph", "generate")),
    ("unsloth-4bit", "unsloth", True, ("generate",)),
)
REFERENCE = {"unsloth-bf16": 47.5, "unsloth-4bit": 45.2, "hf-bf16/generate": 12.5, "hf-4bit/generate": 14.6}
ARM_ESTIMATE_S = 75  # a typical arm (import + load + runs), used to skip arms the budget cannot hold


def _ensure_importable() -> None:
    """Run as a file (``python benchmarks/bench_infer.py``): make the repository importable."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


# --------------------------------------------------------------------------- build


def build_model(out: Path, tiny: bool = False) -> dict:
    """Random-weight Qwen2.5-7B shape in bf16 on the GPU, with the real Qwen tokenizer, saved to ``out``."""
    _ensure_importable()
    from medtui_engine.offline import apply_offline

    apply_offline()
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from medtui_engine.demo import ensure_demo_model

    if (out / MARKER).exists():
        return {**json.loads((out / MARKER).read_text()), "reused": True}
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        # another benchmark's model of the same shape (saves ~15 GB of disk and the build time)
        cfg = json.loads((out / "config.json").read_text())
        return {"shape": "given", "reused": True, "hidden_size": cfg.get("hidden_size"),
                "num_hidden_layers": cfg.get("num_hidden_layers"), "vocab_size": cfg.get("vocab_size")}
    t0 = time.perf_counter()
    demo = ensure_demo_model()  # its tokenizer files are the real Qwen tokenizer
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in demo.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "chat_template", "special_tokens")):
            shutil.copy2(f, tmp / f.name)
    eos, pad = 151645, 151643  # <|im_end|>, <|endoftext|>
    cfg = Qwen2Config(**(TINY if tiny else QWEN25_7B), bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 directly: no 30 GB fp32 detour
    try:
        with torch.device("cpu" if tiny else "cuda"):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    model.config.dtype = "bfloat16"
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    params = sum(p.numel() for p in model.parameters())
    t_init = time.perf_counter() - t0
    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="5GB")
    info = {"shape": "tiny" if tiny else "Qwen2.5-7B", "params": params, "dtype": "bfloat16", "init_s": round(t_init, 1),
            "build_s": round(time.perf_counter() - t0, 1),
            "bytes": sum(f.stat().st_size for f in tmp.iterdir())}
    (tmp / MARKER).write_text(json.dumps(info, indent=2))
    del model
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return info


# --------------------------------------------------------------------------- one arm


def make_prompt(tokenizer, template: str, n_tokens: int) -> str:
    """A seed-template prompt of as close to ``n_tokens`` tokens as the text allows (from below)."""
    _ensure_importable()
    from medtui_engine.templates import render_prompt

    unit = "女性，45岁，右上腹痛3天，TBil 68μmol/L，DBil 42μmol/L，ALP正常，无Murphy征。"
    text = unit * (n_tokens // 10 + 10)

    def count(q: str) -> int:
        return len(tokenizer(render_prompt(template, q, tokenizer), add_special_tokens=False)["input_ids"])

    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix of the case whose prompt fits in n_tokens
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return render_prompt(template, text[:lo], tokenizer)


def run_arm(name: str, model_dir: Path, prompt_tokens: int, new_tokens: int) -> dict:
    _ensure_importable()
    backend, four_bit, decodes = next((b, q, d) for n, b, q, d in ARMS if n == name)
    from medtui_engine.infer import LoadOptions, SamplingSettings, answer, load_model, resolve_source

    t0 = time.perf_counter()
    source = resolve_source(str(model_dir))
    loaded = load_model(source, LoadOptions(backend=backend, load_in_4bit=four_bit))
    import torch

    cuda = torch.cuda.is_available()
    out: dict = {"arm": name, "backend": loaded.backend, "quantized": loaded.quantized, "dtype": loaded.dtype,
                 "load_s": round(loaded.load_s, 2), "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU)",
                 "mem_after_load_gib": round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else None,
                 "versions": {"torch": torch.__version__}, "runs": []}
    import transformers

    out["versions"]["transformers"] = transformers.__version__
    if backend == "unsloth":
        import unsloth

        out["versions"]["unsloth"] = unsloth.__version__
    prompt = make_prompt(loaded.tokenizer, "seed", prompt_tokens)
    greedy = SamplingSettings(temperature=0, max_new_tokens=new_tokens)
    for decode in decodes:
        try:
            # Warm-up at the measured size: kernels chosen, caches allocated, the CUDA graph captured.
            # (the graph path warms at the measured size: its cache and captured step are then reused)
            warm = SamplingSettings(temperature=0, max_new_tokens=new_tokens if decode == "graph" else 16)
            w = answer(loaded, "", warm, prompt=prompt, ignore_eos=True, decode=decode)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            r = answer(loaded, "", greedy, prompt=prompt, ignore_eos=True, decode=decode)
            s = r.stats
            out["runs"].append({
                "decode": decode, "decode_path": s.decode_path, "prompt_tokens": s.prompt_tokens,
                "output_tokens": s.output_tokens, "ttft_ms": round(s.ttft_s * 1000, 1),
                "decode_tok_s": round(s.decode_tokens_per_s, 1), "overall_tok_s": round(s.tokens_per_s, 1),
                "total_s": round(s.total_s, 2), "finish": s.finish_reason, "notes": list(s.notes),
                "warmup_s": round(w.stats.total_s, 2),
                "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0,
            })
        except Exception as exc:  # one decode path failing must not lose the others' numbers
            out["runs"].append({"decode": decode, "error": f"{type(exc).__name__}: {exc}"[:500]})
        print(json.dumps(out["runs"][-1]), flush=True)
    out["arm_s"] = round(time.perf_counter() - t0, 1)
    return out


# --------------------------------------------------------------------------- driver


def _child(args: list[str], log: Path, timeout: float, script: Path | None = None) -> tuple[int, str]:
    """``script`` (default: this file) run with ``args`` in its own process; stdout returned, stderr logged."""
    env = dict(os.environ)
    env.setdefault("UNSLOTH_COMPILE_LOCATION", "/tmp/medtui-bench-unsloth-cache")
    env.setdefault("MEDTUI_HOME", "/tmp/medtui-bench-home")  # the demo tokenizer's cache, not the user's home
    cmd = [sys.executable, str(script or Path(__file__).resolve()), *args]
    with open(log, "w") as fh:
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            fh.write(f"\n[bench] timed out after {timeout:.0f} s\n")
            return 124, (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    with open(log, "a") as fh:
        fh.write(p.stdout)
    return p.returncode, p.stdout


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/medtui-bench-qwen2.5-7b"))
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting arms past this (default 7 min)")
    ap.add_argument("--arms", default=",".join(a[0] for a in ARMS))
    ap.add_argument("--tiny", action="store_true", help="check the instrument on a CPU: toy shape, hf-bf16 arm only")
    ap.add_argument("--_build", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a._build:
        print("RESULT " + json.dumps(build_model(a.model_dir, a.tiny)), flush=True)
        return 0
    if a._arm:
        print("RESULT " + json.dumps(run_arm(a._arm, a.model_dir, a.prompt_tokens, a.new_tokens)), flush=True)
        return 0

    t0 = time.perf_counter()
    a.out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "prompt_tokens": a.prompt_tokens,
                    "new_tokens": a.new_tokens, "batch": 1, "sampling": "greedy, EOS suppressed",
                    "reference_tok_s": REFERENCE, "arms": []}
    print(f"[bench] building the Qwen2.5-7B-shape random-weight model in {a.model_dir} ...", flush=True)
    tiny = ["--tiny"] if a.tiny else []
    if a.tiny:
        a.arms = "hf-bf16"
    rc, text = _child(["--_build", "--model-dir", str(a.model_dir), *tiny, "x"], a.out_dir / "build.log", 240)
    report["model"] = _last_json(text) or {"error": f"build failed (exit {rc}); see build.log"}
    print(f"[bench] model: {report['model']}", flush=True)
    if rc != 0:
        (a.out_dir / "bench_infer.json").write_text(json.dumps(report, indent=2))
        return 1
    wanted = [x.strip() for x in a.arms.split(",") if x.strip()]
    for name in [n for n, *_ in ARMS if n in wanted]:
        left = a.budget_s - (time.perf_counter() - t0)
        if left < ARM_ESTIMATE_S * 0.8:
            report["arms"].append({"arm": name, "skipped": f"budget: {left:.0f} s left"})
            print(f"[bench] {name}: skipped, {left:.0f} s of the budget left", flush=True)
            continue
        print(f"[bench] {name} ...", flush=True)
        rc, text = _child(["--_arm", name, "--model-dir", str(a.model_dir), "--prompt-tokens", str(a.prompt_tokens),
                           "--new-tokens", str(a.new_tokens), "x"], a.out_dir / f"arm-{name}.log", max(60.0, left))
        result = _last_json(text)
        if result is None:
            partial = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            result = {"arm": name, "error": f"exit {rc}; see arm-{name}.log", "runs": partial}
        report["arms"].append(result)
        (a.out_dir / "bench_infer.json").write_text(json.dumps(report, indent=2))
    report["total_s"] = round(time.perf_counter() - t0, 1)
    (a.out_dir / "bench_infer.json").write_text(json.dumps(report, indent=2))
    print(table(report), flush=True)
    (a.out_dir / "bench_infer.txt").write_text(table(report))
    return 0


def table(report: dict) -> str:
    lines = [f"decode, Qwen2.5-7B shape, {report['prompt_tokens']}-token prompt, {report['new_tokens']} new tokens, "
             "batch 1, greedy",
             f"{'arm':<14}{'decode':<10}{'path':<9}{'TTFT ms':>9}{'tok/s':>8}{'ref':>7}{'peak GiB':>10}  notes"]
    for arm in report["arms"]:
        if "skipped" in arm or ("error" in arm and not arm.get("runs")):
            lines.append(f"{arm['arm']:<14}{arm.get('skipped') or arm.get('error')}")
            continue
        for r in arm.get("runs", []):
            ref = REFERENCE.get(arm["arm"]) or REFERENCE.get(f"{arm['arm']}/{r.get('decode')}")
            if "error" in r:
                lines.append(f"{arm['arm']:<14}{r['decode']:<10}error: {r['error'][:80]}")
                continue
            lines.append(f"{arm['arm']:<14}{r['decode']:<10}{r['decode_path']:<9}{r['ttft_ms']:>9.1f}"
                         f"{r['decode_tok_s']:>8.1f}{(f'{ref:.1f}' if ref else '-'):>7}{r['peak_mem_gib']:>10.2f}  "
                         + "; ".join(r.get("notes") or []))
    lines.append(f"target: >= 45 tok/s and TTFT <= 100 ms. total {report.get('total_s', '?')} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
