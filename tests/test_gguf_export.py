"""GGUF export: the demo model merged with ``--gguf f16,q8_0`` through the CLI and the detached job (each
file loaded back by transformers' GGUF loader in a fresh process, logits compared with the merged model;
metadata read back with the gguf library's reader), the real small model (SmolLM2-135M, Llama layout)
exported and verified the same way, the Ollama Modelfile's contents (its TEMPLATE renders what
templates.py renders), and bad requests answered with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_adapter

from medtui_engine.errors import UserError
from medtui_engine.merge.gguf_export import (
    GGUFError,
    check_exportable,
    export,
    gguf_chat_template,
    modelfile_text,
    ollama_template,
    parse_modelfile,
    parse_types,
    read_metadata,
    render_ollama_template,
)
from medtui_engine.runs.events import read_events, validate_event
from medtui_engine.templates import CHAT_SYSTEM, render_prompt

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "男，45岁，反复上腹痛3月，进食后加重。"
# what Ollama must send a Qwen model for a chat-template run: Qwen's ChatML turns around medtui's system prompt
QWEN_CHAT_TEMPLATE = ("<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
                      "<|im_start|>assistant\n")
SEED_TEMPLATE = ("请遵循指令回答用户问题。\n在回答之前，请仔细思考问题，并创建一个逻辑连贯的思考过程，以确保回答准确无误。\n"
                 "### 指令:\n请根据提供的信息，做出符合医学知识的疑似诊断、相应的诊断依据和具体的治疗方案，同时列出相关鉴别诊断。\n"
                 "### 问题:\n{{ .Prompt }}\n### 思考过程:\n<think>")


def medtui(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ), cwd=str(ROOT))


@pytest.fixture(scope="module")
def demo_tokenizer(demo_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_model))


# ---- templates and Modelfiles (a tokenizer, no weights) ------------------------------------------------

def test_modelfile_template_renders_what_templates_py_renders(demo_tokenizer) -> None:
    tmpl, system = ollama_template("seed", demo_tokenizer)
    assert tmpl == SEED_TEMPLATE and system is None
    assert render_ollama_template(tmpl, None, QUESTION) == render_prompt("seed", QUESTION, demo_tokenizer)

    tmpl, system = ollama_template("chat", demo_tokenizer)
    assert tmpl == QWEN_CHAT_TEMPLATE and system == CHAT_SYSTEM
    assert render_ollama_template(tmpl, system, QUESTION) == render_prompt("chat", QUESTION, demo_tokenizer)

    text = modelfile_text("m-q8_0.gguf", "chat", demo_tokenizer, ["<|im_end|>", "<|endoftext|>"], {"temperature": 0.3})
    mf = parse_modelfile(text)
    assert mf["from"] == "./m-q8_0.gguf" and mf["template"] == QWEN_CHAT_TEMPLATE and mf["system"] == CHAT_SYSTEM
    assert mf["parameters"] == [("stop", "<|im_end|>"), ("stop", "<|endoftext|>"), ("temperature", "0.3")]
    print("\n" + text)


def test_gguf_chat_template_renders_what_templates_py_renders(demo_tokenizer) -> None:
    """The chat template written into the GGUF (what llama.cpp and transformers apply to a conversation)
    gives a user-only conversation the run's prompt."""
    messages = [{"role": "user", "content": QUESTION}]
    for template in ("seed", "chat"):
        jinja = gguf_chat_template(template, demo_tokenizer)
        got = demo_tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False, add_generation_prompt=True)
        assert got == render_prompt(template, QUESTION, demo_tokenizer), template


def test_bad_requests_are_named(tmp_path: Path, demo_model: Path) -> None:
    with pytest.raises(UserError, match=r"--gguf q3_k: unknown GGUF type; choose from f16, bf16, q8_0"):
        parse_types("f16,q3_k")
    assert parse_types("F16, q8-0,f16") == ["f16", "q8_0"] and parse_types(True) == ["f16"]

    with pytest.raises(GGUFError, match=r"config.json is missing: .* is not a Hugging Face model directory"):
        check_exportable(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(GGUFError, match=r"config.json: model_type 'gpt2' cannot be written as GGUF by medtui "
                                        r"\(it maps qwen2, qwen3, llama\)"):
        check_exportable(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "rope_scaling": {"rope_type": "llama3"}}))
    with pytest.raises(GGUFError, match="rope scaling 'llama3' is not written into GGUF"):
        check_exportable(tmp_path)

    adapter = make_adapter(demo_model, tmp_path / "lora")
    proc = medtui("merge", str(adapter), "--base", "demo", "--adapter-only", "--gguf", "q8_0", "--dry-run")
    assert proc.returncode == 2 and "--gguf needs a merged model: drop --adapter-only" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = medtui("merge", str(adapter), "--base", "demo", "--gguf", "q3_k", "--dry-run")
    assert proc.returncode == 2 and "--gguf q3_k: unknown GGUF type" in proc.stderr and "Traceback" not in proc.stderr


