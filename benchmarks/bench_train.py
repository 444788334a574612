"""GPU benchmark of the training recipes, in one command: the product's auto recipe, the seed recipe
and bare Unsloth + trl, on a named real model shape with the lengths of a real data set.

    medtui bench train OUT_DIR --data CASES.json [--shape qwen2.5-7b] [--steps 12] [--bare LIST]

1. Builds a random-weight model of the named shape (qwen2.5-1.5b, qwen2.5-7b, qwen2.5-14b, qwen3-8b;
   bf16, the real Qwen tokenizer) on the GPU in a child process, saved under --cache (reused).
2. Renders the data set through the seed template and tokenizes it with that tokenizer: the token
   length histogram (printed), and the rows the bare arms train on.
3. Runs, one process each, one after the other: the product's job (``medtui_engine.train.job``, the
   recipe resolved as ``medtui train`` resolves it, its fit probe included but not timed) with
   ``recipe = auto`` and with ``recipe = seed``; then each bare recipe of --bare (``bare_unsloth_train.py``
   beside this file: Unsloth + trl as a user writes them, no medtui code). Every arm trains 8 samples
   per optimizer step; tokens/s count real tokens (no padding) over the steps after --warm.
4. Prints tokens/s, peak memory, the ratio to the seed recipe and to the best bare recipe, and the
   time for 3 epochs of the data set; writes OUT_DIR/bench_train.json and each arm's log.
5. When the auto and seed arms both ran: their losses step by step, side by side, with the difference
   and a noise yardstick (each arm's step-to-step change; with --noise-seed N, the auto recipe again
   with seed N: other samples in each step, another LoRA init). The two arms train the same samples
   in the same order per optimizer step: both seed 0, and the trainer's seeded sampler draws one
   permutation of the rows whatever the micro-batch; a micro-batch of 8 takes 8 consecutive rows
   of it, 8 micro-batches of 1 the same 8 (padding-free batches flatten a micro-batch in order; a
   length-grouped sampler would not keep the order, and the table says so if auto used one).
6. --profile: the auto arm runs with MEDTUI_TORCH_PROFILE=OUT_DIR/profile_auto (optimizer steps 5-7
   profiled, see medtui_engine.train.profile); its tokens/s then leave out the profiled steps and the
   steps either side, and its summary is printed after the table.

Random weights: speed and memory only (the losses are printed for the record).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "qwen2.5-1.5b": ("qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)),
    "qwen2.5-7b": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                                 num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)),
    "qwen2.5-14b": ("qwen2", dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                                  num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False)),
    "qwen3-8b": ("qwen3", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False)),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "special_tokens_map.json")
# bare recipes: micro-batch x accumulation / bits / batching / checkpointing
DEFAULT_BARE = "8x1/16/padded/ckpt,8x1/16/pf/nockpt"
SEED_BARE = "1x8/4/padded/ckpt"  # the seed's recipe as its own code writes it (Unsloth + trl, no medtui code)
EFFECTIVE = 8


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_model(shape: str, out: Path) -> dict:
    """Random weights of ``shape``, initialised on the GPU, saved as bf16 safetensors with the real Qwen tokenizer."""
    if (out / "config.json").exists() and (out / "medtui_bench.json").exists():
        log(f"model already at {out}")
        return json.loads((out / "medtui_bench.json").read_text())
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from medtui_engine.demo import ensure_demo_model

    t = time.time()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    demo = ensure_demo_model()  # the real Qwen tokenizer, rebuilt offline
    for name in TOKENIZER_FILES:
        if (demo / name).exists():
            shutil.copy2(demo / name, tmp / name)
    tok_cfg = json.loads((tmp / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = 32768
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, ensure_ascii=False, indent=2))
    arch, dims = SHAPES[shape]
    config_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if arch == "qwen3" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = config_cls(**dims, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                     bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
    cfg.dtype = "bfloat16"
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = model_cls(cfg)
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()
    meta = {"shape": shape, "params": params, "build_s": round(time.time() - t, 1)}
    (tmp / "medtui_bench.json").write_text(json.dumps(meta))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"built {shape}: {params / 1e9:.2f}B parameters in {meta['build_s']} s -> {out}")
    return meta


def tokenize_data(data: Path, model: Path, max_len: int) -> tuple[list[list[int]], dict]:
    """The data set's rows as the product tokenizes them (seed template), and the length histogram."""
    from transformers import AutoTokenizer

    from medtui_engine.dataset.measure import histogram, percentile
    from medtui_engine.train.data import load_train_cases, tokenize_cases

    tok = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    cases, _ = load_train_cases(data, "Question", "Complex_CoT", "Response")
    rows, counts = tokenize_cases(cases, "seed", tok, max_len, mask_prompt=False)
    lens = sorted(len(r["input_ids"]) for r in rows)
    h = histogram(lens, 10)
    info = {"rows": len(rows), "tokens": counts["tokens"], "mean": round(sum(lens) / len(lens), 1),
            "p50": percentile(lens, 0.5), "p95": percentile(lens, 0.95), "max": lens[-1], "truncated": counts["truncated"],
            "histogram": {"edges": list(h.edges), "counts": list(h.counts)}}
    return [r["input_ids"] for r in rows], info


