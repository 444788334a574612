"""The model card (medtui_engine.merge.card) from a run's real files: Hugging Face's layout (YAML front
matter, then sections), the data's sha256 and row counts, the identifier scan as counts by kind and
never a value, the recipe, the curves folded from the run's events, the newest evaluation report of
the run, versions, intended use and the disclaimer; what a run did not record is said so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import make_adapter

from medtui_engine.merge.card import INTENDED_USE, render_card, write_card
from medtui_engine.merge.plan import make_plan
from medtui_engine.notices import DISCLAIMER
from medtui_engine.runs.events import EventWriter

MOBILE = "13800138000"


@pytest.fixture(scope="module")
def adapter(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(demo_model, tmp_path_factory.mktemp("card") / "lora")


def make_run(workspace: Path, adapter: Path, base: str = "demo", **data_extra) -> Path:
    run = workspace / "runs" / "20261201-090000-card"
    run.mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"model": base, "template": "seed", "backend": "hf", "lora_r": 8,
                                               "lora_alpha": 16, "learning_rate": 2e-4, "max_seq_length": 512,
                                               "data": {"path": "/d/cases.jsonl"}}))
    (run / "data.json").write_text(json.dumps({"path": "/d/cases.jsonl", "sha256": "cd" * 32, "rows_used": 40,
                                               "eval_fraction": 0.1, "seed": 7, "train_rows": list(range(36)),
                                               "eval_rows": list(range(36, 40)), **data_extra}))
    with EventWriter(run / "events.jsonl") as w:
        w.emit("job_start", pid=1, start_time=None, backend="hf", resumed_from=None,
               versions={"torch": "9.9", "transformers": "8.8"})
        w.emit("train_begin", total_steps=20, start_step=0, epochs=2, steps_per_epoch=10, num_examples=36,
               train_tokens=9000, micro_batch=2, grad_accum=2, max_seq_length=512, model="demo", model_label="demo",
               device="cuda")
        for step in range(1, 21):
            w.emit("log", step=step, epoch=step / 10, loss=3.0 - 0.1 * step + (0.5 if step == 20 else 0), lr=2e-4,
                   grad_norm=1.0, tokens_per_s=500.0, elapsed_s=step * 6.0, eta_s=(20 - step) * 6.0)
        w.emit("eval", step=20, epoch=2.0, eval_loss=1.75)
        w.emit("finished", step=20, adapter=str(run / "adapter"), runtime_s=3723.0, final_loss=1.5)
    shutil.copytree(adapter, run / "adapter")
    return run


RECORD = {"max_abs_logit_diff": 0.01, "adapter_effect_max_abs_logit": 1.0, "top1_agreement": 0.99, "positions": 300,
          "generation_eos_ids": [151645, 151643], "stop_contract": {"turn_end": "<|im_end|>", "tokenizer_eos": "<|im_end|>"},
          "behaviour": {"prompts": 4, "stopped": 3, "cut_off": 1, "cut_off_rate": 0.25, "max_new_tokens": 1024,
                        "warning": "1 of 4 probe answers did not stop by themselves within 1024 tokens (cut-off rate 25%)"}}
VERSIONS = {"medtui": "0.1.0", "torch": "2.0", "transformers": "5.0"}


def test_card_of_an_evaluated_run_with_an_identifier_scan(workspace: Path, adapter: Path, demo_model: Path,
                                                          tmp_path: Path) -> None:
    base = shutil.copytree(demo_model, tmp_path / "Qwen3-tiny")
    (base / "medtui_demo.json").unlink()
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# the base\n")
    # data.json as the identifier gate records it: counts by kind, the decision (and a value that a
    # careless card would copy: it must not)
    run = make_run(workspace, adapter, str(base), identifiers={"phone_number": 2, "id_number": 1, "email": 0},
                   rows_with_identifiers=2, placeholders={"[手机号]": 1}, gate="acknowledged",
                   acknowledged=["phone_number", "id_number"], example=MOBILE)
    report = workspace / "reports" / "eval-20261201-100000"
    report.mkdir(parents=True)
    summary = {"diagnosis_contains": {"label": "diagnosis: containment match", "kind": "rate", "k": 3, "n": 5,
                                      "value": 0.6, "ci95": [0.2, 0.9]},
               "cut_off": {"label": "cut off at max_new_tokens", "kind": "rate", "k": 0, "n": 5, "value": 0.0,
                           "ci95": [0.0, 0.4]}}
    (report / "report.json").write_text(json.dumps({
        "schema": 1, "cases_file": "/d/eval_cases.jsonl", "n_cases": 5,
        "models": {"base": {"source": {"run_id": None, "model_dir": str(base)}, "summary": {}},
                   "tuned": {"source": {"run_id": run.name, "adapter_dir": str(run / "adapter")}, "summary": summary}}}))
    plan = make_plan(run.name, runs_dir=workspace / "runs", merged_dir=workspace / "merged")
    out = tmp_path / "merged"
    out.mkdir()
    found = write_card(plan, out, RECORD, VERSIONS)
    card = (out / "README.md").read_text()

    front, body = card.split("\n---\n", 1)
    assert front.splitlines() == ["---", 'base_model: "Qwen3-tiny"', "library_name: transformers",
                                  "pipeline_tag: text-generation", "tags:", "- medtui", "- lora", "- merged", "- medical",
                                  "- clinical-reasoning", "- text-generation", "- qwen3", "license: apache-2.0"]
    headings = [ln for ln in body.splitlines() if ln.startswith("#")]
    assert headings == ["# 20261201-090000-card-merged", "## Model", "## Training data", "### Identifier scan",
                        "## Training recipe", "## Training curves", "## Evaluation", "## Verification of the merge",
                        "## Versions", "## Intended use", "## Disclaimer", "## How it was made"]
    assert body.count(DISCLAIMER) == 1 and INTENDED_USE in body  # said plainly, once and "random-weight demo" not in body
    assert "- File: `cases.jsonl`\n- sha256: `" + "cd" * 32 + "`" in body
    assert "Rows used: 40; training rows: 36; held-out evaluation rows: 4 (eval fraction 0.1, seed 7)" in body
    # identifiers: counts by kind, never a value
    assert "counts by kind (3 in all; values are never recorded)" in body
    assert "| email | 0 |\n| id_number | 1 |\n| phone_number | 2 |" in body and MOBILE not in card
    assert "- Rows holding possible identifiers: 2\n- Redaction placeholders in the data: [手机号] 1" in body
    assert "- Gate decision: acknowledged\n- Kinds acknowledged by the user: phone_number, id_number" in body
    # the recipe, from spec.json, without the data block (it is the data section)
    assert "| lora_r | 8 |" in body and "| learning_rate | 0.0002 |" in body and "| data |" not in body
    # curves, folded by the reducer
    assert "- Steps: 20 of 20, 36 cases" in body
    assert "Loss: first 2.9000 (step 1), last 1.5000 (step 20), best 1.1000 (step 19)" in body
    assert "- Held-out loss: 1.7500 at step 20" in body and "- Runtime: 1:02:03 on cuda (hf)" in body
    # the run's evaluation report
    assert "From `eval-20261201-100000/report.json` (5 cases of `eval_cases.jsonl`):" in body
    assert "| diagnosis: containment match | - | 60.0% (3/5) |" in body and "| cut off at max_new_tokens | - | 0.0% (0/5) |" in body
    assert found["evaluation"] == str(report / "report.json") and found["identifier_scan"] == "recorded"
    # verification and versions (merge beside training)
    assert "Stops by itself: 3 of 4 probe answers within 1024 tokens (cut-off rate 25%). Warning: 1 of 4" in body
    assert "| torch | 2.0 | 9.9 |" in body and "| medtui | 0.1.0 | - |" in body
    assert found["license"] == "apache-2.0" and found["training_summary"]["best_loss"] == pytest.approx(1.1)


def test_card_says_what_was_not_recorded(workspace: Path, adapter: Path) -> None:
    run = make_run(workspace, adapter)
    (run / "data.json").unlink()
    plan = make_plan(run.name, runs_dir=workspace / "runs", merged_dir=workspace / "merged")
    card, found = render_card(plan, {}, VERSIONS)
    assert "This model was merged on medtui's random-weight demo model" in card and "- random-weights-demo" in card
    assert "license:" not in card
    assert "- Not recorded (no data.json in the run)." in card
    assert "Not recorded: this run did not record an identifier scan." in card
    assert "Not evaluated: no evaluation report of this run was found" in card
    assert found == {**found, "identifier_scan": "not recorded", "evaluation": None, "license": None}
    # an adapter directory outside any run: no run files at all
    loose = make_plan(str(adapter), base="demo", out=str(workspace / "loose"))
    card, _ = render_card(loose, {}, VERSIONS)
    assert "Not recorded: merged from an adapter directory outside a medtui run." in card
    assert "Training recipe\n\nNot recorded (no spec.json)." in card
