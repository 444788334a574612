"""Reference: transformers' static KV cache with ``torch.compile`` (mode reduce-overhead), greedy.

    python hf_static_compile.py MODEL_DIR PROMPT_FILE --new-tokens 256 [--style generate|forward]

``--style generate`` (default): as transformers 5 documents it, a static cache handed to ``generate``
compiles the decode step itself (here with ``CompileConfig(fullgraph=True, mode="reduce-overhead")``).
``--style forward``: the older recipe, ``model.forward = torch.compile(model.forward,
mode="reduce-overhead", fullgraph=True)`` with ``cache_implementation="static"`` (generate's own
compilation off, so the forward is not compiled twice). The first calls compile (timed apart); then one
measured call. Prints one line ``RESULT {json}``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, CompileConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Clock, reference_parser  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: only to check the script itself


def main() -> None:
    ap = reference_parser(four_bit=False)
    ap.add_argument("--style", choices=("generate", "forward"), default="generate")
    a = ap.parse_args()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.bfloat16, device_map=DEVICE)
    load_s = time.perf_counter() - t0
    enc = tok(Path(a.prompt_file).read_text("utf-8"), return_tensors="pt", add_special_tokens=False).to(DEVICE)
    n = a.new_tokens
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, cache_implementation="static")
    if a.style == "generate":
        kw["compile_config"] = CompileConfig(fullgraph=True, mode="reduce-overhead")
    else:
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        kw["disable_compile"] = True
    t1 = time.perf_counter()
    for _ in range(2):  # compile, then record the CUDA graphs
        model.generate(**enc, **kw)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    warm_s = time.perf_counter() - t1
    clock = Clock()
    model.generate(**enc, **kw, streamer=clock)
    compiled = hasattr(model, "_compiled_call") if a.style == "generate" else True
    print("RESULT " + json.dumps({"reference": f"transformers static cache + torch.compile reduce-overhead ({a.style})",
                                  "compiled": compiled, "prompt_tokens": int(enc["input_ids"].shape[1]),
                                  "load_s": round(load_s, 1), "compile_and_warm_s": round(warm_s, 1),
                                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                                  "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None, **clock.figures()}),
          flush=True)


if __name__ == "__main__":
    main()
