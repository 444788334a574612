"""Reference: Unsloth's fast inference as its documentation shows it, greedy.

    python unsloth_generate.py MODEL_DIR PROMPT_FILE --new-tokens 256 [--4bit]

Prints one line ``RESULT {json}``."""

# ruff: noqa: I001  -- Unsloth must be imported before transformers
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import unsloth  # noqa: F401  -- before transformers, as Unsloth asks
from unsloth import FastLanguageModel

import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Clock, reference_parser  # noqa: E402


def main() -> None:
    ap = reference_parser()
    a = ap.parse_args()
    t0 = time.perf_counter()
    model, tok = FastLanguageModel.from_pretrained(model_name=a.model_dir, max_seq_length=2048, dtype=torch.bfloat16,
                                                   load_in_4bit=a.four_bit, local_files_only=True)
    FastLanguageModel.for_inference(model)
    load_s = time.perf_counter() - t0
    enc = tok(Path(a.prompt_file).read_text("utf-8"), return_tensors="pt", add_special_tokens=False).to("cuda")
    n = a.new_tokens
    model.generate(**enc, max_new_tokens=16, min_new_tokens=16, do_sample=False)  # warm-up
    clock = Clock()
    model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
    print("RESULT " + json.dumps({"reference": "Unsloth fast inference", "4bit": a.four_bit,
                                  "prompt_tokens": int(enc["input_ids"].shape[1]), "load_s": round(load_s, 1),
                                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                               "unsloth": unsloth.__version__},
                                  "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), **clock.figures()}),
          flush=True)


if __name__ == "__main__":
    main()
