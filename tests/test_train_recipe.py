"""The training recipe: auto (the fastest that fits, explicit settings kept) or the seed's exact one;
padding-free batches learn what padded batches learn; the recipe is shown before the start, kept in
spec.json, and the fit probe's event says why it was skipped on the CPU.

The GPU side of the fit probe (measure, correct) runs under ``pytest -m gpu`` (see the last test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_for, wait_until

from medtui_engine.runs.events import read_events, validate_event
from medtui_engine.train.recipe import DEFAULT_EFFECTIVE, Recipe, choose_recipe, save_every
from medtui_engine.train.spec import TrainSpec
from medtui_engine.vram import ModelShape

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "demo_train.jsonl"
GIB = 1024  # MiB

QWEN25_7B = ModelShape.from_config({"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064})
QWEN25_14B = ModelShape.from_config({"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
                                     "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064})
LENGTHS = [400 + (i * 37) % 1400 for i in range(198)]   # 400..1799 tokens, like the medical demo records


def spec(**kw) -> TrainSpec:
    explicit = kw.pop("explicit", [])
    s = TrainSpec(data="cases.jsonl", **kw)
    s.explicit = list(explicit)
    return s


# ------------------------------------------------------------------ the choice

def test_a_model_that_fits_trains_in_16_bit_and_one_that_does_not_in_4_bit():
    big = choose_recipe(spec(), QWEN25_7B, 139 * GIB, 1, LENGTHS, "unsloth")
    assert not big.load_in_4bit and big.estimate_gib <= 139 * 0.85
    assert big.reasons[0].startswith("16-bit LoRA") and "139.0 GiB free" in big.reasons[0]
    assert big.micro_batch == 8 and big.grad_accum == 1 and big.batching == "padding_free"
    small = choose_recipe(spec(), QWEN25_7B, 16 * GIB, 1, LENGTHS, "unsloth")
    assert small.load_in_4bit and small.gradient_checkpointing and small.estimate_gib <= 16 * 0.85
    assert small.reasons[0].startswith("4-bit QLoRA") and "16.0 GiB free" in small.reasons[0]
    # the 14B shape on a 40 GiB card: 16-bit weights alone are 28 GiB, activations push it over
    mid = choose_recipe(spec(), QWEN25_14B, 40 * GIB, 1, LENGTHS, "hf")
    assert mid.load_in_4bit
    # one sentence per decision, and the summary, kept in spec.json's form
    for r in (big, small, mid):
        assert len(r.reasons) == 5 and all(s.endswith(".") for s in r.reasons)
        assert Recipe.from_dict(json.loads(json.dumps(r.as_dict()))) == r


def test_the_effective_batch_is_kept_whatever_the_gpu_count_and_memory():
    for free in (139 * GIB, 40 * GIB, 12 * GIB, None):
        for gpus in (1, 2, 4, 8):
            r = choose_recipe(spec(gpus=str(gpus)), QWEN25_7B, free, gpus, LENGTHS, "hf")
            assert r.micro_batch * r.grad_accum == DEFAULT_EFFECTIVE, (free, gpus, r)
            assert r.grad_accum % gpus == 0, (free, gpus, r)   # every process accumulates the same
    # an effective batch the user asked for (micro-batch 2 x 16) is kept, split over 4 GPUs
    r = choose_recipe(spec(micro_batch=2, grad_accum=16, explicit=["micro_batch", "grad_accum"]), QWEN25_7B,
                      139 * GIB, 4, LENGTHS, "hf")
    assert (r.micro_batch, r.grad_accum) == (2, 16) and "as asked" in " ".join(r.reasons)


def test_explicit_settings_win_over_auto():
    # --micro-batch 1 is the default's value, yet given: kept
    r = choose_recipe(spec(micro_batch=1, explicit=["micro_batch"]), QWEN25_7B, 139 * GIB, 1, LENGTHS, "unsloth")
    assert (r.micro_batch, r.grad_accum, r.batching) == (1, 8, "padded")
    # a micro-batch given alone: the accumulation follows it (the effective batch stays, or comes nearest)
    for micro, gpus, accum, said in ((2, 1, 4, "stays 8"), (4, 2, 2, "stays 8"), (3, 1, 3, "batch of 9 samples, the nearest"),
                                     (16, 1, 1, "batch of 16 samples, the nearest")):
        r = choose_recipe(spec(micro_batch=micro, gpus=str(gpus), explicit=["micro_batch"]), QWEN25_7B, 139 * GIB,
                          gpus, LENGTHS, "unsloth")
        assert (r.micro_batch, r.grad_accum) == (micro, accum) and r.grad_accum % gpus == 0, (micro, gpus, r)
        assert f"Micro-batch {micro} as asked" in " ".join(r.reasons) and said in " ".join(r.reasons)
    # --4bit on a card where 16-bit fits; --no-4bit where it would not (the estimate says so)
    assert choose_recipe(spec(load_in_4bit=True, explicit=["load_in_4bit"]), QWEN25_7B, 139 * GIB, 1, LENGTHS,
                         "unsloth").load_in_4bit
    r = choose_recipe(spec(load_in_4bit=False, explicit=["load_in_4bit"]), QWEN25_7B, 12 * GIB, 1, LENGTHS, "hf")
    assert not r.load_in_4bit and r.reasons[0] == "16-bit loading as asked."
    r = choose_recipe(spec(gradient_checkpointing=True, save_steps=50,
                           explicit=["gradient_checkpointing", "save_steps"]),
                      QWEN25_7B, 139 * GIB, 1, LENGTHS, "unsloth")
    assert r.gradient_checkpointing and r.save_steps == 50
    # and the command line says what was given, even at the default's value
    from medtui_engine.cli import build_parser
    from medtui_engine.commands.train import spec_from_args

    args = build_parser().parse_args(["train", "--data", "d", "--micro-batch", "1", "--4bit", "--recipe", "auto"])
    s = spec_from_args(args)
    assert set(s.explicit) == {"data", "micro_batch", "load_in_4bit", "recipe"} and s.load_in_4bit
    assert not spec_from_args(build_parser().parse_args(["train", "--data", "d", "--no-4bit"])).load_in_4bit


def test_the_seed_recipe_is_the_seeds_exactly():
    for free in (139 * GIB, None):
        r = choose_recipe(spec(recipe="seed"), QWEN25_7B, free, 1, LENGTHS, "unsloth")
        assert (r.micro_batch, r.grad_accum, r.load_in_4bit, r.gradient_checkpointing, r.batching, r.save_steps) == \
            (1, 8, True, True, "padded", 0)
    s = spec(recipe="seed")
    choose_recipe(s, QWEN25_7B, 139 * GIB, 1, LENGTHS, "hf").apply(s)
    assert s == TrainSpec(data="cases.jsonl", recipe="seed")   # nothing moved


def test_auto_saves_periodically_and_says_the_rule():
    r = choose_recipe(spec(), QWEN25_7B, 139 * GIB, 1, LENGTHS, "unsloth")
    steps = 3 * -(-len(LENGTHS) // 8)   # 3 epochs of 198 cases, 8 a step
    assert r.save_steps == save_every(steps) == -(-steps // 10)
    assert f"every {r.save_steps} of the run's {steps} steps" in r.reasons[-1]
    assert choose_recipe(spec(max_steps=12), QWEN25_7B, 139 * GIB, 1, LENGTHS, "unsloth").save_steps == 0


def test_on_the_cpu_the_batch_is_one_at_a_time_and_no_memory_is_guessed():
    r = choose_recipe(spec(), None, None, 1, LENGTHS, "hf")
    assert (r.micro_batch, r.grad_accum, r.gradient_checkpointing, r.batching) == (1, 8, False, "padded")
    assert r.estimate_gib is None and "No GPU here" in r.reasons[0]


def test_the_probe_corrects_in_order_and_never_touches_what_was_given():
    from medtui_engine.train.fitprobe import next_correction

    s = spec(micro_batch=8, grad_accum=1, gradient_checkpointing=False, load_in_4bit=False)
    said = []
    while fix := next_correction(s):
        changes, sentence, _reload = fix
        for k, v in changes.items():
            setattr(s, k, v)
        said.append(sentence)
        assert s.micro_batch * s.grad_accum == 8
    assert said == ["halved the micro-batch to 4 x accumulation 2 (the effective batch stays 8)",
                    "halved the micro-batch to 2 x accumulation 4 (the effective batch stays 8)",
                    "halved the micro-batch to 1 x accumulation 8 (the effective batch stays 8)",
                    "turned gradient checkpointing on", "fell back to 4-bit loading (QLoRA)"]
    given = spec(micro_batch=8, grad_accum=1, load_in_4bit=False, gradient_checkpointing=False,
                 explicit=["micro_batch", "load_in_4bit"])
    assert next_correction(given)[0] == {"gradient_checkpointing": True}
    given.gradient_checkpointing = True
    assert next_correction(given) is None


def test_the_measured_fit_is_shown_beside_the_estimate():
    from medtui_engine.jobs.describe import describe_event, describe_fit
    from medtui_engine.runs.state import fold

    ev = {"v": 1, "seq": 0, "t": 1.0, "type": "fit_probe", "skipped": False, "micro_batch": 4, "grad_accum": 2,
          "gradient_checkpointing": False, "load_in_4bit": False, "estimate_gib": 18.2, "samples": 4,
          "batch_tokens": 9876, "longest_tokens": 2600, "peak_mib": 17.5 * 1024, "budget_mib": 130 * 1024,
          "tokens_per_s": 9415.0, "fits": True, "oom": False,
          "corrections": ["halved the micro-batch to 4 x accumulation 2 (the effective batch stays 8)"]}
    from medtui_engine.fit import probe_sentence

    ev["message"] = probe_sentence(ev)
    assert validate_event(ev) == []
    row = describe_fit(fold([ev]))
    assert row.value == describe_event(ev).value == ev["message"]
    assert ("4 longest samples (9,876 tokens), micro-batch 4, 16-bit, checkpointing off: measured peak 17.5 GiB of "
            "130.0 GiB usable, 9,415 tokens/s; estimated 18.2 GiB; halved the micro-batch") in row.value


# ------------------------------------------------------------------ padding-free learns what padded learns

def test_padding_free_batches_give_the_padded_batches_logits_and_loss(demo_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from medtui_engine.train.backends import batching_args
    from medtui_engine.train.data import load_train_cases, tokenize_cases

    tok = AutoTokenizer.from_pretrained(demo_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(demo_model, dtype=torch.float32, local_files_only=True).eval()
    cases, _ = load_train_cases(DATA, "Question", "Complex_CoT", "Response")
    rows, _ = tokenize_cases(cases[:4], "seed", tok, 48, mask_prompt=False)
    rows = [rows[0], {k: v[:30] for k, v in rows[1].items()}, rows[2], {k: v[:41] for k, v in rows[3].items()}]
    lens = [len(r["input_ids"]) for r in rows]
    assert len(set(lens)) > 1   # padding is really there

    def run(padding_free: bool, restart_positions: bool = True):
        batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=padding_free)(rows)
        if not restart_positions:   # the control: one long sample, attention across the boundaries
            batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
        with torch.no_grad():   # no cache, as the trainers call it (a cache turns the packed-sample check off)
            out = model(**batch, use_cache=False)
        return out.loss.item(), out.logits

    padded_loss, padded = run(False)
    free_loss, flat = run(True)
    _, crossed = run(True, restart_positions=False)
    pieces = torch.split(flat[0], lens)
    diff = max((padded[i, :n] - pieces[i]).abs().max().item() for i, n in enumerate(lens))
    crossed_diff = max((padded[i, :n] - p).abs().max().item()
                       for i, (n, p) in enumerate(zip(lens, torch.split(crossed[0], lens), strict=True)))
    print(f"\npadded loss {padded_loss:.6f}, padding-free {free_loss:.6f}; max |logit diff| {diff:.2e} "
          f"(attention across samples: {crossed_diff:.2e})")
    assert free_loss == pytest.approx(padded_loss, rel=1e-5)
    assert diff < 1e-4 and crossed_diff > 20 * max(diff, 1e-7)   # the masking is what keeps them equal
    # the trainer takes the recipe's arguments as they are
    s = TrainSpec(resolved_recipe={"batching": "padding_free"})
    assert SFTConfig(output_dir="unused", use_cpu=True, bf16=False, **batching_args(s)).padding_free
    grouped = SFTConfig(output_dir="unused", use_cpu=True, bf16=False, **batching_args(TrainSpec(resolved_recipe={"batching": "grouped"})))
    assert grouped.train_sampling_strategy == "group_by_length" and not grouped.padding_free


# ------------------------------------------------------------------ shown, kept, probed

@pytest.mark.gpus_hidden
def test_medtui_train_shows_the_recipe_keeps_it_in_spec_json_and_says_why_the_probe_was_skipped(
        demo_model, workspace):
    proc = subprocess.run(
        [sys.executable, "-m", "medtui_engine.cli", "train", "--data", str(DATA), "--limit-rows", "8",
         "--max-seq-length", "64", "--max-steps", "1", "--lora-r", "4", "--detach", "--workspace", str(workspace)],
        # every GPU hidden, as a user who wants a CPU run would: on a GPU box too the job runs on the CPU
        # (the GPU's probe is test_fit_probe_on_the_gpu_measures_before_the_first_step)
        capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    run = next(d for d in (workspace / "runs").iterdir() if d.is_dir())
    on_disk = json.loads((run / "spec.json").read_text())
    assert on_disk["gpu"] is None   # pinned to no GPU
    recipe = Recipe.from_dict(on_disk["resolved_recipe"])
    assert recipe.mode == "auto" and on_disk["micro_batch"] == recipe.micro_batch
    assert on_disk["explicit"] == ["data", "limit_rows", "max_seq_length", "max_steps", "lora_r"]
    assert proc.stdout.startswith(recipe.text())   # before the start line
    events = wait_for(lambda: (ev := read_events(run / "events.jsonl")) and ev[-1]["type"] in ("finished", "failed")
                      and ev, "the job's end", 420)
    assert events[-1]["type"] == "finished", events[-1]
    probe = [e for e in events if e["type"] == "fit_probe"]
    assert len(probe) == 1 and probe[0]["skipped"] and validate_event(probe[0]) == []
    from medtui_engine.jobs.describe import describe_event

    assert describe_event(probe[0]).value == "fit probe skipped: " + probe[0]["reason"]
    assert "no CUDA GPU" in probe[0]["reason"]
    shown = subprocess.run([sys.executable, "-m", "medtui_engine.cli", "runs", "show", run.name, "--workspace",
                            str(workspace)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"recipe   {recipe.summary()}" in shown.stdout   # runs show: the recipe, and the fit probe's row
    assert "fit probe skipped" in shown.stdout


async def test_the_train_form_shows_the_recipe_with_the_estimate(workspace, demo_model):
    from medtui.app import MedtuiApp
    from medtui.screens.train import TrainScreen
    from medtui_engine.train.recipe import RECIPE_SETTINGS, preview_recipe

    app = MedtuiApp(workspace=str(workspace), start_mode="train")
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen) and app.screen.ready, "the form")
        screen = app.screen
        fit = screen.query_one("#train-fit")
        # before any edit: the default setting's recipe and fit, the entries showing the recipe's choices
        await wait_until(pilot, lambda: "Recipe:" in str(fit.render()), "the recipe before any edit", 60)
        first, _ = preview_recipe(screen.current_spec())
        assert first.summary() in str(fit.render()) and screen.query_one("#row-grad_accum").has_class("-recipe")
        screen.query_one("#f-micro_batch").value = "2"   # as a user would: kept by the recipe
        await pilot.press("ctrl+e")
        await wait_until(pilot, lambda: "Micro-batch 2 as asked" in str(fit.render()), "the recipe", 60)
        text = str(fit.render())
        expected, _ = preview_recipe(screen.current_spec())
        assert expected.summary() in text and all(r in text for r in expected.reasons)
        assert "Micro-batch 2 as asked, accumulation 4: the effective batch stays 8" in text and "GiB" in text

        # the form's entries show what the recipe chose where the user left them to it, marked as the recipe's;
        # the one the user set stays theirs
        def shown(name: str):
            value = screen.query_one(f"#f-{name}").value
            return value if isinstance(value, bool) else screen.form.settings[name].parse(value)

        def recipes(name: str) -> bool:
            return screen.query_one(f"#row-{name}").has_class("-recipe")

        on_form = [n for n in RECIPE_SETTINGS if n in screen.form.settings]   # checkpointing is not a form entry
        assert len(on_form) == 4
        assert {n: shown(n) for n in on_form} == {n: v for n, v in expected.settings().items() if n in on_form}
        assert shown("micro_batch") == 2 and shown("grad_accum") == 4
        assert not recipes("micro_batch") and all(recipes(n) for n in on_form if n != "micro_batch")
        assert screen.current_spec().explicit == ["micro_batch"]
        # the recipe changed: the entries left to it follow (seed: the seed's settings, but micro-batch 2 kept)
        screen.query_one("#f-recipe").value = "seed"
        await wait_until(pilot, lambda: "seed recipe" in str(fit.render()), "the seed recipe", 60)
        seed, _ = preview_recipe(screen.current_spec())
        assert {n: shown(n) for n in on_form} == {n: v for n, v in seed.settings().items() if n in on_form}
        assert shown("micro_batch") == 2 and shown("load_in_4bit") is True
        # an entry left to the recipe only shows the recipe's choice: the spec keeps the base value, so another
        # recipe chooses from the same start (on a GPU auto shows 16-bit, and the seed recipe is still 4-bit)
        screen.form.show_recipe({"load_in_4bit": False})
        assert shown("load_in_4bit") is False and screen.form.spec().load_in_4bit is TrainSpec().load_in_4bit


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_fit_probe_on_the_gpu_measures_before_the_first_step(demo_model, workspace, backend):
    """On a GPU: the probe runs before the first step and its event has the measured peak and speed
    beside the estimate; the run then trains with the recipe the probe confirmed."""
    proc = subprocess.run(
        [sys.executable, "-m", "medtui_engine.cli", "train", "--data", str(DATA), "--max-steps", "2",
         "--backend", backend, "--workspace", str(workspace)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = next(d for d in (workspace / "runs").iterdir() if d.is_dir())
    events = read_events(run / "events.jsonl")
    probe = next(e for e in events if e["type"] == "fit_probe")
    assert not probe["skipped"] and probe["fits"] and probe["peak_mib"] > 0 and probe["tokens_per_s"] > 0
    kinds = [e["type"] for e in events]
    assert kinds.index("fit_probe") < kinds.index("train_begin") and kinds[-1] == "finished"
    on_disk = json.loads((run / "spec.json").read_text())
    assert on_disk["resolved_recipe"]["probe"]["peak_mib"] == probe["peak_mib"]
    print(f"\n{backend}: {probe['message']}")


@pytest.mark.gpu
def test_unsloth_padding_free_batches_give_the_padded_batches_logits(demo_model):
    """The recipe's claim that Unsloth keeps attention within each sample of a padding-free batch
    (recipe.PADDING_FREE): the same check as on the CPU, through Unsloth's own model on the GPU."""
    from unsloth import FastLanguageModel  # noqa: I001  (first, as Unsloth asks)
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from medtui_engine.train.data import load_train_cases, tokenize_cases

    model, tok = FastLanguageModel.from_pretrained(model_name=str(demo_model), max_seq_length=256,
                                                   dtype=torch.float32, load_in_4bit=False, local_files_only=True)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=8, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], use_gradient_checkpointing=False)
    cases, _ = load_train_cases(DATA, "Question", "Complex_CoT", "Response")
    rows, _ = tokenize_cases(cases[:4], "seed", tok, 96, mask_prompt=False)
    rows = [rows[0], {k: v[:50] for k, v in rows[1].items()}, rows[2], {k: v[:77] for k, v in rows[3].items()}]
    lens = [len(r["input_ids"]) for r in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.train()
    outs = {}
    for pf in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=pf)(rows)
        batch = {k: v.cuda() for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            outs[pf] = model(**batch, use_cache=False).logits.float()
    diff = max((outs[False][i, :n] - p).abs().max().item() for i, (n, p) in enumerate(zip(lens, torch.split(
        outs[True][0], lens), strict=True)))
    print(f"\nUnsloth padding-free vs padded: max |logit diff| {diff:.2e}")
    assert diff < 1e-3
