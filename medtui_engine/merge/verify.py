"""Proof that a merged model is the trained model and that it stops.

1. A fresh process loads the merged directory with plain transformers, peft and unsloth blocked from
   importing (probe.py), and records its logits on a handful of prompts rendered with the run's
   template, plus two generation checks.
2. This process computes the same prompts with PEFT's *unmerged* base + adapter (the reference), and
   with the adapter disabled (the base alone, to show how much the adapter moves the logits).
3. Figures: max |logit difference| merged vs reference over every position of every prompt, top-1
   agreement over every position and at decisive positions (see compare_logits); the same against
   the base alone (the adapter's effect, which a merge that lost the adapter would show).

Two parts, judged differently:

- **Correctness** (the merged files are the trained model and keep the stop-token contract) refuses
  the install when it fails: logits and top-1 agreement as above; loads without peft/unsloth; the
  written generation config, the tokenizer's EOS and the template's end of turn agree
  (:mod:`medtui_engine.stoptokens`); pad matches the tokenizer; with EOS forced after 5 tokens,
  generate() halts right there using only the saved generation config; the chat template is present
  for a chat run.
- **Behaviour** (does the model stop by itself?) is a property of training, not of the merge: greedy
  answers to every probe prompt up to the limit, and how many were cut off there. A cut-off is a
  warning with its numbers (in medtui.json, on screen), never a refusal. A random-weight demo model
  never chooses EOS by itself, so there it is only information.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..offline import offline_env
from ..templates import render_prompt
from .plan import MergePlan
from .probe import BOOTSTRAP

QUESTIONS = (
    "女性，45岁，右上腹痛3天，伴发热，TBil 68μmol/L，墨菲征阳性。",
    "男性，62岁，进行性吞咽困难2月，体重下降8kg，胃镜示食管中段溃疡型肿物。",
    "A 30-year-old woman at 34 weeks of pregnancy has a blood pressure of 165/110 mmHg, headache and platelets of 80x10^9/L.",
    "男性，28岁，突发胸痛伴呼吸困难1小时，瘦高体型，左侧呼吸音消失。",
)
# top-1 agreement the merged model must reach against base + adapter at decisive positions (see
# compare_logits): there a correct merge cannot differ at all; the margin allows for nothing else
MIN_TOP1_DECISIVE = 0.999
# the merged-vs-reference difference must be small beside the adapter's own effect on the logits
MAX_DIFF_FRACTION_OF_EFFECT = 0.25
ABS_DIFF_FLOOR = 0.05
DEMO_GREEDY_TOKENS = 32


def render_prompts(template: str, tokenizer) -> list[str]:
    return [render_prompt(template, q, tokenizer) for q in QUESTIONS]


def run_probe(model_dir: Path, prompts: list[str], work: Path, max_new: int, timeout: float = 3600) -> dict:
    """The probe in a fresh process with peft/unsloth blocked; returns its result and logits."""
    from safetensors.torch import load_file

    work.mkdir(parents=True, exist_ok=True)
    prompts_file = work / "verify_prompts.json"
    prompts_file.write_text(json.dumps(prompts, ensure_ascii=False), encoding="utf-8")
    out_json = work / "verify_probe.json"
    env = offline_env()
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    proc = subprocess.run([sys.executable, "-c", BOOTSTRAP, str(out_json), str(model_dir), str(prompts_file), str(max_new)],
                          env=env, cwd=str(work), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out_json.exists():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-12:]
        raise RuntimeError("the merged model did not load with plain transformers (peft and unsloth blocked):\n"
                           + "\n".join(tail))
    result = json.loads(out_json.read_text(encoding="utf-8"))
    result["_logits"] = load_file(str(out_json.with_suffix(".logits.safetensors")))
    return result


def reference_logits(plan: MergePlan, prompts: list[str], tokenizer) -> dict:
    """PEFT's unmerged base + adapter, and the base alone, on the same prompts (same dtype)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if plan.dtype == "bf16" else torch.float16
    base = AutoModelForCausalLM.from_pretrained(plan.base_dir, dtype=dtype).to(device)
    model = PeftModel.from_pretrained(base, plan.adapter_dir).eval()
    out = {"tuned": [], "base": []}
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
            out["tuned"].append(model(ids).logits[0].float().cpu())
            with model.disable_adapter():
                out["base"].append(model(ids).logits[0].float().cpu())
    del model, base
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def top1_figures(got, ref) -> dict:
    """Top-1 agreement of ``got`` with ``ref`` (two [positions, vocab] tensors) over every position and
    at *decisive* positions: where the reference's best token leads the runner-up by more than twice
    the largest logit difference seen. Elsewhere (near-ties, everywhere on random weights) rounding or
    quantization may legitimately pick the other token; at a decisive position no difference within
    that bound can, so only a wrong model disagrees there."""
    diff = float((got - ref).abs().max())
    top2 = ref.topk(2, dim=-1)
    agree = got.argmax(-1) == top2.indices[:, 0]
    decisive = (top2.values[:, 0] - top2.values[:, 1]) > 2 * diff
    n_dec = int(decisive.sum())
    return {"positions": int(ref.shape[0]), "max_abs_logit_diff": round(diff, 6),
            "top1_agreement": round(float(agree.float().mean()), 4), "decisive_positions": n_dec,
            "top1_agreement_decisive": round(float(agree[decisive].float().mean()), 4) if n_dec else None}


