"""Reference: transformers ``generate`` as its documentation shows it (dynamic cache, eager), greedy.

    python hf_generate.py MODEL_DIR PROMPT_FILE --new-tokens 256 [--4bit]

Prints one line ``RESULT {json}``: time to first token, decode tokens/s (after the first), overall."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Clock, reference_parser  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: only to check the script itself


def main() -> None:
    ap = reference_parser()
    a = ap.parse_args()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    kw = {"dtype": torch.bfloat16, "device_map": DEVICE}
    if a.four_bit:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, **kw)
    load_s = time.perf_counter() - t0
    enc = tok(Path(a.prompt_file).read_text("utf-8"), return_tensors="pt", add_special_tokens=False).to(DEVICE)
    n = a.new_tokens
    model.generate(**enc, max_new_tokens=16, min_new_tokens=16, do_sample=False)  # warm-up: kernels chosen
    clock = Clock()
    model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
    print("RESULT " + json.dumps({"reference": "transformers generate (eager, dynamic cache)", "4bit": a.four_bit,
                                  "prompt_tokens": int(enc["input_ids"].shape[1]), "load_s": round(load_s, 1),
                                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                                  "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None, **clock.figures()}),
          flush=True)


if __name__ == "__main__":
    main()
