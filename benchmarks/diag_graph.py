"""Why a captured decode step differs from the eager one: a diagnostic for the GPU.

    python benchmarks/diag_graph.py OUT_DIR --model-dir DIR [--prompt-tokens 512]

Loads the model as the product does (transformers, bf16, sdpa) and, on a 512-token prompt, measures:

1. the capture check (``StaticDecoder``'s, the one the product runs) under each kernel configuration:
   default; bf16 GEMMs without reduced-precision (split-K) reductions; the cuBLASLt backend; SDPA forced
   to its math / memory-efficient / cuDNN kernel. Per configuration: captured-vs-eager, eager-vs-eager
   (the same step twice, and the cached step against the full forward), the tolerance, greedy agreement
   over 32 steps, the verdict, and the replayed step's time.
2. where a difference starts: every layer's hidden state from the captured step against the eager one
   (the first layer that differs, and how the difference grows);
3. which kernel differs under capture: each projection of layer 0 and the LM head (M=1, the real
   shapes), the masked SDPA call of a decode step, and RMSNorm, run eagerly twice and captured.

A wrong output (a cache or position bug) shows as captured-vs-eager far above eager-vs-eager in every
configuration and a low greedy agreement; kernel noise shows as captured-vs-eager of the size of
eager-vs-eager, layer differences that start at a GEMM and grow slowly, and configurations that agree.
Writes OUT_DIR/diag_graph.json and prints a summary. ``--tiny`` checks the instrument on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import _ensure_importable, make_prompt  # noqa: E402


def _maxdiff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


@contextlib.contextmanager
def _config(name: str):
    """Kernel configuration ``name`` for the duration of the block (restored after)."""
    import torch

    matmul = torch.backends.cuda.matmul
    saved_rr = matmul.allow_bf16_reduced_precision_reduction
    saved_blas = torch.backends.cuda.preferred_blas_library() if torch.cuda.is_available() else None
    ctx = contextlib.nullcontext()
    try:
        if name == "no-reduced-precision-reduction":
            matmul.allow_bf16_reduced_precision_reduction = False
        elif name == "cublaslt":
            torch.backends.cuda.preferred_blas_library("cublaslt")
        elif name.startswith("sdpa-"):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            backend = {"sdpa-math": SDPBackend.MATH, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                       "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[name]
            ctx = sdpa_kernel([backend])
        with ctx:
            yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction = saved_rr
        if saved_blas is not None:
            torch.backends.cuda.preferred_blas_library(saved_blas)


CONFIGS = ("default", "no-reduced-precision-reduction", "cublaslt", "sdpa-math", "sdpa-efficient", "sdpa-cudnn")


def check_under(loaded, input_ids, name: str, cuda: bool) -> dict:
    """The product's capture check under configuration ``name``, and the replayed step's time."""
    import torch

    from medtui_engine.infer.decoder import EagerReplay, StaticDecoder

    out: dict = {"config": name}
    try:
        with _config(name), torch.no_grad():
            dec = StaticDecoder(loaded.model, loaded.device, True, graphs=None if cuda else EagerReplay())
            dec.prepare(int(input_ids.shape[1]) + 256)
            logits = dec.prefill(input_ids)
            tok = logits.argmax(dim=-1, keepdim=True)
            dec.step(tok)
            out["check"] = dec.check.as_dict() if dec.check else None
            out["graph_failed"] = dec.graph_failed
            out["verdict"] = "graph kept" if dec.graph is not None else "refused"
            if dec.graph is not None and cuda:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(32):
                    dec.step(tok)
                torch.cuda.synchronize()
                out["replay_ms"] = round((time.perf_counter() - t0) / 32 * 1000, 3)
            dec.close()
    except Exception as exc:  # one configuration failing (no cuDNN attention here, say) must not lose the rest
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


def layer_diffs(loaded, input_ids, cuda: bool) -> dict:
    """Every hidden state of one decode step, captured against eager (same cache, same position)."""
    import torch
    from transformers import StaticCache

    model = loaded.model
    cache = StaticCache(config=model.config, max_cache_len=int(input_ids.shape[1]) + 256)
    with torch.no_grad():
        first = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        ids = first.argmax(dim=-1, keepdim=True).clone()
        at = [layer.cumulative_length.clone() for layer in cache.layers]

        def restore():
            for layer, v in zip(cache.layers, at, strict=True):
                layer.cumulative_length.copy_(v)

        def step():
            o = model(input_ids=ids, past_key_values=cache, use_cache=True, output_hidden_states=True,
                      logits_to_keep=1)
            return [h[:, -1] for h in o.hidden_states] + [o.logits[:, -1]]

        eager = [t.clone() for t in step()]
        restore()
        again = [t.clone() for t in step()]
        restore()
        if not cuda:
            return {"needs": "CUDA"}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
            restore()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = step()
        restore()
        graph.replay()
        torch.cuda.synchronize()
        captured = [t.clone() for t in static]
    names = ["embeddings"] + [f"layer {i}" for i in range(len(eager) - 3)] + ["final norm", "logits"]
    rows = [{"at": n, "captured_vs_eager": _maxdiff(c, e), "eager_vs_eager": _maxdiff(a, e),
             "scale": float(e.float().abs().max())} for n, c, e, a in zip(names, captured, eager, again, strict=True)]
    first_diff = next((r["at"] for r in rows if r["captured_vs_eager"] > 0), None)
    return {"first_differing": first_diff, "rows": rows}


def op_diffs(loaded, cuda: bool) -> list[dict]:
    """Single kernels of a decode step at the real shapes: eager twice, and captured."""
    if not cuda:
        return [{"needs": "CUDA"}]
    import torch
    import torch.nn.functional as F

    model = loaded.model
    layer = model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    hidden = model.config.hidden_size
    g = torch.Generator(device="cuda").manual_seed(0)
    dtype = next(model.parameters()).dtype
    x = torch.randn((1, 1, hidden), generator=g, device="cuda", dtype=dtype)
    xi = torch.randn((1, 1, model.config.intermediate_size), generator=g, device="cuda", dtype=dtype)
    heads, hd = model.config.num_attention_heads, hidden // model.config.num_attention_heads
    length = 768
    q = torch.randn((1, heads, 1, hd), generator=g, device="cuda", dtype=dtype)
    k = torch.randn((1, heads, length, hd), generator=g, device="cuda", dtype=dtype)
    v = torch.randn((1, heads, length, hd), generator=g, device="cuda", dtype=dtype)
    mask = (torch.arange(length, device="cuda") <= 512).view(1, 1, 1, length)
    ops = {
        "q_proj (with bias)": lambda: attn.q_proj(x), "k_proj (with bias)": lambda: attn.k_proj(x),
        "v_proj (with bias)": lambda: attn.v_proj(x), "o_proj": lambda: attn.o_proj(x),
        "gate_proj": lambda: mlp.gate_proj(x), "up_proj": lambda: mlp.up_proj(x), "down_proj": lambda: mlp.down_proj(xi),
        "lm_head": lambda: model.lm_head(x),
        "input_layernorm": lambda: layer.input_layernorm(x),
        "sdpa, bool mask (decode)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
    }
    rows = []
    with torch.no_grad():
        for name, fn in ops.items():
            try:
                a = fn().clone()
                b = fn().clone()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    fn()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = fn()
                graph.replay()
                torch.cuda.synchronize()
                rows.append({"op": name, "eager_vs_eager": _maxdiff(a, b), "captured_vs_eager": _maxdiff(out, a),
                             "bitwise_equal": bool(torch.equal(out, a)), "scale": float(a.float().abs().max())})
            except Exception as exc:
                rows.append({"op": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    return rows


def run(model_dir: Path, prompt_tokens: int) -> dict:
    _ensure_importable()
    import torch
    import transformers

    from medtui_engine.infer import LoadOptions, load_model, resolve_source

    cuda = torch.cuda.is_available()
    loaded = load_model(resolve_source(str(model_dir)), LoadOptions(backend="hf"))
    prompt = make_prompt(loaded.tokenizer, "seed", prompt_tokens)
    input_ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(loaded.device)
    cfg = loaded.model.config
    report: dict = {
        "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None},
        "shape": {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "num_key_value_heads", "intermediate_size", "vocab_size")},
        "prompt_tokens": int(input_ids.shape[1]), "dtype": loaded.dtype,
        "flags": {"allow_bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
                  "preferred_blas_library": str(torch.backends.cuda.preferred_blas_library()) if cuda else None,
                  "sdpa_flash": torch.backends.cuda.flash_sdp_enabled(), "sdpa_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                  "sdpa_cudnn": torch.backends.cuda.cudnn_sdp_enabled(), "sdpa_math": torch.backends.cuda.math_sdp_enabled()},
    }
    report["checks"] = [check_under(loaded, input_ids, name, cuda) for name in (CONFIGS if cuda else ("default",))]
    for row in report["checks"]:
        print(json.dumps(row), flush=True)
    report["layers"] = layer_diffs(loaded, input_ids, cuda)
    report["ops"] = op_diffs(loaded, cuda)
    return report


def summary(report: dict) -> str:
    lines = [f"capture check on {report['gpu']}, shape {report['shape']}, {report['prompt_tokens']}-token prompt"]
    lines.append(f"{'config':<32}{'verdict':<12}{'capt-vs-eager':>14}{'eager-noise':>12}{'tolerance':>11}{'greedy':>8}{'replay ms':>10}")
    for r in report["checks"]:
        c = r.get("check") or {}
        if "error" in r:
            lines.append(f"{r['config']:<32}error: {r['error'][:90]}")
            continue
        lines.append(f"{r['config']:<32}{r['verdict']:<12}{c.get('captured_vs_eager', float('nan')):>14.4g}"
                     f"{c.get('eager_noise', float('nan')):>12.4g}{c.get('tolerance', float('nan')):>11.4g}"
                     f"{str(c.get('agreed', '-')) + '/' + str(c.get('steps', '-')):>8}{r.get('replay_ms', '-'):>10}")
    lay = report.get("layers", {})
    if lay.get("rows"):
        lines.append(f"layers: first differing under capture: {lay['first_differing']}; captured-vs-eager per layer: "
                     + ", ".join(f"{r['captured_vs_eager']:.3g}" for r in lay["rows"]))
    for op in report.get("ops", []):
        if "op" in op and "error" not in op:
            lines.append(f"op {op['op']:<28} eager-vs-eager {op['eager_vs_eager']:.3g}  captured-vs-eager "
                         f"{op['captured_vs_eager']:.3g}  bitwise equal: {op['bitwise_equal']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/medtui-bench-qwen2.5-7b"))
    ap.add_argument("--prompt-tokens", type=int, default=512)
    a = ap.parse_args(argv)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    report = run(a.model_dir, a.prompt_tokens)
    (a.out_dir / "diag_graph.json").write_text(json.dumps(report, indent=2))
    text = summary(report)
    (a.out_dir / "diag_graph.txt").write_text(text)
    print(text, flush=True)
    print("RESULT " + json.dumps({"checks": report["checks"], "first_differing_layer": report["layers"].get("first_differing")}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
