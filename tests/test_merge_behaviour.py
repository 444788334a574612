"""Verification in two parts, through the real CLI and the detached job: a real (non-demo) model
whose answers never stop by themselves merges and installs, with the cut-off numbers as a warning in
medtui.json and in the CLI's output; a chat run on a base Qwen gets a generation config that stops at
<|im_end|>; the model card is written and hashed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_adapter
from test_stoptokens import ENDOFTEXT, IM_END, base_qwen_like, chat_run

from medtui_engine.runs.events import EventWriter

ROOT = Path(__file__).resolve().parent.parent


def write_training_record(run: Path) -> None:
    """What a finished training job leaves besides its adapter: data.json and events."""
    (run / "data.json").write_text(json.dumps({"path": "/data/cases.jsonl", "sha256": "ab" * 32, "rows_used": 6,
                                               "eval_fraction": 0.2, "seed": 3, "train_rows": [1, 2, 3, 5, 6],
                                               "eval_rows": [4]}))
    (run / "events.jsonl").unlink()
    with EventWriter(run / "events.jsonl") as w:
        w.emit("train_begin", total_steps=3, start_step=0, epochs=1, steps_per_epoch=3, num_examples=5,
               train_tokens=900, micro_batch=1, grad_accum=2, max_seq_length=256, model="qwen-base-like",
               model_label="qwen-base-like", device="cpu")
        for step, loss in ((1, 2.5), (2, 1.25), (3, 1.5)):
            w.emit("log", step=step, epoch=step / 3, loss=loss, lr=1e-4, grad_norm=1.0, tokens_per_s=100.0,
                   elapsed_s=step * 10.0, eta_s=0.0)
        w.emit("finished", step=3, adapter=str(run / "adapter"), runtime_s=31.0, final_loss=1.5)


@pytest.mark.slow
def test_model_that_never_stops_installs_with_a_warning(demo_model: Path, workspace: Path, tmp_path: Path) -> None:
    base = base_qwen_like(demo_model, tmp_path / "qwen-base-like")
    run = chat_run(workspace, base, make_adapter(base, tmp_path / "lora"))
    write_training_record(run)
    env = {**os.environ, "MEDTUI_WORKSPACE": str(workspace)}
    proc = subprocess.run([sys.executable, "-m", "medtui_engine.cli", "merge", str(run), "--verify-tokens", "8",
                           "--accept-no-eos"], capture_output=True, text=True, timeout=900, cwd=str(ROOT), env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "--accept-no-eos is no longer needed" in proc.stderr
    out = run / "merged"
    prov = json.loads((out / "medtui.json").read_text())
    v = prov["verification"]
    assert v["passed"] and not v["failed_checks"], v["failed_checks"]
    assert "greedy_reaches_eos" not in v["checks"] and v["checks"]["stop_token_contract"]
    b = v["behaviour"]
    assert b["prompts"] == 4 and b["stopped"] == 0 and b["cut_off"] == 4 and b["cut_off_rate"] == 1.0
    assert b["max_new_tokens"] == 8 and not b["random_weights_demo"]
    assert all(a["generated"] == 8 and not a["reached_eos"] for a in b["per_prompt"])
    assert prov["warnings"] == [b["warning"]]
    assert b["warning"].startswith("4 of 4 probe answers did not stop by themselves within 8 tokens (cut-off rate 100%)")
    # on screen: the same numbers, as a warning with what to do, and the install went ahead
    stops = next(ln for ln in proc.stdout.splitlines() if "probe answers ended by themselves" in ln)
    assert "0 of 4 probe answers ended by themselves within 8 tokens, cut-off rate 100%" in stops
    assert "installed anyway" in stops and "train longer" in proc.stdout
    assert f"vllm serve {out}" in proc.stdout

    # chat template on a base Qwen: the written generation config ends on <|im_end|> first, then the EOS
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [IM_END, ENDOFTEXT]
    assert v["stop_contract"]["verdict"] == "ok" and not v["stop_contract"]["issues"]
    assert v["stop_contract"]["turn_end"] == "<|im_end|>" and v["stop_contract"]["tokenizer_eos"] == "<|endoftext|>"
    assert prov["generation"]["base_stop_contract"]["verdict"] == "warning"     # the base's own files lacked it
    assert all(h["halted"] for h in v["forced_eos"]) and {h["eos_id"] for h in v["forced_eos"]} == {IM_END, ENDOFTEXT}

    # the card: written, hashed with every other file, and saying what happened
    card = (out / "README.md").read_text()
    assert "README.md" in prov["files"] and prov["card"]["file"] == "README.md"
    assert card.startswith('---\nbase_model: "qwen-base-like"\nlibrary_name: transformers\n')
    assert "sha256: `" + "ab" * 32 + "`" in card and "Rows used: 6; training rows: 5; held-out evaluation rows: 1" in card
    assert "Loss: first 2.5000 (step 1), last 1.5000 (step 3), best 1.2500 (step 2)" in card
    assert "Stops by itself: 0 of 4 probe answers within 8 tokens (cut-off rate 100%)" in card
    assert "Not evaluated" in card and "Not recorded: this run did not record an identifier scan." in card


@pytest.mark.slow
def test_correctness_still_refuses(demo_model: Path, tmp_path: Path) -> None:
    """A "merged" directory that lost the adapter (the base's weights, medtui's files) fails the logits
    check: correctness is what refuses; a cut-off alone never does."""
    import shutil

    from medtui_engine.merge.core import write_generation_config
    from medtui_engine.merge.pipeline import VerificationFailed
    from medtui_engine.merge.plan import make_plan
    from medtui_engine.merge.verify import verify

    base = base_qwen_like(demo_model, tmp_path / "qwen-base-like")
    adapter = make_adapter(base, tmp_path / "lora", scale=0.2)
    plan = make_plan(str(adapter), base=str(base), out=str(tmp_path / "out"))
    lost = shutil.copytree(base, tmp_path / "lost-the-adapter")
    write_generation_config(plan, lost)
    record = verify(plan, lost, tmp_path / "work", max_new_tokens=4)
    assert not record["passed"] and "logits_match" in record["failed_checks"]
    assert record["checks"]["stop_token_contract"] and record["checks"]["loads_without_peft_unsloth"]
    assert record["behaviour"]["prompts"] == 4 and "behaviour" not in record["failed_checks"]
    assert "verification failed: logits_match" in str(VerificationFailed(record))
