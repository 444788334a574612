"""Merge engine: plans and refusals (fast), and real merges of real adapters on the demo model through
the CLI and the detached job (slow): output layout, provenance, verification figures, a reload with
plain transformers in a fresh process where peft and unsloth cannot be imported, kill -9 mid-merge."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import make_adapter

from medtui_engine.cli import main as cli_main
from medtui_engine.errors import UserError
from medtui_engine.merge.plan import PARTIAL_PREFIX, make_plan, stale_partials

ROOT = Path(__file__).resolve().parent.parent


def tiny_model(out: Path, arch: str = "qwen3", hidden: int = 32) -> Path:
    """A differently shaped model (random weights) that adapters can be made on for mismatch tests."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=1000, n_embd=hidden, n_layer=1, n_head=2, n_positions=64))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(vocab_size=1000, hidden_size=hidden, intermediate_size=2 * hidden,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    model.save_pretrained(str(out))
    return out


def medtui(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtui_engine.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=str(ROOT))


@pytest.fixture(scope="module")
def adapter(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(demo_model, tmp_path_factory.mktemp("adapters") / "lora")


@pytest.fixture
def run_dir(workspace: Path, adapter: Path) -> Path:
    """A run directory laid out as the training job leaves it: spec.json, events, checkpoints, adapter/."""
    run = workspace / "runs" / "20261124-120000-demo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"model": "demo", "template": "seed", "backend": "hf",
                                               "lora_r": 8, "load_in_4bit": True}))
    (run / "events.jsonl").write_text("")
    for step in (2, 10):
        shutil.copytree(adapter, run / "checkpoints" / f"checkpoint-{step}")
    return run


# ---- plans and refusals (no job, no model loading) ----------------------------------------------------

def test_plan_from_run_uses_newest_checkpoint_then_final_adapter(run_dir: Path, adapter: Path) -> None:
    plan = make_plan(str(run_dir), runs_dir=run_dir.parent)
    assert plan.adapter_dir.endswith("checkpoint-10") and plan.adapter_step == 10
    assert plan.out_dir == str(run_dir / "merged")
    assert plan.template == "seed" and plan.base_is_demo and plan.trained_4bit
    assert plan.dtype == "bf16" and plan.method == "stream"
    assert plan.disk_needed >= plan.base_params * 2
    shutil.copytree(adapter, run_dir / "adapter")
    (run_dir / "adapter" / "medtui_adapter.json").write_text(json.dumps({"base_model": "demo", "template": "chat",
                                                                         "run_id": run_dir.name, "step": 12}))
    by_id = make_plan(run_dir.name, runs_dir=run_dir.parent)   # a run id works too
    assert by_id.adapter_dir == str(run_dir / "adapter") and by_id.adapter_kind == "final adapter"
    assert by_id.adapter_step == 12 and by_id.run_id == run_dir.name


