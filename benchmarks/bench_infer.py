"""GPU benchmark of the case console's engine: decode speed and time to first token, against bare references.

    python benchmarks/bench_infer.py OUT_DIR [--model-dir DIR] [--budget-s 450] [--arms A,B]

Builds a Qwen2.5-7B-shape model with random weights (bf16, real Qwen tokenizer) on the GPU, saves it
to local disk, then -- each arm in its own process -- asks it a 512-token prompt for 256 new tokens,
batch 1, greedy, EOS suppressed (random weights may emit it early):

  medtui-bf16 / medtui-4bit   the product, through its own streaming path (``stream_answer``), decode
                              paths ``graph`` (our loop, each step replayed as a checked CUDA graph),
                              ``fused`` (the same loop, its step first compiled by torch.compile, inductor)
                              and (bf16) ``compiled`` (transformers' static cache + torch.compile,
                              reduce-overhead)
  ref-*                       bare references outside medtui, each a small script in
                              benchmarks/reference/ written as a user of that library would:
                              transformers ``generate`` (eager), transformers static cache +
                              torch.compile, Unsloth fast inference (bf16 and 4-bit)
  diagnose                    benchmarks/diag_graph.py: the CUDA-graph capture check under several
                              kernel configurations, per layer and per kernel

Weights' values do not change speed. Results: OUT_DIR/bench_infer.json (+ .txt), each arm's log in
OUT_DIR/arm-*.log; the summary says which figure answers which goal (>= 150 tok/s bf16 and >= 3x bare
Unsloth, first token <= 60 ms, 4-bit figures) and whether ``auto`` should decode with ``graph``, ``fused``
or ``compiled`` on this GPU.
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
REF_DIR = Path(__file__).resolve().parent / "reference"
# (arm, kind, options), most important first: the budget may cut the tail.
ARMS = (
    ("medtui-bf16", "product", {"backend": "hf", "four_bit": False, "decodes": ("graph", "compiled", "fused")}),
    ("ref-unsloth-bf16", "reference", {"script": "unsloth_generate.py", "args": []}),
    ("ref-hf-static-compile-bf16", "reference", {"script": "hf_static_compile.py", "args": []}),
    ("medtui-4bit", "product", {"backend": "hf", "four_bit": True, "decodes": ("graph", "fused")}),
    ("ref-unsloth-4bit", "reference", {"script": "unsloth_generate.py", "args": ["--4bit"]}),
    ("ref-hf-generate-bf16", "reference", {"script": "hf_generate.py", "args": []}),
    ("diagnose", "diagnose", {}),
    # not run unless named in --arms
    ("ref-hf-generate-4bit", "reference", {"script": "hf_generate.py", "args": ["--4bit"]}),
    ("ref-hf-static-compile-forward-bf16", "reference", {"script": "hf_static_compile.py", "args": ["--style", "forward"]}),
    ("medtui-4bit-compiled", "product", {"backend": "hf", "four_bit": True, "decodes": ("compiled",)}),
    ("medtui-unsloth-bf16", "product", {"backend": "unsloth", "four_bit": False, "decodes": ("generate",)}),
)
DEFAULT_ARMS = ("medtui-bf16", "ref-unsloth-bf16", "ref-hf-static-compile-bf16", "ref-hf-generate-bf16", "diagnose",
                "medtui-4bit", "ref-unsloth-4bit")
# seconds an arm takes on an H200 (import + load + warm-up + runs; each compile ~1 min: medtui-bf16 compiles
# twice, compiled and fused; medtui-4bit once, fused), to skip what the budget cannot hold
ARM_ESTIMATE_S = {"medtui-bf16": 200, "ref-hf-static-compile-bf16": 90, "diagnose": 50, "medtui-4bit": 120,
                  "ref-hf-generate-bf16": 40}
ARM_DEFAULT_ESTIMATE_S = 60
GOALS = {"bf16_tok_s": 150.0, "x_unsloth": 3.0, "ttft_ms": 60.0}


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
    """A product arm: the model loaded as a user would, asked through ``stream_answer``."""
    _ensure_importable()
    opts = next(o for n, kind, o in ARMS if n == name and kind == "product")
    from medtui_engine.infer import LoadOptions, SamplingSettings, answer, load_model, resolve_source

    t0 = time.perf_counter()
    source = resolve_source(str(model_dir))
    loaded = load_model(source, LoadOptions(backend=opts["backend"], load_in_4bit=opts["four_bit"]))
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    out: dict = {"arm": name, "backend": loaded.backend, "quantized": loaded.quantized, "dtype": loaded.dtype,
                 "load_s": round(loaded.load_s, 2), "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU)",
                 "mem_after_load_gib": round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else None,
                 "versions": {"torch": torch.__version__, "transformers": transformers.__version__}, "runs": []}
    prompt = make_prompt(loaded.tokenizer, "seed", prompt_tokens)
    greedy = SamplingSettings(temperature=0, max_new_tokens=new_tokens)
    for decode in opts["decodes"]:
        try:
            # Warm-up at the measured size: kernels chosen, caches allocated, the CUDA graph captured and
            # checked, or the compiled step compiled (the measured run then reuses them, as later answers do)
            t_warm = time.perf_counter()
            w = answer(loaded, "", greedy, prompt=prompt, ignore_eos=True, decode=decode)
            warm_s = time.perf_counter() - t_warm
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            r = answer(loaded, "", greedy, prompt=prompt, ignore_eos=True, decode=decode)
            s = r.stats
            run = {
                "decode": decode, "decode_path": s.decode_path, "prompt_tokens": s.prompt_tokens,
                "output_tokens": s.output_tokens, "ttft_ms": round(s.ttft_s * 1000, 1),
                "decode_tok_s": round(s.decode_tokens_per_s, 1), "overall_tok_s": round(s.tokens_per_s, 1),
                "total_s": round(s.total_s, 2), "finish": s.finish_reason, "notes": list(s.notes),
                "warmup_s": round(warm_s, 2), "warmup_notes": list(w.stats.notes),
                "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0,
            }
            check = getattr(loaded.decoder, "check", None)
            if decode in ("graph", "fused") and check is not None:
                run["graph_check"] = check.as_dict()
            if getattr(loaded.decoder, "compile_failed", None):
                run["compile_failed"] = loaded.decoder.compile_failed
            out["runs"].append(run)
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
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/medtui-bench-inductor")  # compiled kernels shared by the arms
    for k in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "UNSLOTH_DISABLE_STATISTICS"):
        env.setdefault(k, "1")
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


def write_prompt(model_dir: Path, n_tokens: int, out: Path) -> None:
    """The measured prompt, as text, for the reference scripts (which tokenize it themselves)."""
    _ensure_importable()
    from transformers import AutoTokenizer

    out.write_text(make_prompt(AutoTokenizer.from_pretrained(str(model_dir)), "seed", n_tokens), "utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/medtui-bench-qwen2.5-7b"))
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting arms past this (default 7.5 min)")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help="arms to run, in this order (see ARMS)")
    ap.add_argument("--tiny", action="store_true", help="check the instrument on a CPU: toy shape")
    ap.add_argument("--_build", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_prompt", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a._build:
        info = build_model(a.model_dir, a.tiny)
        if a._prompt:
            write_prompt(a.model_dir, a.prompt_tokens, a._prompt)
        print("RESULT " + json.dumps(info), flush=True)
        return 0
    if a._arm:
        print("RESULT " + json.dumps(run_arm(a._arm, a.model_dir, a.prompt_tokens, a.new_tokens)), flush=True)
        return 0

    t0 = time.perf_counter()
    a.out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "prompt_tokens": a.prompt_tokens,
                    "new_tokens": a.new_tokens, "batch": 1, "sampling": "greedy, EOS suppressed", "goals": GOALS,
                    "arms": []}
    print(f"[bench] building the {'toy' if a.tiny else 'Qwen2.5-7B'}-shape random-weight model in {a.model_dir} ...",
          flush=True)
    tiny = ["--tiny"] if a.tiny else []
    prompt_file = a.out_dir / "prompt.txt"
    rc, text = _child(["--_build", "--model-dir", str(a.model_dir), "--prompt-tokens", str(a.prompt_tokens),
                       "--_prompt", str(prompt_file), *tiny, "x"], a.out_dir / "build.log", 300)
    report["model"] = _last_json(text) or {"error": f"build failed (exit {rc}); see build.log"}
    print(f"[bench] model: {report['model']}", flush=True)
    if rc != 0:
        (a.out_dir / "bench_infer.json").write_text(json.dumps(report, indent=2))
        return 1
    known = {n: (kind, o) for n, kind, o in ARMS}
    wanted = [x.strip() for x in a.arms.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in known]
    if unknown:
        print(f"[bench] unknown arms {unknown}: choose from {', '.join(known)}", flush=True)
        return 2
    for name in wanted:
        kind, opts = known[name]
        left = a.budget_s - (time.perf_counter() - t0)
        need = ARM_ESTIMATE_S.get(name, ARM_DEFAULT_ESTIMATE_S)
        if left < need * 0.8:
            report["arms"].append({"arm": name, "skipped": f"budget: {left:.0f} s left, the arm takes ~{need} s"})
            print(f"[bench] {name}: skipped, {left:.0f} s of the budget left", flush=True)
            continue
        print(f"[bench] {name} ...", flush=True)
        log = a.out_dir / f"arm-{name}.log"
        limit = max(60.0, left)
        if kind == "product":
            rc, text = _child(["--_arm", name, "--model-dir", str(a.model_dir), "--prompt-tokens", str(a.prompt_tokens),
                               "--new-tokens", str(a.new_tokens), "x"], log, limit)
        elif kind == "reference":
            rc, text = _child([str(a.model_dir), str(prompt_file), "--new-tokens", str(a.new_tokens), *opts["args"]],
                              log, limit, script=REF_DIR / opts["script"])
        else:
            rc, text = _child([str(a.out_dir / "diagnose"), "--model-dir", str(a.model_dir), "--prompt-tokens",
                               str(a.prompt_tokens)], log, limit, script=Path(__file__).resolve().parent / "diag_graph.py")
        result = _last_json(text)
        if result is None:
            partial = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            result = {"error": f"exit {rc}; see arm-{name}.log", "runs": partial}
        result = {"arm": name, "kind": kind, **result}
        report["arms"].append(result)
        (a.out_dir / "bench_infer.json").write_text(json.dumps(report, indent=2))
    report["total_s"] = round(time.perf_counter() - t0, 1)
    report["must_show"] = must_show(report)
    (a.out_dir / "bench_infer.json").write_text(json.dumps(report, indent=2))
    print(table(report), flush=True)
    (a.out_dir / "bench_infer.txt").write_text(table(report))
    return 0


def _rows(report: dict):
    """(arm, decode or "-", figures) for every measured run, product and reference alike."""
    for arm in report["arms"]:
        if arm.get("kind") == "product":
            for r in arm.get("runs", []):
                yield arm["arm"], r.get("decode", "-"), r
        elif arm.get("kind") == "reference" and "decode_tok_s" in arm:
            yield arm["arm"], "-", arm


def must_show(report: dict) -> dict:
    """The issue's goals against this call's figures, and which fast path ``auto`` should take here."""
    _ensure_importable()
    from medtui_engine.infer.stream import AUTO_GPU_DECODE

    runs = {(a, d): r for a, d, r in _rows(report)}
    compiled = runs.get(("medtui-bf16", "compiled"), {})
    unsloth = runs.get(("ref-unsloth-bf16", "-"), {})
    c = (compiled.get("decode_tok_s") or 0.0) if compiled.get("decode_path") == "compiled" else 0.0
    # our own loops count only as what they were asked to be: "graph" ran as a checked graph, "fused" as the
    # checked graph of the compiled step (a fused run that fell back to the uncompiled step is not "fused")
    loops = {d: runs.get(("medtui-bf16", d), {}) for d in ("graph", "fused")}
    verified = {d: r["decode_tok_s"] for d, r in loops.items() if r.get("decode_path") == d and r.get("decode_tok_s")}
    unverified = "; ".join(f"{d} ran as {r.get('decode_path')!r}" if r.get("decode_path") else f"{d} failed"
                           for d, r in loops.items() if r and d not in verified)
    own = max(verified, key=verified.get) if verified else None
    g = verified.get(own, 0.0)
    if own and g >= 1.1 * c:
        pick = own
        why = (f"our loop ({own}) verified and clearly faster ({g:.1f} vs {c:.1f} tok/s compiled)" if c
               else f"our loop ({own}) verified; the compiled path failed here")
        why += "; verified: " + ", ".join(f"{d} {t:.1f}" for d, t in verified.items()) + " tok/s"
    elif c:
        state = f"{own} {g:.1f} vs {c:.1f} tok/s, not clearly faster" if own else "no loop verified"
        pick, why = "compiled", f"our loop: {state}{'; ' + unverified if unverified else ''}: the maintained path"
    else:
        pick, why = AUTO_GPU_DECODE, "no fast path measured and verified"
    graph = loops["fused"] if pick == "fused" else loops["graph"]
    best = runs.get(("medtui-bf16", pick), {})
    ub = unsloth.get("decode_tok_s")
    four = {d: {"decode_tok_s": r.get("decode_tok_s"), "ttft_ms": r.get("ttft_ms"), "path": r.get("decode_path")}
            for (a, d), r in runs.items() if a.startswith("medtui-4bit")}
    return {
        "auto_decode_now": AUTO_GPU_DECODE, "auto_decode_should_be": pick, "why": why,
        "bf16_decode_tok_s": best.get("decode_tok_s"), "bf16_ttft_ms": best.get("ttft_ms"),
        "x_bare_unsloth": round(best["decode_tok_s"] / ub, 2) if best.get("decode_tok_s") and ub else None,
        "meets": {"bf16 >= 150 tok/s": (best.get("decode_tok_s") or 0) >= GOALS["bf16_tok_s"],
                  ">= 3x bare Unsloth": bool(ub and (best.get("decode_tok_s") or 0) >= GOALS["x_unsloth"] * ub),
                  "first token <= 60 ms": best.get("ttft_ms") is not None and best["ttft_ms"] <= GOALS["ttft_ms"]},
        "4bit": four, "bare_unsloth_4bit_tok_s": runs.get(("ref-unsloth-4bit", "-"), {}).get("decode_tok_s"),
        "graph_check": graph.get("graph_check"),
    }


def table(report: dict) -> str:
    lines = [f"decode, {report['model'].get('shape', '?')} shape, {report['prompt_tokens']}-token prompt, "
             f"{report['new_tokens']} new tokens, batch 1, greedy, same call",
             f"{'arm':<36}{'decode':<10}{'path':<14}{'TTFT ms':>9}{'tok/s':>8}{'peak GiB':>10}  notes"]
    for arm in report["arms"]:
        if "skipped" in arm or ("error" in arm and not arm.get("runs")):
            lines.append(f"{arm['arm']:<36}{arm.get('skipped') or arm.get('error')}")
    for name, decode, r in _rows(report):
        if "error" in r:
            lines.append(f"{name:<36}{decode:<10}error: {r['error'][:80]}")
            continue
        path = r.get("decode_path", "bare")
        peak = r.get("peak_mem_gib")
        lines.append(f"{name:<36}{decode:<10}{path:<14}{(r.get('ttft_ms') or float('nan')):>9.1f}"
                     f"{(r.get('decode_tok_s') or float('nan')):>8.1f}{(peak if peak is not None else float('nan')):>10.2f}  "
                     + "; ".join(r.get("notes") or [])[:160])
    diag = next((a for a in report["arms"] if a["arm"] == "diagnose" and "checks" in a), None)
    if diag:
        for c in diag["checks"]:
            ck = c.get("check") or {}
            lines.append(f"capture check [{c['config']}]: {c.get('verdict', c.get('error'))}; "
                         f"captured-vs-eager {ck.get('captured_vs_eager', '-')}, eager noise {ck.get('eager_noise', '-')}, "
                         f"greedy {ck.get('agreed', '-')}/{ck.get('steps', '-')}")
        lines.append(f"first layer differing under capture: {diag.get('first_differing_layer')}")
    m = report.get("must_show") or {}
    if m:
        lines.append(f"must show (bf16, product via '{m['auto_decode_should_be']}'): {m['bf16_decode_tok_s']} tok/s "
                     f"(goal >= 150), {m['x_bare_unsloth']}x bare Unsloth (goal >= 3), first token {m['bf16_ttft_ms']} ms "
                     f"(goal <= 60); met: {m['meets']}")
        lines.append(f"4-bit: product {m['4bit']}; bare Unsloth 4-bit {m['bare_unsloth_4bit_tok_s']} tok/s")
        lines.append(f"auto decode on this GPU: now '{m['auto_decode_now']}', should be '{m['auto_decode_should_be']}' "
                     f"({m['why']})")
    lines.append(f"total {report.get('total_s', '?')} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
