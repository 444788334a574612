"""Load a merged model the way a deployment would, in a fresh process where peft and unsloth cannot
be imported, and record what it does: logits on the verification prompts, whether generation halts
on EOS, and greedy answers to every prompt up to the limit (does it stop by itself?).

Run by verify.py as ``python -c BOOTSTRAP OUT_JSON MODEL_DIR PROMPTS_JSON MAX_NEW`` (BOOTSTRAP installs
the import block before anything else is imported). Writes ``OUT_JSON`` and the logits beside it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

BLOCKED = ("peft", "unsloth", "unsloth_zoo")

# Every import finder is wrapped so that, for peft and unsloth, it finds nothing: to the process
# (transformers' availability checks included) they look exactly as if they were not installed.
BOOTSTRAP = (
    "import sys\n"
    "class _Hide:\n"
    "    def __init__(self, inner):\n"
    "        self.inner = inner\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.split('.')[0] in {BLOCKED!r}:\n"
    "            return None\n"
    "        find = getattr(self.inner, 'find_spec', None)\n"
    "        return find(name, path, target) if find else None\n"
    "    def find_distributions(self, *args, **kwargs):\n"
    "        find = getattr(self.inner, 'find_distributions', None)\n"
    "        for dist in (find(*args, **kwargs) if find else ()):\n"
    f"            if (dist.metadata['Name'] or '').lower().replace('-', '_') not in {BLOCKED!r}:\n"
    "                yield dist\n"
    "    def invalidate_caches(self):\n"
    "        getattr(self.inner, 'invalidate_caches', lambda: None)()\n"
    "sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]\n"
    "from medtui_engine.merge.probe import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _force_eos_processor(at: int, eos_id: int, prompt_len: int):
    """A logits processor that leaves only EOS possible once ``at`` tokens were generated."""
    import torch

    class ForceEos:
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - prompt_len >= at:
                forced = torch.full_like(scores, float("-inf"))
                forced[:, eos_id] = 0.0
                return forced
            return scores

    return ForceEos()


def main(argv: list[str]) -> int:
    out_json, model_dir, prompts_json, max_new = argv[0], argv[1], argv[2], int(argv[3])
    from ..offline import apply_offline, skip_cuda_only_packages

    apply_offline()
    skip_cuda_only_packages()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompts = json.loads(Path(prompts_json).read_text(encoding="utf-8"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device).eval()
    load_s = time.perf_counter() - t0
    gen_cfg = model.generation_config
    eos_cfg = gen_cfg.eos_token_id
    eos_list = list(eos_cfg) if isinstance(eos_cfg, (list, tuple)) else ([eos_cfg] if eos_cfg is not None else [])
    result: dict = {
        "device": device, "dtype": str(model.dtype).replace("torch.", ""), "load_s": round(load_s, 2),
        "class": type(model).__name__, "generation_eos_ids": eos_list, "generation_pad_id": gen_cfg.pad_token_id,
        "tokenizer_eos": tok.eos_token, "tokenizer_eos_id": tok.eos_token_id, "tokenizer_pad_id": tok.pad_token_id,
        "chat_template": bool(getattr(tok, "chat_template", None)),
    }
    tensors = {}
    argmax = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            ids = tok(prompt, return_tensors="pt").input_ids.to(device)
            logits = model(ids).logits[0].float()
            tensors[f"logits_{i}"] = logits.cpu().contiguous()
            argmax.append(logits.argmax(-1).cpu().tolist())
    result["argmax"] = argmax

    # 1) halting: force EOS after a few tokens and check generate() stops right there, using only
    #    the stop ids the saved generation_config.json gives it (none are passed here)
    first = prompts[0]
    ids = tok(first, return_tensors="pt").to(device)
    n = ids.input_ids.shape[1]
    halts = []
    for eos_id in eos_list:
        at = 5
        out = model.generate(**ids, do_sample=False, max_new_tokens=at + 20,
                             logits_processor=LogitsProcessorList([_force_eos_processor(at, eos_id, n)]))
        new = out[0, n:].tolist()
        halts.append({"eos_id": eos_id, "token": tok.convert_ids_to_tokens(eos_id), "generated": len(new),
                      "halted": len(new) == at + 1 and new[-1] == eos_id})
    result["forced_eos"] = halts
    # 2) behaviour: greedy answers to every probe prompt (one batch, left-padded) up to the limit; which
    #    ended by themselves (an end id from the saved generation config) and after how many tokens
    t1 = time.perf_counter()
    tok.padding_side = "left"
    pad_id = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else tok.pad_token_id
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
        pad_id = tok.pad_token_id if pad_id is None else pad_id
    batch = tok(prompts, return_tensors="pt", padding=True).to(device)
    width = batch.input_ids.shape[1]
    out = model.generate(**batch, do_sample=False, max_new_tokens=max_new, pad_token_id=pad_id)
    answers = []
    for row in out[:, width:].tolist():
        hit = next((k for k, t in enumerate(row) if t in eos_list), None)
        answers.append({"reached_eos": hit is not None, "eos_at": None if hit is None else hit + 1,
                        "generated": len(row) if hit is None else hit + 1,
                        "text_head": tok.decode(row[: (hit if hit is not None else len(row))][:120],
                                                skip_special_tokens=False)[:300]})
    seconds = round(time.perf_counter() - t1, 2)
    result["answers"] = {"max_new_tokens": max_new, "seconds": seconds, "per_prompt": answers}
    result["greedy"] = {"max_new_tokens": max_new, "seconds": seconds,   # the first prompt's, as before
                        **{k: answers[0][k] for k in ("generated", "reached_eos", "eos_at", "text_head")}}
    result["imported"] = {name: name in sys.modules for name in BLOCKED}
    save_file(tensors, str(Path(out_json).with_suffix(".logits.safetensors")))
    Path(out_json).write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0
