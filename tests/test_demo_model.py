"""The embedded demo model: real Qwen tokenizer (same ids as Qwen's tiktoken ranks), plain loading."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from medtui_engine.demo import DEMO_LABEL, is_demo_model, model_label
from medtui_engine.qwen_vocab import load_ranks, tiktoken_encoding, write_bpe_files


def _varied_strings(demo_data_dir, n_random: int = 2500) -> list[str]:
    rng = random.Random(1234)
    texts = []
    for line in (demo_data_dir / "demo_train.jsonl").read_text(encoding="utf-8").splitlines()[:40]:
        rec = json.loads(line)
        texts += [rec["Question"], rec["Complex_CoT"][:300], rec["Response"][:300]]
    alphabet = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研"
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n\t.,;:!?()[]{}<>-_=+*/%'\"，。；：！？、（）《》μ℃±≥≤→×·αβγ𝑥😀é")
    for _ in range(n_random):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
    texts += ["", " ", "  leading", "trailing  ", "\n\n", "TBil 68μmol/L", "ĠÑĤÐ²ÑĬÑĢ", "<think>推理</think>",
              "<|im_start|>user\n你好<|im_end|>", "IgG4相关性疾病", "Castleman病", "HELLP综合征"]
    return texts


def test_bpe_files_match_qwens_published_counts(tmp_path):
    vocab_n, merges_n = write_bpe_files(tmp_path)
    assert vocab_n == len(load_ranks()) == 151643
    assert merges_n == 151387
    first = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[:3]
    assert first == ["#version: 0.2", "Ġ Ġ", "ĠĠ ĠĠ"]


def test_demo_tokenizer_encodes_like_qwens_tiktoken(demo_model, demo_data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model)
    ref = tiktoken_encoding()
    texts = _varied_strings(demo_data_dir)
    assert len(texts) > 2500
    mismatches = [t for t in texts if tok.encode(t, add_special_tokens=False) != ref.encode(t, allowed_special="all")]
    assert mismatches == []
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"])
    assert ids == [151643, 151644, 151645, 151667, 151668]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # Round trip, Chinese included.
    s = "女性，45岁，右上腹痛3天，TBil 68μmol/L"
    assert tok.decode(tok.encode(s, add_special_tokens=False)) == s


def test_demo_model_loads_with_plain_transformers_offline(demo_model):
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"p = {str(demo_model)!r}\n"
        "tok = AutoTokenizer.from_pretrained(p, local_files_only=True)\n"
        "m = AutoModelForCausalLM.from_pretrained(p, local_files_only=True)\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': '发热3天'}], add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "out = m(**ids)\n"
        "assert out.logits.shape[-1] == 151936, out.logits.shape\n"
        "assert type(m).__name__ == 'Qwen3ForCausalLM'\n"
        "print('OK', m.config.eos_token_id, m.generation_config.eos_token_id)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    import os

    env.update({k: v for k, v in os.environ.items() if k in ("HOME", "MEDTUI_HOME", "TMPDIR")})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK 151645 [151645, 151643]" in out.stdout


def test_demo_model_is_labelled(demo_model):
    assert is_demo_model(demo_model)
    assert DEMO_LABEL == "random weights, demo only"
    assert DEMO_LABEL in model_label(demo_model)
    meta = json.loads((demo_model / "medtui_demo.json").read_text())
    assert meta["label"] == DEMO_LABEL
