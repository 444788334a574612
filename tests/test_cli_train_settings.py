"""The training settings, declared once on TrainSpec: the generated `medtui train` options, each
setting's own validation, and the round trip command line -> spec -> spec.json -> spec."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from medtui_engine.cli import build_parser
from medtui_engine.commands.train import spec_from_args
from medtui_engine.train.spec import (
    RECORDS,
    SETTINGS,
    Problem,
    SpecError,
    TrainSpec,
    cross_problems,
    default_value,
    form_settings,
    validate_field,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "runs"
NOT_ON_THE_CLI = {"model_label"}  # derived from the model when the run starts

# every flag `medtui train` has had, and the field it sets
FLAGS = {
    "--data": "data", "--model": "model", "--backend": "backend", "--template": "template",
    "--mask-prompt": "mask_prompt", "--field-question": "field_question", "--field-cot": "field_cot",
    "--field-response": "field_response", "--limit-rows": "limit_rows", "--eval-fraction": "eval_fraction",
    "--lora-r": "lora_r", "--lora-alpha": "lora_alpha", "--lora-dropout": "lora_dropout",
    "--target-modules": "target_modules", "--epochs": "epochs", "--max-steps": "max_steps", "--lr": "learning_rate",
    "--micro-batch": "micro_batch", "--grad-accum": "grad_accum", "--max-seq-length": "max_seq_length",
    "--warmup-ratio": "warmup_ratio", "--scheduler": "scheduler", "--optim": "optim", "--precision": "precision",
    "--no-4bit": "load_in_4bit", "--no-gradient-checkpointing": "gradient_checkpointing", "--seed": "seed",
    "--save-steps": "save_steps", "--no-save-epoch": "save_every_epoch", "--keep-checkpoints": "keep_checkpoints",
    "--eval-steps": "eval_steps", "--heartbeat": "heartbeat_s",
}


def train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def parse(*argv: str):
    return build_parser().parse_args(["train", *argv])


def argv_for(spec: TrainSpec) -> list[str]:
    """The command line that asks for ``spec``, written from the settings."""
    out = []
    for name, s in SETTINGS.items():
        value = getattr(spec, name)
        if s.flag is None:
            continue
        if s.kind == "bool":
            if value != default_value(name):
                out.append(s.flag)
        else:
            out += [s.flag, s.format(value)]
    return out


def test_every_field_is_declared_and_reachable_from_the_cli_or_deliberately_not():
    names = [f.name for f in fields(TrainSpec)]
    assert list(SETTINGS) == [n for n in names if n not in RECORDS]   # the recipe's records are not settings
    assert RECORDS == ("explicit", "resolved_recipe")
    off = {n for n, s in SETTINGS.items() if s.flag is None}
    assert off == NOT_ON_THE_CLI
    options = {o: a.dest for a in train_parser()._actions for o in a.option_strings}
    for name, s in SETTINGS.items():
        if s.flag:
            assert options[s.flag] == name
    for flag, name in FLAGS.items():  # every flag there has been keeps its name and its field
        assert options[flag] == name, flag
    for own in ("--name", "--detach", "--force", "--json", "--workspace", "--config", "--debug"):
        assert own in options


def test_the_generated_options_keep_the_defaults_required_data_and_hidden_flags(capsys):
    args = parse("--data", "d.jsonl")
    assert spec_from_args(args) == TrainSpec(data="d.jsonl")
    assert args.name is None and not args.detach and not args.force
    with pytest.raises(SystemExit):
        parse()  # --data is required
    assert "--data" in capsys.readouterr().err
    help_text = train_parser().format_help()
    assert "--lr LR" in help_text and "--no-4bit" in help_text and "--target-modules LIST" in help_text
    assert "--heartbeat" not in help_text  # hidden, yet it works:
    assert spec_from_args(parse("--data", "d", "--heartbeat", "1.5")).heartbeat_s == 1.5
    # negative flags turn settings off; integral alphas stay whole numbers
    spec = spec_from_args(parse("--data", "d", "--no-4bit", "--no-gradient-checkpointing", "--no-save-epoch",
                                "--mask-prompt", "--lora-alpha", "16", "--target-modules", "q_proj, v_proj"))
    assert (spec.load_in_4bit, spec.gradient_checkpointing, spec.save_every_epoch, spec.mask_prompt) == \
        (False, False, False, True)
    assert spec.lora_alpha == 16 and isinstance(spec.lora_alpha, int)
    assert spec.target_modules == ["q_proj", "v_proj"]
    assert spec_from_args(parse("--data", "d", "--lora-alpha", "16.5")).lora_alpha == 16.5
    for name, s in SETTINGS.items():  # choices come from the declarations
        if s.choices:
            action = next(a for a in train_parser()._actions if a.dest == name)
            assert tuple(action.choices) == s.choices


def test_round_trip_command_line_spec_and_spec_json(tmp_path: Path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"Question": "q", "Complex_CoT": "c", "Response": "r"}\n')
    canaries = tmp_path / "canaries.txt"
    canaries.write_text("ZK4P-QX7M-91WD\n")
    wanted = TrainSpec(
        model="demo", data=str(data), field_question="Q", field_cot="", field_response="A", limit_rows=7,
        allow_identifiers="phone_number,email", canaries=str(canaries), canary_repeats=3,
        template="chat", mask_prompt=True, recipe="seed", backend="hf", load_in_4bit=False, gradient_checkpointing=False,
        precision="fp32", lora_r=8, lora_alpha=12.5, lora_dropout=0.1, lora_bias="all",
        target_modules=["q_proj", "v_proj"], micro_batch=2, grad_accum=4, epochs=1.5, max_steps=9,
        learning_rate=3e-4, max_seq_length=512, warmup_ratio=0.1, scheduler="cosine", optim="adamw_torch",
        weight_decay=0.01, seed=1, eval_fraction=0.2, eval_steps=4, save_steps=3, save_every_epoch=False,
        keep_checkpoints=2, logging_steps=2, heartbeat_s=1.0,
        gpus="0,1", nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.5:29500", rdzv_id="ward7")
    for name in SETTINGS:  # every setting the CLI reaches differs from its default here
        if name not in NOT_ON_THE_CLI and name not in ("model", "nproc"):
            assert getattr(wanted, name) != default_value(name), name
    spec = spec_from_args(parse(*argv_for(wanted)))
    assert spec == wanted
    # CPU processes exclude GPUs: their own round trip
    cpu = TrainSpec(data=str(data), nproc=3, grad_accum=6)
    assert spec_from_args(parse(*argv_for(cpu))) == cpu and cpu.validate() is cpu
    spec.validate()
    run = tmp_path / "run"
    run.mkdir()
    spec.write(run, extra={"gpu": None})
    on_disk = json.loads((run / "spec.json").read_text())
    assert set(on_disk) == set(SETTINGS) | set(RECORDS) | {"spec_version", "run_id", "created_at", "gpu"}
    assert on_disk["learning_rate"] == 3e-4 and on_disk["target_modules"] == ["q_proj", "v_proj"]
    assert TrainSpec.read(run) == wanted


def test_recorded_spec_json_files_still_read_and_validate():
    for run in sorted(p for p in FIXTURES.iterdir() if (p / "spec.json").is_file()):
        spec = TrainSpec.read(run)
        assert spec.validate(check_files=False) is spec
        assert spec.to_dict().items() >= {k: v for k, v in json.loads((run / "spec.json").read_text()).items()
                                          if k in SETTINGS}.items()


def test_each_setting_validates_on_its_own_and_names_itself_by_its_label():
    for name in SETTINGS:  # every default is valid for its own setting
        assert validate_field(name, default_value(name)) == [], name
    bad = {"lora_r": 0, "lora_alpha": -1, "lora_dropout": 1.0, "micro_batch": 0, "grad_accum": 1.5, "epochs": 0,
           "max_steps": -1, "learning_rate": 2.0, "max_seq_length": 8, "warmup_ratio": 1, "weight_decay": -0.1,
           "seed": -1, "eval_fraction": 0.5, "eval_steps": -1, "save_steps": -2, "keep_checkpoints": 0,
           "logging_steps": 0, "heartbeat_s": 0.1, "limit_rows": -1, "template": "alpaca", "backend": "tpu",
           "precision": "int3", "scheduler": "step", "optim": "lion", "lora_bias": "some", "target_modules": [],
           "field_question": "", "field_response": "", "model": "", "mask_prompt": "yes",
           "allow_identifiers": "id_number,everything"}
    for name, value in bad.items():
        problems = validate_field(name, value)
        assert [p.field for p in problems] == [name], name
        message = problems[0].message()
        assert message.startswith(SETTINGS[name].label), message
        assert "--" not in message, message
        if SETTINGS[name].flag:
            assert problems[0].message(flags=True).startswith(f"{SETTINGS[name].label} ({SETTINGS[name].flag}) ")
    assert validate_field("lora_r", 0)[0].message() == "LoRA rank must be a whole number from 1 to 1024, got 0"
    assert validate_field("backend", "tpu")[0].message() == "Backend 'tpu' is unknown: choose one of auto, unsloth, hf"
    assert validate_field("template", "x")[0].message() == "Prompt template 'x' is unknown: choose seed or chat"
    assert validate_field("lora_r", True) and validate_field("epochs", float("nan"))  # no bools, no NaN
    assert validate_field("field_cot", "") == []  # data without reasoning is allowed


def test_file_checks_and_settings_together_stay_separate(tmp_path: Path):
    assert validate_field("data", str(tmp_path / "none.jsonl")) == []  # the value alone is fine
    (problem,) = validate_field("data", str(tmp_path / "none.jsonl"), check_files=True)
    assert problem.message() == f"Training data: {tmp_path / 'none.jsonl'} does not exist or is not a file"
    assert problem.message(flags=True).startswith("Training data (--data): ")
    (problem,) = validate_field("model", str(tmp_path), check_files=True)
    assert "has no config.json" in problem.message()
    assert validate_field("model", "demo", check_files=True) == []
    assert validate_field("eval_steps", 5) == []  # on its own it is fine; with no eval split it is not:
    (problem,) = cross_problems(TrainSpec(eval_steps=5))
    assert problem == Problem("eval_steps", problem.text, ("eval_fraction",))
    assert problem.message() == "Eval steps is set but there is no eval split: set Eval fraction too (e.g. 0.05)"
    assert "set Eval fraction (--eval-fraction) too" in problem.message(flags=True)
    assert cross_problems(TrainSpec(eval_steps=5, eval_fraction=0.1)) == []
    with pytest.raises(SpecError) as err:
        TrainSpec(eval_steps=5, lora_r=0).validate(check_files=False)
    assert [p.field for p in err.value.problems] == ["lora_r", "eval_steps"]


def test_the_form_settings_are_declared_on_the_spec():
    assert [n for n, _ in form_settings()] == [
        "model", "data", "limit_rows", "template", "mask_prompt", "recipe", "backend", "load_in_4bit", "lora_r",
            "lora_alpha",
        "lora_dropout", "micro_batch", "grad_accum", "epochs", "max_steps", "learning_rate", "max_seq_length",
        "eval_fraction", "save_steps", "gpus"]


def test_the_cli_prints_the_settings_with_their_flags(tmp_path: Path, workspace: Path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"Question": "q", "Complex_CoT": "c", "Response": "r"}\n')
    r = subprocess.run([sys.executable, "-m", "medtui_engine.cli", "train", "--data", str(data), "--lora-r", "0",
                        "--eval-steps", "3", "--model", str(tmp_path), "--detach"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "LoRA rank (--lora-r) must be a whole number from 1 to 1024, got 0" in r.stderr
    assert "Eval steps (--eval-steps) is set but there is no eval split: set Eval fraction (--eval-fraction)" \
        in r.stderr
    assert f"Model (--model): {tmp_path} has no config.json" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