def test_refuses_existing_output_unless_force(adapter: Path, tmp_path: Path, workspace: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    rc = cli_main(["merge", str(adapter), "--base", "demo", "--out", str(out), "--dry-run"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert cli_main(["merge", str(adapter), "--base", "demo", "--out", str(out), "--dry-run", "--force"]) == 0
    assert "replaces the existing one" in capsys.readouterr().out


def test_refuses_when_disk_is_short(adapter: Path, tmp_path: Path, workspace: Path, capsys, monkeypatch) -> None:
    # the hardware edge: the filesystem reports 1 MiB free
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    rc = cli_main(["merge", str(adapter), "--base", "demo", "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not enough disk" in err and "1.0 MiB free" in err
    assert not (tmp_path / "out").exists() and not (workspace / "jobs").exists()   # refused before starting


def test_refuses_adapter_of_other_shapes(demo_model: Path, tmp_path: Path) -> None:
    other = tiny_model(tmp_path / "small-qwen3", hidden=32)
    lora = make_adapter(other, tmp_path / "lora-small")
    with pytest.raises(UserError) as exc:
        make_plan(str(lora), base=str(demo_model), out=str(tmp_path / "out"))
    msg = str(exc.value)
    assert "shapes" in msg and "base [" in msg and "adapter needs [" in msg and "--base" in msg
    assert "Qwen3ForCausalLM" in msg


def test_refuses_adapter_of_other_architecture(demo_model: Path, tmp_path: Path) -> None:
    gpt2 = tiny_model(tmp_path / "gpt2", arch="gpt2")
    lora = make_adapter(gpt2, tmp_path / "lora-gpt2", targets=["c_attn"], fan_in_fan_out=True)
    with pytest.raises(UserError) as exc:
        make_plan(str(lora), base=str(demo_model), out=str(tmp_path / "out"))
    msg = str(exc.value)
    assert "does not have" in msg and "c_attn" in msg and "Qwen3ForCausalLM" in msg


def test_refuses_quantized_base_and_broken_adapter(demo_model: Path, adapter: Path, tmp_path: Path) -> None:
    q = tmp_path / "base-4bit"
    q.mkdir()
    for f in demo_model.iterdir():
        (q / f.name).symlink_to(f)
    (q / "config.json").unlink()
    cfg = json.loads((demo_model / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="16-bit weights only, never into quantized"):
        make_plan(str(adapter), base=str(q), out=str(tmp_path / "out"))
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(adapter / "adapter_config.json", broken)
    with pytest.raises(UserError, match="incomplete"):
        make_plan(str(broken), base="demo", out=str(tmp_path / "out"))
    with pytest.raises(UserError, match="neither a run directory"):
        make_plan(str(tmp_path), base="demo")


def test_dora_adapter_goes_through_peft(demo_model: Path, tmp_path: Path) -> None:
    lora = make_adapter(demo_model, tmp_path / "dora", use_dora=True)
    plan = make_plan(str(lora), base="demo", out=str(tmp_path / "out"))
    assert plan.method == "peft" and "DoRA" in plan.method_reason


def test_refuses_a_run_still_training(run_dir: Path) -> None:
    from medtui_engine.runs.events import EventWriter
    from medtui_engine.runs.jobs import proc_start_time

    # the run's job is this very (live) process, and its events have no terminal event yet
    (run_dir / "job.json").write_text(json.dumps({"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}))
    with EventWriter(run_dir / "events.jsonl") as w:
        w.emit("job_start", pid=os.getpid(), start_time=None, backend="hf", resumed_from=None, versions={})
    with pytest.raises(UserError, match="still training"):
        make_plan(str(run_dir), runs_dir=run_dir.parent)
    # a checkpoint of it can still be merged
    assert make_plan(str(run_dir / "checkpoints" / "checkpoint-2"), out=str(run_dir / "m")).adapter_step == 2


def test_light_modules_import_nothing_heavy() -> None:
    code = ("import sys\n"
            "import medtui_engine.merge.plan, medtui_engine.merge.events, medtui_engine.merge.pipeline\n"
            "import medtui_engine.commands.merge\n"
            "bad = [m for m in ('torch', 'transformers', 'peft', 'unsloth', 'textual') if m in sys.modules]\n"
            "import medtui.widgets.merge_dialog\n"
            "bad += [m for m in ('torch', 'transformers', 'peft', 'unsloth') if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), check=True)
    assert out.stdout.strip() == ""


# ---- real merges ----------------------------------------------------------------------------------------

RELOAD = r'''
import sys, json
class _Hide:
    def __init__(self, inner): self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('peft', 'unsloth', 'unsloth_zoo'):
            return None
        f = getattr(self.inner, 'find_spec', None)
        return f(name, path, target) if f else None
    def find_distributions(self, *a, **k):
        f = getattr(self.inner, 'find_distributions', None)
        return [d for d in (f(*a, **k) if f else ()) if (d.metadata['Name'] or '').lower() not in ('peft', 'unsloth', 'unsloth-zoo')]
sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
try:
    import peft
    raise SystemExit('peft was importable')
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d = sys.argv[1]
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d)
ids = tok(sys.argv[2], return_tensors='pt').input_ids
with torch.no_grad():
    logits = model(ids).logits[0].float()
torch.save(logits, sys.argv[3])
print(json.dumps({"dtype": str(model.dtype), "peft": 'peft' in sys.modules, "unsloth": 'unsloth' in sys.modules,
                  "eos": model.generation_config.eos_token_id, "pad": model.generation_config.pad_token_id,
                  "tok_eos": tok.eos_token_id, "tok_pad": tok.pad_token_id, "chat_template": bool(tok.chat_template)}))
'''


@pytest.mark.slow
def test_merge_cli_end_to_end(adapter: Path, demo_model: Path, workspace: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from medtui_engine.merge.stfiles import sha256_file
    from medtui_engine.templates import render_prompt

    out = tmp_path / "merged"
    proc = medtui("merge", str(adapter), "--base", "demo", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    assert result["status"] == "finished" and result["out"] == str(out)
    assert result["serve_command"].startswith(f"vllm serve {out} ")
    assert result["warnings"] == [] and result["verification"]["behaviour"]["random_weights_demo"]

    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "medtui.json"} <= names
    assert not list(out.parent.glob(PARTIAL_PREFIX + "*"))
    prov = json.loads((out / "medtui.json").read_text())
    assert prov["kind"] == "merged" and prov["template"] == "seed" and prov["base"]["random_weights_demo"]
    assert prov["lora"]["r"] == 8 and prov["merge"]["dtype"] == "bf16" and prov["merge"]["method"] == "stream"
    assert prov["versions"]["transformers"] and prov["versions"]["peft"] and prov["versions"]["torch"]
    assert set(prov["files"]) == names - {"medtui.json"}
    for name, info in prov["files"].items():
        assert sha256_file(out / name) == info["sha256"], name

    v = prov["verification"]
    assert v["passed"] and not v["failed_checks"], v
    assert v["prompts"] >= 4 and v["positions"] > 100
    assert v["max_abs_logit_diff"] < 0.25 * v["adapter_effect_max_abs_logit"]
    assert v["decisive_positions"] > 0 and v["top1_agreement_decisive"] == 1.0
    assert v["top1_agreement"] > v["adapter_effect_top1_agreement_base_vs_tuned"]
    assert all(h["halted"] for h in v["forced_eos"]) and v["checks"]["loads_without_peft_unsloth"]
    b = v["behaviour"]   # random weights never stop by themselves: information, not a warning
    assert b["random_weights_demo"] and b["prompts"] == 4 and b["max_new_tokens"] == 32 and not b["warning"]
    assert "random weights" in b["note"] and not v["warnings"] and not prov["warnings"]
    assert v["stop_contract"]["verdict"] == "ok" and v["checks"]["stop_token_contract"]
    assert "README.md" in names and "random-weight demo model" in (out / "README.md").read_text()

    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643] and gen["pad_token_id"] == 151643
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}

    # a fresh process, peft and unsloth blocked, plain from_pretrained; logits checked against base + adapter here
    prompt = render_prompt("seed", "男性，55岁，反复上腹痛半年，黑便3天。")
    logits_file = tmp_path / "reloaded.pt"
    reload = subprocess.run([sys.executable, "-c", RELOAD, str(out), prompt, str(logits_file)], capture_output=True,
                            text=True, cwd=str(tmp_path), timeout=300)
    assert reload.returncode == 0, reload.stderr[-3000:]
    info = json.loads(reload.stdout.strip().splitlines()[-1])
    assert info == {"dtype": "torch.bfloat16", "peft": False, "unsloth": False, "eos": [151645, 151643], "pad": 151643,
                    "tok_eos": 151645, "tok_pad": 151643, "chat_template": True}
    merged = torch.load(logits_file)
    base = AutoModelForCausalLM.from_pretrained(str(demo_model), dtype=torch.bfloat16)
    ref_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(demo_model))(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = ref_model(ids).logits[0].float()
        with ref_model.disable_adapter():
            plain = ref_model(ids).logits[0].float()
    diff = (merged - ref).abs().max()
    assert diff < 0.25 * (plain - ref).abs().max()
    top2 = ref.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * diff      # where rounding cannot flip the best token
    assert bool((merged.argmax(-1) == ref.argmax(-1))[decisive].all())

    # adapter-only export over it: refused without --force, replaces it with --force
    again = medtui("merge", str(adapter), "--base", "demo", "--out", str(out), "--adapter-only")
    assert again.returncode == 2 and "already exists" in again.stderr
    export = medtui("merge", str(adapter), "--base", "demo", "--out", str(out), "--adapter-only", "--force")
    assert export.returncode == 0, export.stderr + export.stdout
    assert "--enable-lora" in export.stdout and "--lora-modules" in export.stdout
    prov = json.loads((out / "medtui.json").read_text())
    assert prov["kind"] == "adapter" and prov["verification"]["passed"]
    assert not (out / "model.safetensors").exists() and (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(demo_model)


@pytest.mark.slow
def test_kill_9_mid_merge_leaves_nothing_complete(adapter: Path, workspace: Path, tmp_path: Path) -> None:
    from medtui_engine.runs.events import read_events
    from medtui_engine.runs.jobs import read_job, wait_job

    out = tmp_path / "merged"
    proc = medtui("merge", str(adapter), "--base", "demo", "--out", str(out), "--detach", "--json")
    assert proc.returncode == 0, proc.stderr
    job_dir = Path(json.loads(proc.stdout)["job_dir"])
    deadline = time.monotonic() + 300
    # wait until the weights are written and verification has begun, then kill the job's whole group
    while not any(e["type"] == "merge_written" for e in read_events(job_dir / "events.jsonl")):
        assert time.monotonic() < deadline, (job_dir / "stdout.log").read_text()[-2000:]
        time.sleep(0.1)
    pid = read_job(job_dir)["pid"]
    os.killpg(pid, signal.SIGKILL)
    assert wait_job(job_dir, timeout=30)

    assert not out.exists()
    partial = list(out.parent.glob(f"{PARTIAL_PREFIX}{out.name}-*"))
    assert len(partial) == 1 and not (partial[0] / "medtui.json").exists()
    assert stale_partials(out) == partial
    followed = medtui("merge", "--follow", str(job_dir))
    assert followed.returncode == 1 and "died without finishing" in followed.stdout
    # the next merge to the same place clears the dead one's leftovers
    export = medtui("merge", str(adapter), "--base", "demo", "--out", str(out), "--adapter-only")
    assert export.returncode == 0, export.stderr
    assert not list(out.parent.glob(f"{PARTIAL_PREFIX}*")) and (out / "medtui.json").exists()
