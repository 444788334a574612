"""Evaluation pace: cases a minute, one case at a time vs decoded together.

    python benchmarks/bench_eval.py OUT_DIR [--model-dir DIR] [--cases 64] [--new-tokens 256] [--batches 16,64]
                                   [--time-box-s 150]

Builds (or reuses) the random-weight Qwen2.5-7B-shape model of ``bench_infer.py``, then -- each arm in its
own process, loading the model as a user would -- answers ``--cases`` distinct cases (the demo evaluation's
questions, numbered), greedy, ``--new-tokens`` each with EOS suppressed (random weights may stop early):

  one-at-a-time   the product's console/eval path (``answer``, decode ``auto``), case after case; stops
                  starting cases after --time-box-s and reports the rate over the cases done
  batched-N       the product's ``answer_batch`` (left-padded ``generate``, N cases together)
  batched-compiled-N  the same on transformers' static cache, its decode step compiled (torch.compile)
  bare-generate-N the reference, outside medtui: transformers ``generate`` on N left-padded prompts, as a
                  user of transformers would write it (same prompts, same greedy settings); the largest N

Prints cases/minute and tokens/s per arm; OUT_DIR/bench_eval.json. Weights' values do not change speed.
``--tiny`` checks the instrument on a CPU with a toy shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import _child, _ensure_importable, _last_json, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def questions(n: int) -> list[str]:
    base = [json.loads(line)["Question"] for line in (ROOT / "data" / "demo_eval.jsonl").read_text("utf-8").splitlines()
            if line.strip()]
    return [f"（病例 {i + 1}）{base[i % len(base)]}" for i in range(n)]


def run_arm(arm: str, model_dir: Path, n_cases: int, new_tokens: int, time_box: float = 0.0) -> dict:
    _ensure_importable()
    import torch

    cuda = torch.cuda.is_available()
    qs = questions(n_cases)
    out: dict = {"arm": arm, "cases": n_cases, "new_tokens": new_tokens,
                 "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU)"}
    t0 = time.perf_counter()
    if arm.startswith("bare-generate-"):
        # the reference: plain transformers, no medtui code
        from transformers import AutoModelForCausalLM, AutoTokenizer

        batch = int(arm.rsplit("-", 1)[1])
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16,
                                                     device_map="cuda" if cuda else "cpu")
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                   for q in qs]
        out["load_s"] = round(time.perf_counter() - t0, 2)
        warm = tok(prompts[:batch], return_tensors="pt", padding=True, padding_side="left").to(model.device)
        model.generate(**warm, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        t1 = time.perf_counter()
        produced = 0
        for i in range(0, len(prompts), batch):
            enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, padding_side="left").to(model.device)
            gen = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            produced += (gen.shape[1] - enc["input_ids"].shape[1]) * gen.shape[0]
        seconds = time.perf_counter() - t1
    else:
        from medtui_engine.infer import LoadOptions, SamplingSettings, answer, load_model, resolve_source
        from medtui_engine.infer.batch import answer_batch

        loaded = load_model(resolve_source(str(model_dir)), LoadOptions(backend="hf"))
        out["load_s"] = round(time.perf_counter() - t0, 2)
        greedy = SamplingSettings(temperature=0, max_new_tokens=new_tokens)
        if arm == "one-at-a-time":
            answer(loaded, qs[0], greedy, ignore_eos=True)  # warm: kernels, the static cache, the graph
            t1 = time.perf_counter()
            results = []
            for q in qs:
                results.append(answer(loaded, q, greedy, ignore_eos=True))
                if time_box and time.perf_counter() - t1 > time_box:
                    break
            out["decode_path"] = results[-1].stats.decode_path
            out["notes"] = list(results[-1].stats.notes)
        else:
            batch = int(arm.rsplit("-", 1)[1])
            compiled = arm.startswith("batched-compiled-")
            # warm at the measured size (a compiled step is compiled for its batch and cache shape)
            answer_batch(loaded, qs[:batch], SamplingSettings(temperature=0, max_new_tokens=new_tokens if compiled else 8),
                         batch_size=batch, ignore_eos=True, compiled=compiled)
            t1 = time.perf_counter()
            results = answer_batch(loaded, qs, greedy, batch_size=batch, ignore_eos=True, compiled=compiled).results
            out["decode_path"] = results[-1].stats.decode_path
        seconds = time.perf_counter() - t1
        produced = sum(r.stats.output_tokens for r in results)
        n_cases = len(results)
    out.update(cases_done=n_cases, seconds=round(seconds, 2), tokens=produced,
               cases_per_minute=round(60 * n_cases / seconds, 2),
               tokens_per_s=round(produced / seconds, 1),
               peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/medtui-bench-qwen2.5-7b"))
    ap.add_argument("--cases", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batches", default="16,64", help="batch sizes for the batched arms (default 16,64)")
    ap.add_argument("--arms", help="only these arms (comma-separated)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no arm past this many seconds (default 7 min)")
    ap.add_argument("--time-box-s", type=float, default=150.0,
                    help="one-at-a-time: start no case past this many seconds (0: all cases)")
    ap.add_argument("--tiny", action="store_true", help="check the instrument on a CPU: toy shape")
    ap.add_argument("--_build", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_arm", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._build:
        print("RESULT " + json.dumps(build_model(a.model_dir, a.tiny)), flush=True)
        return 0
    if a._arm:
        print("RESULT " + json.dumps(run_arm(a._arm, a.model_dir, a.cases, a.new_tokens, a.time_box_s)), flush=True)
        return 0

    a.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tiny = ["--tiny"] if a.tiny else []
    rc, text = _child_here(["--_build", "--model-dir", str(a.model_dir), *tiny, "x"], a.out_dir / "build.log", 300)
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": a.cases,
                    "new_tokens": a.new_tokens, "sampling": "greedy, EOS suppressed",
                    "model": _last_json(text) or {"error": f"build failed (exit {rc}); see build.log"}, "arms": []}
    if rc != 0:
        (a.out_dir / "bench_eval.json").write_text(json.dumps(report, indent=2))
        print(f"[bench] the model could not be built: see {a.out_dir / 'build.log'}", flush=True)
        return 1
    sizes = [int(b) for b in a.batches.split(",") if b.strip()]
    arms = ["one-at-a-time", *(f"batched-{b}" for b in sizes), *(f"batched-compiled-{b}" for b in sizes),
            f"bare-generate-{max(sizes)}"]
    if a.arms:
        arms = [x for x in arms if x in a.arms.split(",")]
    for arm in arms:
        left = a.budget_s - (time.perf_counter() - t0)
        if left < 45:
            report["arms"].append({"arm": arm, "error": f"skipped: {left:.0f} s of the budget left"})
            print(f"[bench] {arm}: skipped, {left:.0f} s of the budget left", flush=True)
            continue
        print(f"[bench] {arm} ...", flush=True)
        rc, text = _child_here(["--_arm", arm, "--model-dir", str(a.model_dir), "--cases", str(a.cases),
                                "--new-tokens", str(a.new_tokens), "--time-box-s", str(a.time_box_s), "x"],
                               a.out_dir / f"arm-{arm}.log", max(60.0, left))
        report["arms"].append(_last_json(text) or {"arm": arm, "error": f"exit {rc}; see arm-{arm}.log"})
        (a.out_dir / "bench_eval.json").write_text(json.dumps(report, indent=2))
    report["total_s"] = round(time.perf_counter() - t0, 1)
    (a.out_dir / "bench_eval.json").write_text(json.dumps(report, indent=2))
    print(table(report), flush=True)
    return 0


def _child_here(args: list[str], log: Path, timeout: float) -> tuple[int, str]:
    return _child(args, log, timeout, script=Path(__file__).resolve())


def table(report: dict) -> str:
    one = next((r.get("cases_per_minute") for r in report["arms"] if r.get("arm") == "one-at-a-time"), None)
    lines = [f"evaluation pace: {report['cases']} cases x {report['new_tokens']} new tokens, greedy "
             f"({report['model'].get('shape', '?')} shape, random weights)",
             f"{'arm':<24}{'cases':>6}{'cases/min':>10}{'tok/s':>9}{'vs one':>8}{'peak GiB':>10}  path"]
    for r in report["arms"]:
        if "error" in r:
            lines.append(f"{r['arm']:<24}{r['error']}")
            continue
        ratio = f"{r['cases_per_minute'] / one:.1f}x" if one else "-"
        peak = f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") is not None else "-"
        lines.append(f"{r['arm']:<24}{r.get('cases_done', report['cases']):>6}{r['cases_per_minute']:>10.1f}"
                     f"{r['tokens_per_s']:>9.1f}{ratio:>8}{peak:>10}  {r.get('decode_path', 'bare')}")
    lines.append(f"bare-generate-N is the reference (plain transformers, outside medtui). total {report.get('total_s')} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
