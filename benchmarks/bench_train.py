"""GPU benchmark of the training engine against the bare reference instrument, in one command.

    python benchmarks/bench_train.py OUT_DIR --reference PATH/TO/train_bench.py

1. Builds a random-weight model of the Qwen2.5-7B shape (hidden 3584, intermediate 18944, 28 layers,
   28 heads, 4 KV heads, vocab 152064, bf16) with the real Qwen tokenizer, on the GPU, and saves it
   to local disk (default /tmp/medtui-bench/qwen2.5-7b-shape; reused when already there).
2. For each backend (unsloth, hf): runs the reference instrument (bare trl SFTTrainer, random token
   batches) and then the product's own job runner -- a detached ``medtui_engine.train.job`` with
   spec.json, events.jsonl, heartbeat thread and NVML -- on cases rendered through the seed template
   and cut to the same length: 4-bit, seq 2048, micro-batch 2, 20 steps, adamw_8bit, bf16, LoRA r=32
   on the seven projections.
3. Tokens/s over the same steps (after the warm-up steps) and peak VRAM of each, and the product's
   overhead against the bare figure (target: under 3%). Results in OUT_DIR/bench_train.json,
   logs in OUT_DIR (reference stdout, each run's events.jsonl and stdout.log).

Random weights: the numbers are for speed and memory only. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                 max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "special_tokens_map.json")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_model(out: Path) -> dict:
    """Random Qwen2.5-7B-shape weights, initialised on the GPU, saved as bf16 safetensors."""
    if (out / "config.json").exists() and (out / "medtui_bench.json").exists():
        log(f"model already at {out}")
        return json.loads((out / "medtui_bench.json").read_text())
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

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
    eos_id, pad_id = 151645, 151643
    cfg = Qwen2Config(**QWEN25_7B, bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    cfg.dtype = "bfloat16"
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = Qwen2ForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()
    meta = {"shape": "qwen2.5-7b", "params": params, "build_s": round(time.time() - t, 1)}
    (tmp / "medtui_bench.json").write_text(json.dumps(meta))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"built {params / 1e9:.2f}B parameters in {meta['build_s']} s -> {out}")
    return meta


def write_cases(path: Path, n: int, min_chars: int = 4000) -> None:
    """Cases long enough that every rendered case is cut to exactly max_seq_length tokens."""
    rng = random.Random(0)
    pool = "患者男性女性岁腹痛发热咳嗽胸闷心悸头晕乏力恶心呕吐黄疸水肿血压心率白细胞血红蛋白肌酐尿素氮胆红素转氨酶影像提示诊断鉴别治疗方案随访复查"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            body = "".join(rng.choice(pool) for _ in range(min_chars))
            fh.write(json.dumps({"Question": f"病例{i}：" + body[:400], "Complex_CoT": body,
                                 "Response": "疑似诊断：待定。"}, ensure_ascii=False) + "\n")


def run_reference(ref: Path, backend: str, model: Path, a, out: Path) -> dict:
    cmd = [sys.executable, str(ref), "--backend", backend, "--model", str(model), "--bits", "4",
           "--seq", str(a.seq), "--bs", str(a.bs), "--steps", str(a.steps), "--warm", str(a.warm), "--r", str(a.r)]
    log("reference: " + " ".join(cmd[1:]))
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp", timeout=a.arm_timeout)
    (out / f"reference_{backend}.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    m = re.search(r"^RESULT (\{.*\})$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        tail = (p.stdout + p.stderr)[-1500:]
        raise RuntimeError(f"reference {backend} failed (exit {p.returncode}): {tail}")
    res = json.loads(m.group(1))
    res["wall_s"] = round(time.time() - t, 1)
    return res


def run_product(backend: str, model: Path, data: Path, a, out: Path, runs_dir: Path) -> dict:
    from medtui_engine.runs.events import read_events
    from medtui_engine.runs.jobs import launch_job, wait_job
    from medtui_engine.runs.state import fold
    from medtui_engine.runs.store import new_run_dir
    from medtui_engine.train.spec import TrainSpec

    spec = TrainSpec(
        model=str(model), model_label="Qwen2.5-7B shape (random weights, benchmark)", data=str(data),
        backend=backend, load_in_4bit=True, max_seq_length=a.seq, micro_batch=a.bs, grad_accum=1,
        max_steps=a.steps, epochs=1, learning_rate=1e-4, warmup_ratio=0.0, optim="adamw_8bit", precision="bf16",
        lora_r=a.r, lora_alpha=a.r, lora_dropout=0.0, save_every_epoch=False, save_steps=0, seed=0,
    ).validate()
    run_dir = new_run_dir(runs_dir, f"bench-{backend}")
    spec.write(run_dir)
    t = time.time()
    pid = launch_job("medtui_engine.train.job", run_dir)
    log(f"product {backend}: job {pid} in {run_dir}")
    finished = wait_job(run_dir, timeout=a.arm_timeout)
    if not finished:
        from medtui_engine.runs.jobs import kill_job

        kill_job(run_dir)  # free the GPU for the next arm
        wait_job(run_dir, timeout=30)
    events = read_events(run_dir / "events.jsonl")
    for name in ("events.jsonl", "stdout.log", "spec.json"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out / f"product_{backend}_{name}")
    st = fold(events)
    if not finished:
        raise RuntimeError(f"product {backend} did not finish within {a.arm_timeout} s")
    if st.status != "finished":
        raise RuntimeError(f"product {backend} ended {st.status}: {st.error}")
    logs = {e["step"]: e for e in events if e["type"] == "log"}
    begin = next(e for e in events if e["type"] == "train_begin")
    fin = next(e for e in events if e["type"] == "finished")
    t_a, t_b = logs[a.warm]["elapsed_s"], logs[a.steps]["elapsed_s"]
    timed = a.steps - a.warm
    tokens_per_step = begin["train_tokens"] / begin["num_examples"] * a.bs
    losses = [e["loss"] for e in logs.values()]
    hb = [e for e in events if e["type"] == "heartbeat"]
    return {
        "backend": backend, "tokens_per_s": round(timed * tokens_per_step / (t_b - t_a)),
        "step_s": round((t_b - t_a) / timed, 3), "tokens_per_step": tokens_per_step,
        "peak_gib": round((fin.get("torch_peak_mib") or 0) / 1024, 2),
        "load_peak_gib": round((begin.get("load_peak_mib") or 0) / 1024, 2),
        "nvml_peak_gib": round((st.peak_mem_mib or 0) / 1024, 2), "heartbeats": len(hb), "events": len(events),
        "loss_first": losses[0], "loss_last": losses[-1], "wall_s": round(time.time() - t, 1),
        "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_train.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory for results and logs")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reference", help="path of the reference instrument train_bench.py (omit to skip it)")
    ap.add_argument("--model-dir", default="/tmp/medtui-bench/qwen2.5-7b-shape")
    ap.add_argument("--backends", default="unsloth,hf")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--bs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--r", type=int, default=32)
    ap.add_argument("--arm-timeout", type=int, default=240, help="seconds allowed per arm")
    ap.add_argument("--budget", type=int, default=470, help="seconds for the whole benchmark: arms that would not fit are skipped")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MEDTUI_HOME", "/tmp/medtui-bench/home")
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", "/tmp/medtui-bench/unsloth_compiled_cache")
    from medtui_engine.offline import apply_offline

    apply_offline()
    t0 = time.time()
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": vars(a), "arms": {}}
    if a.build_only:  # in a child process, so this one never holds a CUDA context during the arms
        build_model(Path(a.model_dir))
        return 0
    try:
        from medtui_engine.gpu import read_nvml

        info = read_nvml(with_processes=False)
        if not info.available or not info.gpus:
            print(f"bench_train needs a CUDA GPU ({info.error})", file=sys.stderr)
            return 2
        results["gpu"] = info.gpus[0].name
        results["driver"] = info.driver_version
        model = Path(a.model_dir)
        b = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out), "--build-only",
                            "--model-dir", str(model)], timeout=max(60, a.budget - 120))
        if b.returncode != 0:
            raise RuntimeError(f"building the model failed (exit {b.returncode})")
        results["model"] = json.loads((model / "medtui_bench.json").read_text())
        bench = Path("/tmp/medtui-bench")
        data = bench / "cases.jsonl"
        write_cases(data, a.bs * (a.steps + 4))
        runs_dir = bench / "runs"
        for backend in [b.strip() for b in a.backends.split(",") if b.strip()]:
            arm: dict = {}
            results["arms"][backend] = arm

            def fits(what: str, arm: dict = arm, backend: str = backend) -> bool:
                left = a.budget - (time.time() - t0)
                if left < 100:
                    arm[f"{what}_error"] = f"skipped: {left:.0f} s of the {a.budget} s budget left"
                    log(f"{what} {backend} skipped ({left:.0f} s left)")
                    return False
                a.arm_timeout = min(a.arm_timeout, int(left) - 10)
                return True

            if a.reference and fits("reference"):
                try:
                    arm["reference"] = run_reference(Path(a.reference).resolve(), backend, model, a, out)
                    log(f"reference {backend}: {arm['reference']['tokens_per_s']} tok/s, peak {arm['reference']['peak_gib']} GiB")
                except Exception as exc:
                    arm["reference_error"] = str(exc)
                    log(f"reference {backend} FAILED: {exc}")
            if not fits("product"):
                continue
            try:
                arm["product"] = run_product(backend, model, data, a, out, runs_dir)
                log(f"product {backend}: {arm['product']['tokens_per_s']} tok/s, peak {arm['product']['peak_gib']} GiB")
            except Exception as exc:
                arm["product_error"] = str(exc)
                log(f"product {backend} FAILED: {exc}")
            if "reference" in arm and "product" in arm:
                ref, prod = arm["reference"]["tokens_per_s"], arm["product"]["tokens_per_s"]
                arm["overhead_pct"] = round(100.0 * (ref - prod) / ref, 2)
            (out / "bench_train.json").write_text(json.dumps(results, indent=2))
    finally:
        results["total_s"] = round(time.time() - t0, 1)
        (out / "bench_train.json").write_text(json.dumps(results, indent=2))
    print()
    print(f"GPU: {results.get('gpu')}; Qwen2.5-7B shape, 4-bit, seq {a.seq}, batch {a.bs}, steps {a.warm + 1}-{a.steps} timed")
    print(f"{'backend':8} {'bare tok/s':>11} {'medtui tok/s':>13} {'overhead':>9} {'bare peak':>10} {'medtui peak':>12} {'medtui NVML':>12}")
    for backend, arm in results["arms"].items():
        ref, prod = arm.get("reference", {}), arm.get("product", {})
        ov = f"{arm['overhead_pct']:.2f}%" if "overhead_pct" in arm else "-"
        print(f"{backend:8} {ref.get('tokens_per_s', '-'):>11} {prod.get('tokens_per_s', '-'):>13} {ov:>9} "
              f"{str(ref.get('peak_gib', '-')) + ' GiB':>10} {str(prod.get('peak_gib', '-')) + ' GiB':>12} "
              f"{str(prod.get('nvml_peak_gib', '-')) + ' GiB':>12}")
        for k in ("reference_error", "product_error"):
            if k in arm:
                print(f"  {k}: {arm[k][:300]}")
    print(f"total {results['total_s']} s; results in {out / 'bench_train.json'}")
    ok = all("overhead_pct" in arm for arm in results["arms"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    # runnable as a file too (python benchmarks/bench_train.py OUT): the repo root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