def compare_logits(merged: list, tuned: list, base: list) -> dict:
    """The figures: merged vs base + adapter (:func:`top1_figures`: top-1 agreement is reported over
    every position and judged only at decisive positions), and base alone vs base + adapter (the
    adapter's effect)."""
    import torch

    m, t, b = torch.cat(merged), torch.cat(tuned), torch.cat(base)
    return {
        **top1_figures(m, t),
        "adapter_effect_max_abs_logit": round(float((b - t).abs().max()), 6),
        "adapter_effect_top1_agreement_base_vs_tuned": round(float((b.argmax(-1) == t.argmax(-1)).float().mean()), 4),
    }


def behaviour(answers: dict, demo: bool) -> dict:
    """How the probe answers ended: how many stopped by themselves, the cut-off rate, and a warning
    (a sentence, None when every answer stopped or the model has random weights)."""
    per = answers.get("per_prompt") or []
    n = len(per)
    stopped = [a for a in per if a.get("reached_eos")]
    lengths = [a["eos_at"] for a in stopped if a.get("eos_at")]
    cut = n - len(stopped)
    out = {
        "prompts": n,
        "max_new_tokens": answers.get("max_new_tokens"),
        "stopped": len(stopped),
        "cut_off": cut,
        "cut_off_rate": round(cut / n, 4) if n else None,
        "tokens_when_stopped": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1),
                                "max": max(lengths)} if lengths else None,
        "seconds": answers.get("seconds"),
        "random_weights_demo": demo,
        "per_prompt": per,
    }
    warning = None
    if cut and not demo:
        warning = (f"{cut} of {n} probe answers did not stop by themselves within {out['max_new_tokens']} tokens "
                   f"(cut-off rate {cut / n:.0%}): the model may not have learned to end its answers yet")
    out["warning"] = warning
    out["note"] = ("random weights (demo): such a model never chooses EOS by itself; stopping is proven by the "
                   "stop-token contract and the forced-EOS halt" if demo else
                   "a property of training, not of the merge: recorded and shown, never a reason to refuse")
    return out


BEHAVIOUR_FIX = ("train longer or on more cases, check that the training answers end with the template's end of "
                 "turn (`medtui validate`), or raise --verify-tokens if the answers are simply long")