def step_times(logs: dict, first: int, last: int, skip: set[int] = frozenset()) -> tuple[int, float]:
    """(steps, seconds) over steps first..last from the log events' elapsed times, leaving out ``skip``."""
    n, secs = 0, 0.0
    for step in range(first, last + 1):
        if step in skip or step not in logs or step - 1 not in logs:
            continue
        n += 1
        secs += logs[step]["elapsed_s"] - logs[step - 1]["elapsed_s"]
    return n, secs


def run_product(recipe: str, model: Path, data: Path, a, out: Path, runs_dir: Path, seed: int = 0,
                profile_dir: Path | None = None) -> dict:
    from medtui_engine.runs.events import read_events
    from medtui_engine.runs.jobs import kill_job, launch_job, wait_job
    from medtui_engine.runs.state import fold
    from medtui_engine.runs.store import new_run_dir
    from medtui_engine.train.launch import prepare_spec
    from medtui_engine.train.recipe import resolve_recipe
    from medtui_engine.train.spec import TrainSpec

    spec = TrainSpec(model=str(model), model_label=f"{a.shape} shape (random weights, benchmark)", data=str(data),
                     recipe=recipe, backend=a.backend, max_seq_length=a.max_len, max_steps=a.steps, epochs=1,
                     warmup_ratio=0.0, lora_r=a.r, lora_alpha=a.r, save_every_epoch=False, seed=seed)
    # what `medtui train --recipe R --max-steps N ...` gives: these settings explicit, the rest the recipe's (and the
    # product's defaults: LoRA dropout 0.05, the seed's)
    spec.explicit = ["model", "data", "recipe", "backend", "max_seq_length", "max_steps", "lora_r", "lora_alpha",
                     "save_every_epoch", "seed"]
    spec = prepare_spec(spec)
    chosen = resolve_recipe(spec)
    log(f"product {recipe}: {chosen.summary()}")
    spec.save_steps = 0  # no checkpoint inside the timed steps (the recipe's periodic save is said above)
    run_dir = new_run_dir(runs_dir, f"bench-{recipe}")
    spec.write(run_dir)
    t = time.time()
    env = None
    if profile_dir is not None:
        from medtui_engine.train.job import PROFILE_ENV

        env = {**os.environ, PROFILE_ENV: str(profile_dir)}
    pid = launch_job("medtui_engine.train.job", run_dir, env=env)
    log(f"product {recipe}: job {pid} in {run_dir}")
    finished = wait_job(run_dir, timeout=a.arm_timeout)
    if not finished:
        kill_job(run_dir)  # free the GPU for the next arm
        wait_job(run_dir, timeout=30)
    events = read_events(run_dir / "events.jsonl")
    tag = recipe if seed == 0 else f"{recipe}_seed{seed}"
    for name in ("events.jsonl", "stdout.log", "spec.json"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out / f"product_{tag}_{name}")
    st = fold(events)
    if not finished:
        raise RuntimeError(f"product {recipe} did not finish within {a.arm_timeout} s")
    if st.status != "finished":
        raise RuntimeError(f"product {recipe} ended {st.status}: {st.error}")
    logs = {e["step"]: e for e in events if e["type"] == "log"}
    begin = next(e for e in events if e["type"] == "train_begin")
    fin = next(e for e in events if e["type"] == "finished")
    probe = next((e for e in events if e["type"] == "fit_probe"), {})
    skip: set[int] = set()
    profile = None
    if profile_dir is not None:
        from medtui_engine.train.profile import SUMMARY_FILE

        try:
            profile = json.loads((profile_dir / SUMMARY_FILE).read_text())
            if profile.get("window"):   # the profiled steps, the profiler's warm-up and the step it writes after
                skip = set(range(profile["window"][0] - 1, profile["window"][1] + 2))
        except (OSError, ValueError) as exc:
            profile = {"error": f"no profile summary: {exc}"}
    timed, seconds = step_times(logs, a.warm + 1, a.steps, skip)
    samples = begin["micro_batch"] * begin["grad_accum"]
    tokens_per_step = begin["train_tokens"] / begin["num_examples"] * samples
    resolved = json.loads((run_dir / "spec.json").read_text()).get("resolved_recipe", {})
    return {
        "recipe": resolved.get("summary"), "batching": resolved.get("batching"), "seed": seed,
        "timed_steps": timed, "skipped_steps": sorted(skip),
        "profile": profile, "profile_dir": str(profile_dir) if profile_dir else None,
        "tokens_per_s": round(timed * tokens_per_step / seconds), "step_s": round(seconds / timed, 3),
        "samples_per_step": samples, "peak_gib": round((fin.get("torch_peak_mib") or 0) / 1024, 2),
        "probe": probe.get("message"), "losses": [logs[s]["loss"] for s in sorted(logs)],
        "wall_s": round(time.time() - t, 1),
    }