# ---- the demo model, merged with --gguf (the product path) ---------------------------------------------

@pytest.mark.slow
def test_demo_merge_writes_verified_gguf(demo_model: Path, workspace: Path, tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFReader

    from medtui_engine.merge.stfiles import sha256_file

    adapter = make_adapter(demo_model, tmp_path / "lora")
    out = tmp_path / "merged"
    proc = medtui("merge", str(adapter), "--base", "demo", "--out", str(out), "--gguf", "f16,q8_0", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "finished" and result["warnings"] == []
    prov = json.loads((out / "medtui.json").read_text())
    g = prov["gguf"]
    assert g == result["result"]["gguf"] and g["done"] and g["passed"] and g["types"] == ["f16", "q8_0"]
    assert g["path"] == str(out / "gguf") and g["template"] == "seed"
    for f in g["files"]:
        v = f["verification"]   # loaded back in a fresh process by transformers' GGUF loader
        print(f"\n{f['type']}: {f['bytes'] / 2**20:.1f} MiB written in {f['seconds']} s; loaded back in "
              f"{v['load_seconds']} s; max |logit diff| {v['max_abs_logit_diff']} of {v['max_abs_logit']} "
              f"(relative {v['relative']}, tolerance {v['tolerance']}); top-1 {v['top1_agreement']}")
        assert v["passed"] and v["metadata_mismatches"] == [] and v["relative"] <= v["tolerance"], v
        assert v["positions"] > 100 and v["decisive_positions"] > 0 and v["top1_agreement_decisive"] == 1.0
        assert v["top1_agreement"] >= 0.9   # this model's near-ties (measured 97% at q4_0)
        assert f["ollama_create"] == f"ollama create {f['file'][:-len(f['type']) - 6]}:{f['type']} " \
                                     f"-f {out / 'gguf' / f['modelfile']}"
        assert (out / "gguf" / f["file"]).is_file() and sha256_file(out / "gguf" / f["file"]) == \
            prov["files"][f"gguf/{f['file']}"]["sha256"]
    f16, q8 = g["files"]
    assert f16["verification"]["max_abs_logit_diff"] < 1e-3 and f16["tensor_types"] == {"F16": 15, "F32": 9}
    assert q8["tensor_types"] == {"Q8_0": 15, "F32": 9} and q8["bytes"] < 0.7 * f16["bytes"]
    assert not list((out / "gguf").glob(".*"))   # no partial files left

    mf_text = (out / "gguf" / "Modelfile.q8_0").read_text()
    print(mf_text)
    mf = parse_modelfile(mf_text)
    assert mf["from"] == f"./{q8['file']}" and mf["template"] == SEED_TEMPLATE and "system" not in mf
    assert [v for k, v in mf["parameters"] if k == "stop"] == ["<|im_end|>", "<|endoftext|>"]
    card = (out / "README.md").read_text()
    assert f"`gguf/{q8['file']}` (q8_0" in card and q8["ollama_create"] in card

    events = read_events(Path(result["job_dir"]) / "events.jsonl")
    assert [e["gguf_type"] for e in events if e["type"] == "gguf_written"] == ["f16", "q8_0"]
    assert [e["passed"] for e in events if e["type"] == "gguf_verified"] == [True, True]
    assert all(not validate_event(e) for e in events)
    follow = medtui("merge", "--follow", result["job_dir"])   # what `medtui merge` prints at the end
    assert follow.returncode == 0 and q8["ollama_create"] in follow.stdout and "Ollama" in follow.stdout, follow.stdout

    # metadata, read back with the gguf library's own reader (its parser, over a plain ndarray view of the
    # file's map instead of the np.memmap: the same bytes and fields, without numpy's Python-level memmap hooks
    # on each of the vocabulary's 300k slices, 9.0 -> 2.9 CPU-s)
    class PlainArrayReader(GGUFReader):
        data = property(lambda self: self._data,
                        lambda self, v: setattr(self, "_data", v.view(np.ndarray) if isinstance(v, np.memmap) else v))

    r = PlainArrayReader(str(out / "gguf" / q8["file"]))
    field = lambda k: r.fields[k].contents()  # noqa: E731
    tok_json = json.loads((out / "tokenizer.json").read_text())
    assert field("general.architecture") == "qwen3" and field("qwen3.context_length") == 8192
    assert field("qwen3.attention.key_length") == 16 and field("qwen3.block_count") == 2
    assert len(r.fields["tokenizer.ggml.tokens"].data) == 151936
    assert len(r.fields["tokenizer.ggml.merges"].data) == len(tok_json["model"]["merges"])
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "qwen2"
    assert field("tokenizer.ggml.eos_token_id") == 151645 and field("tokenizer.ggml.eot_token_id") == 151645
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.chat_template").endswith("### 问题:\n{{ ns.q }}\n### 思考过程:\n<think>")
    assert field("tokenizer.ggml.tokens")[151645] == "<|im_end|>" and field("tokenizer.ggml.token_type")[151645] == 3


# ---- the real small model (Llama layout, real weights) -------------------------------------------------

@pytest.mark.slow
def test_real_model_gguf_round_trip(real_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "gguf"
    entry = export(real_model, ["q8_0"], template="chat", name="smollm2-medtui", out_dir=out)
    assert entry["done"] and entry["passed"], entry
    (f,) = entry["files"]
    v = f["verification"]
    print(f"\nSmolLM2-135M q8_0: {f['bytes'] / 2**20:.1f} MiB in {f['seconds']} s; loaded back in {v['load_seconds']} s; "
          f"max |logit diff| {v['max_abs_logit_diff']} of {v['max_abs_logit']}; top-1 {v['top1_agreement']}")
    assert v["relative"] <= v["tolerance"] and v["top1_agreement_decisive"] == 1.0 and v["tokenizer_matches"]
    assert v["top1_agreement"] >= 0.9   # a real model has few near-ties (measured 96%)
    assert f["tensor_types"]["Q8_0"] == 30 * 7 + 1 and f["architecture"] == "llama"

    meta = read_metadata(out / f["file"])
    assert meta["general.architecture"] == "llama" and meta["llama.attention.head_count"] == 9
    assert meta["llama.attention.head_count_kv"] == 3 and meta["llama.rope.dimension_count"] == 64
    assert meta["llama.rope.freq_base"] == 100000.0 and meta["tokenizer.ggml.eos_token_id"] == 2
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and "output.weight" not in str(meta)

    tok = AutoTokenizer.from_pretrained(str(real_model))
    mf = parse_modelfile((out / "Modelfile.q8_0").read_text())
    assert mf["from"] == f"./{f['file']}" and mf["system"] == CHAT_SYSTEM
    assert render_ollama_template(mf["template"], mf["system"], QUESTION) == render_prompt("chat", QUESTION, tok)
    assert [v for k, v in mf["parameters"] if k == "stop"] == ["<|im_end|>", "<|endoftext|>"]


async def test_merge_dialog_g_asks_for_gguf(workspace: Path, demo_model: Path) -> None:
    """The TUI's merge dialog: g adds GGUF f16 and q8_0 to the plan (and takes them off again)."""
    from helpers import wait_for_screen, wait_until
    from textual.app import App
    from textual.widgets import Static

    from medtui.widgets.merge_dialog import MergeDialog, open_merge_dialog
    from medtui_engine.context import load_context

    class Host(App[None]):
        def __init__(self) -> None:
            super().__init__()
            self.ctx = load_context(workspace)

    adapter = make_adapter(demo_model, workspace / "lora", r=4)
    app = Host()
    async with app.run_test(size=(120, 40)) as pilot:
        open_merge_dialog(app, adapter)
        dialog = await wait_for_screen(pilot, MergeDialog)
        plan = lambda: str(dialog.query_one("#merge-plan", Static).render())  # noqa: E731
        await wait_until(pilot, lambda: "GGUF" in plan() and "none" in plan().split("GGUF", 1)[1][:20], "no GGUF", 60)
        await pilot.press("g")
        await wait_until(pilot, lambda: "f16, q8_0 (each verified" in plan(), "GGUF in the plan", 60)
        assert dialog.plan.gguf == ["f16", "q8_0"]
        await pilot.press("g")
        await wait_until(pilot, lambda: dialog.plan is not None and dialog.plan.gguf == [], "GGUF off", 60)