def verify(plan: MergePlan, model_dir: Path, work: Path, max_new_tokens: int | None = None, tokenizer=None) -> dict:
    """Run every check on the (not yet installed) merged directory; returns the record for medtui.json.
    ``tokenizer``: the merged directory's, where the caller has read it already.

    ``passed`` is the correctness verdict only; how the model's answers end is ``behaviour`` (with a
    ``warning`` when some were cut off): a model that does not stop by itself is installed with a warning."""
    from transformers import AutoTokenizer

    from ..stoptokens import contract_for_dir

    t0 = time.perf_counter()
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(model_dir))
    prompts = render_prompts(plan.template, tok)
    if max_new_tokens is None:
        max_new_tokens = DEMO_GREEDY_TOKENS if plan.base_is_demo else 1024
    probe = run_probe(model_dir, prompts, work, max_new_tokens)
    ref = reference_logits(plan, prompts, tok)
    fig = compare_logits([probe["_logits"][f"logits_{i}"] for i in range(len(prompts))], ref["tuned"], ref["base"])
    diff, effect = fig["max_abs_logit_diff"], fig["adapter_effect_max_abs_logit"]

    contract = contract_for_dir(model_dir, plan.template, tok)
    eos_ids = probe["generation_eos_ids"]
    checks = {
        "loads_without_peft_unsloth": not any(probe["imported"].values()),
        "logits_match": diff <= max(ABS_DIFF_FLOOR, MAX_DIFF_FRACTION_OF_EFFECT * effect),
        "top1_agreement": fig["decisive_positions"] == 0 or fig["top1_agreement_decisive"] >= MIN_TOP1_DECISIVE,
        "stop_token_contract": contract.ok and all(i in eos_ids for i in contract.stop_ids),
        "pad_matches_tokenizer": probe["tokenizer_pad_id"] is None or probe["generation_pad_id"] == probe["tokenizer_pad_id"],
        "halts_on_eos": bool(probe["forced_eos"]) and all(h["halted"] for h in probe["forced_eos"]),
        "chat_template_present": probe["chat_template"] or plan.template != "chat",
    }
    failed = [k for k, ok in checks.items() if not ok]
    behave = behaviour(probe.get("answers") or {"per_prompt": [probe["greedy"]],
                                                 "max_new_tokens": max_new_tokens}, plan.base_is_demo)
    record = {
        "passed": not failed,
        "failed_checks": failed,
        "prompts": len(prompts),
        "template": plan.template,
        "template_eos": contract.turn_end,
        **fig,
        "thresholds": {"min_top1_at_decisive_positions": MIN_TOP1_DECISIVE,
                       "max_diff": f"max({ABS_DIFF_FLOOR}, {MAX_DIFF_FRACTION_OF_EFFECT} x adapter effect)",
                       "decisive_position": "the reference's top-1 leads its runner-up by more than 2 x max |logit diff|, "
                                            "so no rounding difference of that size can flip it"},
        "compared_in": probe["dtype"],
        "device": probe["device"],
        "generation_eos_ids": eos_ids,
        "generation_pad_id": probe["generation_pad_id"],
        "stop_contract": contract.as_dict(),
        "forced_eos": probe["forced_eos"],
        "greedy": probe["greedy"],
        "behaviour": behave,
        "warnings": [behave["warning"]] if behave["warning"] else [],
        "loaded_with": "AutoModelForCausalLM.from_pretrained, peft and unsloth blocked from importing",
        "checks": checks,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return record


def verify_adapter_export(plan: MergePlan, out_dir: Path) -> dict:
    """An adapter-only export: it must still fit the base (shapes re-checked from the written files)."""
    from .adapter import check_against_base, read_adapter
    from .stfiles import model_tensors

    base_cfg = json.loads((Path(plan.base_dir) / "config.json").read_text(encoding="utf-8"))
    info = read_adapter(out_dir)
    check_against_base(info, model_tensors(Path(plan.base_dir)), base_cfg, Path(plan.base_dir))
    return {"passed": True, "kind": "adapter-only", "lora_pairs": len(info.pairs),
            "checks": {"fits_base_shapes": True}, "note": "the adapter is applied at serve time (vLLM --enable-lora)"}