def run_bare(spec: str, model: Path, rows: Path, a, out: Path) -> dict:
    mbga, bits, batching, ckpt = spec.split("/")
    bs, ga = (int(x) for x in mbga.split("x"))
    script = Path(__file__).resolve().parent / "bare_unsloth_train.py"
    cmd = [sys.executable, str(script), "--model", str(model), "--rows", str(rows), "--bs", str(bs), "--ga", str(ga),
           "--bits", bits, "--pf", "true" if batching == "pf" else "false", "--ckpt", "true" if ckpt == "ckpt" else "false",
           "--steps", str(a.steps), "--warm", str(a.warm), "--max-len", str(a.max_len), "--r", str(a.r),
           "--dropout", "0.05" if spec == SEED_BARE else "0"]  # the seed's code: 0.05; the reference recipes: 0
    env = dict(os.environ)   # no medtui on its path: drop the repository from PYTHONPATH, keep the rest
    repo = Path(__file__).resolve().parents[1]
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != repo]
    env["PYTHONPATH"] = os.pathsep.join(keep)
    log("bare: " + " ".join(cmd[2:]))
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp", timeout=a.arm_timeout, env=env)
    (out / f"bare_{spec.replace('/', '_')}.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    m = re.search(r"^RESULT (\{.*\})$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"bare {spec} failed (exit {p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
    res = json.loads(m.group(1))
    res["recipe"] = spec
    res["wall_s"] = round(time.time() - t, 1)
    return res


def fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _stats(diffs: list[float]) -> str:
    n = len(diffs)
    mean = sum(diffs) / n
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return (f"mean {mean:+.4f} (standard error {sd / n ** 0.5:.4f}), sd {sd:.4f}, "
            f"mean |diff| {sum(abs(d) for d in diffs) / n:.4f}, max |diff| {max(abs(d) for d in diffs):.4f}")


def loss_lines(arms: dict) -> list[str]:
    """The auto and seed arms' losses step by step with their difference, and the noise yardsticks
    (empty unless both arms logged losses)."""
    auto = (arms.get("product auto") or {}).get("losses") or []
    seed = (arms.get("product seed") or {}).get("losses") or []
    if not auto or not seed:
        return []
    noise_name = next((k for k in arms if k.startswith("product auto seed ") and arms[k].get("losses")), None)
    noise = arms[noise_name]["losses"] if noise_name else []
    n = min(len(auto), len(seed))
    head = f"{'step':>4} {'auto':>9} {'seed':>9} {'auto-seed':>10}"
    if noise:
        label = "auto s" + noise_name.rsplit(" ", 1)[1]
        head += f" {label:>9} {label + '-auto':>12}"
    out = ["", "losses step by step (the same samples in the same order in both arms, seed 0):", head]
    for i in range(n):
        line = f"{i + 1:>4} {auto[i]:>9.4f} {seed[i]:>9.4f} {auto[i] - seed[i]:>+10.4f}"
        if noise and i < len(noise):
            line += f" {noise[i]:>9.4f} {noise[i] - auto[i]:>+12.4f}"
        out.append(line)
    out.append(f"auto - seed over {n} steps: {_stats([auto[i] - seed[i] for i in range(n)])}")
    for name, xs in (("auto", auto), ("seed", seed)):
        steps = [abs(xs[i + 1] - xs[i]) for i in range(len(xs) - 1)]
        if steps:
            out.append(f"yardstick, {name}'s step-to-step change: median |loss(k+1) - loss(k)| {_median(steps):.4f}")
    if noise:
        m = min(n, len(noise))
        out.append(f"yardstick, {noise_name} - auto (other samples each step, other LoRA init) over {m} steps: "
                   + _stats([noise[i] - auto[i] for i in range(m)]))
    if (arms.get("product auto") or {}).get("batching") == "grouped":
        out.append("CAUTION: the auto arm used length-grouped batches, which reorder the samples: the steps above "
                   "compare different samples")
    return out


def profile_lines(profile: dict | None, where: str | None) -> list[str]:
    """The auto arm's profile summary (MEDTUI_TORCH_PROFILE), a few lines."""
    if not profile:
        return []
    out = ["", f"profile of the auto arm ({where}):"]
    if profile.get("error") or profile.get("note") or profile.get("profile_error"):
        out.append("  " + str(profile.get("error") or profile.get("note") or profile.get("profile_error")))
    p = profile.get("profile") or {}
    mean = p.get("mean") or {}
    if p:
        out.append(f"  steps {p.get('steps')}: wall ms {p.get('wall_ms')}; device busy ms {p.get('device_busy_ms')}; "
                   f"gap (GPU idle) ms {p.get('gap_ms')}")
        if mean.get("device_busy_ms") is not None:
            out.append(f"  mean step {mean['wall_ms']:.1f} ms = device busy {mean['device_busy_ms']:.1f} + idle "
                       f"{mean['gap_ms']:.1f} ms ({mean['gap_ms'] / mean['wall_ms']:.0%}); kernels/step "
                       f"{p.get('kernels_per_step')}; host waits on the GPU {mean.get('host_sync_wait_ms')} ms/step")
        fam = p.get("device_ms_per_step_by_family") or {}
        if fam:
            out.append("  device ms/step by family: " + ", ".join(f"{k} {v:.1f}" for k, v in fam.items() if v))
        opt = p.get("optimizer_step") or {}
        out.append(f"  optimizer step: host ms {opt.get('host_ms')}, device ms {opt.get('device_ms')}")
        for k in (p.get("top_kernels") or [])[:6]:
            out.append(f"  {k['device_ms_per_step']:>8.2f} ms/step {k['calls']:>6} calls  [{k['family']}] {k['name'][:90]}")
    walls = ((profile.get("steps_perf_counter") or {}).get("wall_ms") or {})
    if walls:
        out.append("  every step's wall ms (perf_counter): " + " ".join(f"{k}:{v:.0f}" for k, v in walls.items()))
    calls = ((profile.get("job_overhead") or {}).get("by_call") or {})
    if calls:
        out.append("  the job's own work per step (perf_counter, whole run): " + "; ".join(
            f"{k.split(' (')[0]} {v['per_step_ms']:.2f} ms" for k, v in list(calls.items())[:6]))
    return out


def report(results: dict, a) -> bool:
    arms = results["arms"]
    seed = (arms.get("product seed") or {}).get("tokens_per_s")
    bare = [v for k, v in arms.items() if k.startswith("bare") and "tokens_per_s" in v]
    fast = [v for v in bare if v.get("recipe") != SEED_BARE]  # the seed's own recipe is the floor, not a rival
    best = max(fast, key=lambda v: v["tokens_per_s"]) if fast else None
    tokens_3 = 3 * (results.get("data") or {}).get("tokens", 0)
    print()
    d = results.get("data") or {}
    print(f"GPU: {results.get('gpu')}; {a.shape} shape ({(results.get('model') or {}).get('params', 0) / 1e9:.2f}B, "
          f"random weights); data: {d.get('rows')} cases, mean {d.get('mean')} tokens, p50 {d.get('p50')}, "
          f"p95 {d.get('p95')}, max {d.get('max')}; steps {a.warm + 1}-{a.steps} timed, {EFFECTIVE} samples a step")
    print(f"{'arm':28} {'tokens/s':>9} {'peak':>9} {'vs seed':>8} {'vs bare':>8} {'3 epochs':>9}  recipe")
    for name, v in arms.items():
        tps = v.get("tokens_per_s")
        if not tps:
            print(f"{name:28} FAILED: {str(v.get('error'))[:300]}")
            continue
        vs_seed = f"{tps / seed:.2f}x" if seed else "-"
        vs_bare = f"{tps / best['tokens_per_s']:.2f}x" if best else "-"
        epochs = fmt_time(tokens_3 / tps) if tokens_3 else "-"
        print(f"{name:28} {tps:>9,} {v.get('peak_gib', 0):>7.1f}G {vs_seed:>8} {vs_bare:>8} {epochs:>9}  {v.get('recipe')}")
    auto = arms.get("product auto") or {}
    if auto.get("probe"):
        print(f"auto's {auto['probe']}")
    if auto.get("skipped_steps"):
        print(f"auto's tokens/s over {auto.get('timed_steps')} steps: steps {auto['skipped_steps'][0]}-"
              f"{auto['skipped_steps'][-1]} (profiled, or next to it) left out")
    if best:
        print(f"best bare recipe: {best['recipe']}")
    seed_bare = next((v for v in bare if v.get("recipe") == SEED_BARE), None)
    if seed_bare and auto.get("tokens_per_s"):
        print(f"auto vs the seed recipe written bare ({SEED_BARE}, Unsloth + trl as the seed's code): "
              f"{auto['tokens_per_s'] / seed_bare['tokens_per_s']:.2f}x; vs medtui's own seed recipe: "
              + (f"{auto['tokens_per_s'] / seed:.2f}x" if seed else "-"))
    for line in loss_lines(arms) + profile_lines(auto.get("profile"), auto.get("profile_dir")):
        print(line)
    print(f"total {results['total_s']} s; results in {Path(a.out) / 'bench_train.json'}")
    return all("tokens_per_s" in v for v in arms.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="medtui bench train", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory for results and logs")
    ap.add_argument("--data", required=True, help="the data set whose lengths the arms train on (Question, "
                                                  "Complex_CoT, Response), rendered through the seed template")
    ap.add_argument("--shape", choices=list(SHAPES), default="qwen2.5-7b")
    ap.add_argument("--backend", default="auto", help="the product's backend (default auto: Unsloth on a GPU)")
    ap.add_argument("--bare", default=DEFAULT_BARE,
                    help=f"bare recipes, MBxGA/BITS/padded|pf/ckpt|nockpt separated by commas (default {DEFAULT_BARE})")
    ap.add_argument("--arms", default="auto,seed,bare", help="which arms to run (auto, seed, bare)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--r", type=int, default=32)
    ap.add_argument("--cache", default="/tmp/medtui-bench", help="where the built models and runs go")
    ap.add_argument("--arm-timeout", type=int, default=240, help="seconds allowed per arm")
    ap.add_argument("--budget", type=int, default=450, help="seconds for the whole benchmark: arms that would not "
                                                            "fit are skipped")
    ap.add_argument("--profile", action="store_true",
                    help="profile the auto arm's optimizer steps 5-7 (MEDTUI_TORCH_PROFILE=OUT/profile_auto) and print "
                         "the summary")
    ap.add_argument("--noise-seed", type=int, default=None, metavar="N",
                    help="also run the auto recipe with seed N: a noise yardstick for the step-by-step loss table")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(a.cache)
    model = cache / f"{a.shape}-shape"
    os.environ.setdefault("MEDTUI_HOME", str(cache / "home"))
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", str(cache / "unsloth_compiled_cache"))
    from medtui_engine.offline import apply_offline

    apply_offline()
    if a.build_only:  # in a child process, so this one never holds a CUDA context during the arms
        build_model(a.shape, model)
        return 0
    t0 = time.time()
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": vars(a), "arms": {}}
    try:
        from medtui_engine.gpu import read_nvml

        info = read_nvml(with_processes=False)
        if not info.available or not info.gpus:
            print(f"bench train needs a CUDA GPU ({info.error})", file=sys.stderr)
            return 2
        results["gpu"] = info.gpus[0].name
        b = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out), "--build-only", "--data", a.data,
                            "--shape", a.shape, "--cache", str(cache)], timeout=max(60, a.budget - 120))
        if b.returncode != 0:
            raise RuntimeError(f"building the model failed (exit {b.returncode})")
        results["model"] = json.loads((model / "medtui_bench.json").read_text())
        rows, results["data"] = tokenize_data(Path(a.data), model, a.max_len)
        rows_file = cache / f"rows-{a.shape}.json"
        rows_file.write_text(json.dumps(rows))
        log(f"data: {results['data']['rows']} cases, mean {results['data']['mean']} tokens, max {results['data']['max']}")
        wanted = {x.strip() for x in a.arms.split(",")}
        plan = [(f"product {r}", r) for r in ("auto", "seed") if r in wanted]
        if a.noise_seed is not None and "auto" in wanted:
            plan.append((f"product auto seed {a.noise_seed}", "auto"))
        if "bare" in wanted:
            plan += [(f"bare {s}", s) for s in a.bare.split(",") if s.strip()]
        for name, what in plan:
            left = a.budget - (time.time() - t0)
            if left < 60:
                results["arms"][name] = {"error": f"skipped: {left:.0f} s of the {a.budget} s budget left"}
                continue
            a.arm_timeout = min(a.arm_timeout, int(left) - 5)
            try:
                if name.startswith("product auto seed "):
                    res = run_product(what, model, Path(a.data).resolve(), a, out, cache / "runs", seed=a.noise_seed)
                elif name.startswith("product"):
                    prof = (out / "profile_auto").resolve() if a.profile and what == "auto" else None
                    res = run_product(what, model, Path(a.data).resolve(), a, out, cache / "runs", profile_dir=prof)
                else:
                    res = run_bare(what, model, rows_file, a, out)
                log(f"{name}: {res['tokens_per_s']:,} tokens/s, peak {res['peak_gib']} GiB")
            except Exception as exc:  # one arm's failure is reported; the others still run
                res = {"error": str(exc)}
                log(f"{name} FAILED: {exc}")
            results["arms"][name] = res
            (out / "bench_train.json").write_text(json.dumps(results, indent=2))
    finally:
        results["total_s"] = round(time.time() - t0, 1)
        (out / "bench_train.json").write_text(json.dumps(results, indent=2))
    return 0 if report(results, a) else 1


if __name__ == "__main__":
    # runnable as a file too (python benchmarks/bench_train.py OUT ...): the repo root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
