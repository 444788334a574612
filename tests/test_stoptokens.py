"""The stop-token contract (medtui_engine.stoptokens) on real model directories: the demo model keeps
it; a chat-template run on a base Qwen (whose generation config ends only on <|endoftext|>) stops at
<|im_end|> when asked from its adapter; `medtui check --model DIR` names a deliberately inconsistent
generation_config.json with the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_adapter

from medtui_engine.demo import MARKER
from medtui_engine.stoptokens import check_contract, contract_for_dir, templates_for_dir

ROOT = Path(__file__).resolve().parent.parent
IM_END, ENDOFTEXT = 151645, 151643


def base_qwen_like(demo_model: Path, out: Path) -> Path:
    """A base (not instruct) Qwen's stop-token files on the demo weights: the tokenizer's EOS is
    <|endoftext|> and the generation config ends on it alone, while the chat template closes turns
    with <|im_end|>. Not a demo model (no marker): medtui treats it as a real user model."""
    shutil.copytree(demo_model, out)
    (out / MARKER).unlink()
    tc = json.loads((out / "tokenizer_config.json").read_text())
    tc["eos_token"] = "<|endoftext|>"
    (out / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False, indent=2))
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((out / name).read_text())
        cfg["eos_token_id"] = ENDOFTEXT
        (out / name).write_text(json.dumps(cfg, indent=2))
    return out


def chat_run(workspace: Path, base: Path, adapter: Path, name: str = "20261201-100000-chat") -> Path:
    """A run directory as training leaves it, template chat, with a final adapter."""
    run = workspace / "runs" / name
    run.mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"model": str(base), "template": "chat", "backend": "hf", "lora_r": 8}))
    (run / "events.jsonl").write_text("")
    shutil.copytree(adapter, run / "adapter")
    (run / "adapter" / "medtui_adapter.json").write_text(json.dumps({"template": "chat", "run_id": name, "step": 2}))
    return run


@pytest.fixture(scope="module")
def qwen_base(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return base_qwen_like(demo_model, tmp_path_factory.mktemp("bases") / "qwen-base-like")


def test_demo_model_keeps_the_contract(demo_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_model))
    assert templates_for_dir(demo_model, tok) == ["seed", "chat"]
    for template in ("seed", "chat"):
        c = contract_for_dir(demo_model, template, tok)
        assert c.ok, c.summary()
        assert c.stop_ids == (IM_END, ENDOFTEXT) and c.turn_end == "<|im_end|>" and not c.added
        assert c.config_source == "generation_config.json"
    assert contract_for_dir(demo_model, "chat", tok).chat_turn_end == "<|im_end|>"


def test_base_qwen_files_break_the_contract_for_chat_only(qwen_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen_base))
    seed = contract_for_dir(qwen_base, "seed", tok)
    assert seed.ok and seed.stop_ids == (ENDOFTEXT,), seed.summary()
    chat = contract_for_dir(qwen_base, "chat", tok)
    assert chat.turn_end == "<|im_end|>" and chat.stop_ids == (IM_END, ENDOFTEXT) and chat.added == (IM_END,)
    assert chat.verdict == "warning" and "leaving out the template's end of turn <|im_end|> (151645)" in chat.summary()
    assert chat.fixes() == "set eos_token_id in generation_config.json to [151645, 151643]"
    # an ordinary token or an id outside the vocabulary as an end id: named, and never stopped on
    odd = check_contract(tok, "seed", [5, 10**6, ENDOFTEXT], "generation_config.json")
    assert odd.stop_ids == (ENDOFTEXT,) and odd.ignored == (5, 10**6)
    assert odd.notes() == ["does not stop on & (5), ? (1000000) (in generation_config.json, but not an end-of-text token)"]
    words = odd.summary()
    assert "end id 5 (&), an ordinary token" in words and "end id 1000000, which is not a token" in words


@pytest.mark.slow
def test_chat_run_on_a_base_qwen_stops_at_im_end(qwen_base: Path, workspace: Path, tmp_path: Path) -> None:
    """Asked (or evaluated) from its adapter, a chat run on a base Qwen stops on <|im_end|>, which its
    base's generation config does not list; the seed template keeps the base's own ids."""
    from medtui_engine.infer import LoadOptions, load_model
    from medtui_engine.infer.source import resolve_source

    adapter = make_adapter(qwen_base, tmp_path / "lora")
    run = chat_run(workspace, qwen_base, adapter)
    src = resolve_source(run.name, runs_dir=workspace / "runs")
    assert src.kind == "run" and src.template == "chat" and src.adapter_dir == run / "adapter"
    loaded = load_model(src, LoadOptions(backend="hf"))
    assert list(loaded.model.generation_config.eos_token_id if isinstance(loaded.model.generation_config.eos_token_id, list)
                else [loaded.model.generation_config.eos_token_id]) == [ENDOFTEXT]   # the files: no <|im_end|>
    assert IM_END in loaded.eos_ids and loaded.eos_ids[0] == IM_END and ENDOFTEXT in loaded.eos_ids
    assert any("also stops on <|im_end|> (151645)" in n for n in loaded.notes), loaded.notes
    assert loaded.stop_contract.template == "chat"
    # the adapter copied out of its run: its medtui_adapter.json still says chat
    loose = shutil.copytree(run / "adapter", tmp_path / "loose-adapter")
    alone = resolve_source(str(loose), base_override=str(qwen_base))
    assert alone.kind == "adapter" and alone.template == "chat" and alone.template_from == "medtui_adapter.json"
    # the base alone, seed template: its own end ids, nothing added
    base = load_model(resolve_source(str(qwen_base)), LoadOptions(backend="hf"))
    assert base.eos_ids == (ENDOFTEXT,) and not any("also stops" in n for n in base.notes)


def test_check_names_an_inconsistent_generation_config(demo_model: Path, tmp_path: Path, workspace: Path) -> None:
    model = tmp_path / "user-model"
    shutil.copytree(demo_model, model)
    (model / MARKER).unlink()
    gen = json.loads((model / "generation_config.json").read_text())
    gen["eos_token_id"] = [5]        # "&": an ordinary token; the tokenizer's EOS <|im_end|> left out
    (model / "generation_config.json").write_text(json.dumps(gen))
    env = {**os.environ, "MEDTUI_WORKSPACE": str(workspace)}
    out = subprocess.run([sys.executable, "-m", "medtui", "check", "--json", "--model", str(model), "--seq", "256"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = {ln["name"]: ln for ln in json.loads(out.stdout)["lines"]}
    seed = lines["stop tokens (seed)"]
    assert seed["verdict"] == "warning" and seed["section"] == "model"
    assert "end id 5 (&), an ordinary token" in seed["value"]
    assert "leaving out the template's end of turn <|im_end|> (151645)" in seed["value"]
    assert seed["fix"] == "set eos_token_id in generation_config.json to 151645"
    assert lines["stop tokens (chat)"]["verdict"] == "warning"
    # the demo model itself agrees (the same check lines, without running the whole machine check again)
    from medtui_engine.envcheck import stop_token_lines

    demo_lines = {ln.name: ln for ln in stop_token_lines(demo_model)}
    assert demo_lines["stop tokens (seed)"].verdict == "ok", demo_lines
    assert "generation_config.json, tokenizer and template agree" in demo_lines["stop tokens (seed)"].value
