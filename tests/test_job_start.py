"""How a job process starts: offline, and on a machine without a CUDA GPU without importing the packages
that only serve one (bitsandbytes, torchao), while transformers and peft work as before."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import importlib.util, json, sys
from medtui_engine.offline import CUDA_ONLY_PACKAGES, apply_offline, skip_cuda_only_packages
apply_offline()
marked = skip_cuda_only_packages()
import torch
import peft, transformers
from peft import LoraConfig, get_peft_model
from peft.import_utils import is_bnb_available
from transformers import LlamaConfig, LlamaForCausalLM
model = get_peft_model(LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, vocab_size=64)),
                       LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
print(json.dumps({"cuda": torch.cuda.is_available(), "marked": list(marked), "packages": list(CUDA_ONLY_PACKAGES),
                  "found": {n: importlib.util.find_spec(n) is not None for n in CUDA_ONLY_PACKAGES},
                  "imported": [n for n in CUDA_ONLY_PACKAGES if sys.modules.get(n) is not None],
                  "peft_sees_bnb": is_bnb_available(), "trainable": model.get_nb_trainable_parameters()[0],
                  "again": list(skip_cuda_only_packages())}))
"""


def test_a_job_on_a_machine_without_cuda_skips_the_cuda_only_packages_and_peft_still_works():
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["trainable"] > 0 and r["again"] == []   # LoRA applied; a second call changes nothing
    if r["cuda"]:   # a GPU machine: nothing is marked, what is installed stays usable
        assert r["marked"] == []
    else:
        assert r["marked"] == r["packages"] == ["bitsandbytes", "torchao"]
        assert r["found"] == {"bitsandbytes": False, "torchao": False} and r["imported"] == []
        assert r["peft_sees_bnb"] is False


def test_once_transformers_is_imported_nothing_is_marked():
    code = ("import transformers, json; from medtui_engine.offline import skip_cuda_only_packages; "
            "print(json.dumps(list(skip_cuda_only_packages())))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []


STOPTOKENS = ("import json, sys; from medtui_engine.stoptokens import main; main(sys.argv[1:]); "
              "print(json.dumps(sorted(m for m in ('torch', 'transformers') if sys.modules.get(m) is not None)))")


def test_the_stop_token_reading_imports_no_torch_and_reads_what_a_torch_process_reads(demo_model, tmp_path):
    """`medtui check --model` reads a model's stop tokens in a subprocess: with torch marked absent there
    (a tokenizer needs none), with the very contract this process (torch importable) reads."""
    from transformers import AutoTokenizer

    from medtui_engine.envcheck import stop_token_lines
    from medtui_engine.stoptokens import contract_for_dir, templates_for_dir

    p = subprocess.run([sys.executable, "-c", STOPTOKENS, str(demo_model)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    contracts, imported = (json.loads(line) for line in p.stdout.strip().splitlines()[-2:])
    assert imported == ["transformers"] and "PyTorch was not found" not in p.stderr
    tok = AutoTokenizer.from_pretrained(str(demo_model))
    assert [c["template"] for c in contracts] == ["seed", "chat"]
    assert contracts == [contract_for_dir(demo_model, t, tok).as_dict() for t in templates_for_dir(demo_model, tok)]

    # a tokenizer that does not load without torch is read again in a process with torch; one that does not
    # load at all is named as before, with the error of that second try
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen3"}')
    (broken / "tokenizer_config.json").write_text("not json")
    (line,) = stop_token_lines(broken)
    assert line.verdict == "warning" and line.value.startswith(f"cannot read the tokenizer of {broken}: ")
    assert "JSONDecodeError" in line.value
