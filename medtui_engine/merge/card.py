"""The model card: ``README.md`` in a merged directory, in Hugging Face's card layout.

YAML front matter (``base_model``, ``library_name``, ``tags``, ``license`` when the base's own card
names one, ``pipeline_tag``), then sections: the model, its training data (file, sha256, row counts,
the identifier scan's counts by kind, never a value), the recipe (the run's ``spec.json``), the
training curves (folded from the run's events by the engine's reducer), the evaluation (the newest
evaluation report of this run, when there is one), the merge's verification, versions, intended use
and the clinician-review disclaimer.

Everything is read from files the run and the merge left; nothing is inferred. What a run did not
record is said as "not recorded"; a run never evaluated is "not evaluated".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..notices import DISCLAIMER
from .plan import MergePlan

CARD = "README.md"
INTENDED_USE = (
    "A research and drafting aid for clinicians: it writes a suspected diagnosis, its basis, a treatment plan "
    "and differential diagnoses for a case description, in the format it was trained on. Every answer must be "
    "reviewed by a qualified clinician before it informs any decision about a patient. It is not a medical "
    "device, has not been validated for clinical use, and must not be offered to patients or the public."
)
# keys of spec.json shown as the recipe, in this order (others follow alphabetically)
RECIPE_FIRST = ("model", "model_label", "template", "backend", "load_in_4bit", "lora_r", "lora_alpha", "lora_dropout",
                "lora_targets", "learning_rate", "lr", "epochs", "max_steps", "micro_batch", "grad_accum",
                "max_seq_length", "mask_prompt", "scheduler", "warmup_ratio", "optimizer", "seed", "eval_fraction")
# keys under which a run may record its identifier scan (data.json first, then spec.json)
IDENTIFIER_KEYS = ("identifiers", "identifier_counts", "identifier_scan", "privacy")
# the evaluation's headline measures, where the report has them (older reports: diagnosis_contains)
EVAL_MEASURES = ("diagnosis_match", "diagnosis_contains", "diagnosis_exact", "exam_correct", "all_sections",
                 "three_elements", "cut_off")


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _yaml_str(value: str) -> str:
    return json.dumps(str(value), ensure_ascii=False)   # a JSON string is a valid YAML scalar


def _cell(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict, bool)) or value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def base_license(base_dir: Path) -> str | None:
    """The license the base's own card declares in its front matter, if it has one."""
    try:
        text = (Path(base_dir) / CARD).read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return None
    lic = re.search(r"^license:\s*[\"']?([\w.\-+]+)", m.group(1), re.M)
    return lic.group(1) if lic else None


def identifier_counts(data: dict | None, spec: dict | None) -> dict[str, int] | None:
    """Counts by kind of the identifier scan the run recorded (None when it recorded none). Only
    integer counts are read: a value found there is never copied."""
    for source in (data or {}, spec or {}):
        rec = next((source[k] for k in IDENTIFIER_KEYS if isinstance(source.get(k), dict)), None)
        if rec is None:
            continue
        for key in ("identifiers", "counts", "by_kind", "counts_by_kind"):
            if isinstance(rec.get(key), dict):
                rec = rec[key]
                break
        counts = {str(k): int(v) for k, v in rec.items() if isinstance(v, int) and not isinstance(v, bool)}
        return counts
    return None


def gate_lines(data: dict | None) -> list[str]:
    """The identifier gate's decision beside the counts (the privacy record in data.json): rows that
    held identifiers, placeholders already in the data, the decision and the kinds acknowledged."""
    data = data or {}
    if isinstance(data.get("privacy"), dict) and "gate" not in data:
        data = data["privacy"]
    out = []
    if isinstance(data.get("rows_with_identifiers"), int):
        out.append(f"- Rows holding possible identifiers: {data['rows_with_identifiers']}")
    ph = data.get("placeholders")
    if isinstance(ph, dict) and ph:
        counts = {str(k): v for k, v in ph.items() if isinstance(v, int) and not isinstance(v, bool)}
        if counts:
            out.append("- Redaction placeholders in the data: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    elif isinstance(ph, int) and not isinstance(ph, bool):
        out.append(f"- Redaction placeholders in the data: {ph}")
    if isinstance(data.get("gate"), str):
        out.append(f"- Gate decision: {data['gate']}")
    ack = data.get("acknowledged")
    if isinstance(ack, list) and ack:
        out.append("- Kinds acknowledged by the user: " + ", ".join(str(k) for k in ack))
    return out


def training_summary(run_dir: Path) -> dict | None:
    """First, last and best loss, steps and runtime: the run's events folded by the engine's reducer."""
    from ..runs.events import read_events
    from ..runs.state import fold

    events = Path(run_dir) / "events.jsonl"
    if not events.is_file():
        return None
    state = fold(read_events(events))
    losses = [(s, v) for s, v in zip(state.loss_steps, state.loss_values, strict=False) if v is not None]
    evals = [(s, v) for s, v in state.eval if v is not None]
    return {
        "steps": state.step, "total_steps": state.total_steps, "examples": state.num_examples,
        "tokens": state.train_tokens, "epochs": state.epoch,
        "first_loss": losses[0][1] if losses else None, "first_loss_step": losses[0][0] if losses else None,
        "last_loss": losses[-1][1] if losses else None, "last_loss_step": losses[-1][0] if losses else None,
        "best_loss": min(v for _, v in losses) if losses else None,
        "best_loss_step": min(losses, key=lambda p: p[1])[0] if losses else None,
        "last_eval_loss": evals[-1][1] if evals else None, "last_eval_step": evals[-1][0] if evals else None,
        "runtime_s": state.runtime_s if state.runtime_s is not None else state.elapsed_s,
        "status": str(state.status), "device": state.device, "backend": state.backend, "versions": state.versions,
    }


def find_eval_report(plan: MergePlan) -> tuple[Path, dict] | None:
    """The newest evaluation report (``WORKSPACE/reports/*/report.json``) of one of this run's models."""
    if not plan.run_dir:
        return None
    run_dir = Path(plan.run_dir)
    found = []
    for path in (run_dir.parent.parent / "reports").glob("*/report.json"):
        report = _read_json(path)
        if not isinstance(report, dict):
            continue
        for model in (report.get("models") or {}).values():
            src = (model or {}).get("source") or {}
            adapter = str(src.get("adapter_dir") or "")
            if (plan.run_id and src.get("run_id") == plan.run_id) or (adapter and adapter.startswith(str(run_dir) + "/")):
                found.append((path.stat().st_mtime, path, report))
                break
    if not found:
        return None
    _, path, report = max(found, key=lambda f: f[0])
    return path, report


def _fmt_measure(entry: dict) -> str:
    value = entry.get("value")
    if value is None:
        return "n/a"
    if entry.get("kind") == "rate":
        count = f"{entry['k']}/{entry.get('n')}" if entry.get("k") is not None else f"n={entry.get('n')}"
        return f"{100 * value:.1f}% ({count})"
    return f"{value:.2f}"


def _loss(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def render_card(plan: MergePlan, record: dict, versions: dict, merge: dict | None = None) -> tuple[str, dict]:
    """The card's text and what it found (for medtui.json)."""
    from ..fmt import fmt_duration

    run_dir = Path(plan.run_dir) if plan.run_dir else None
    spec = _read_json(run_dir / "spec.json") if run_dir else None
    data = _read_json(run_dir / "data.json") if run_dir else None
    spec = spec if isinstance(spec, dict) else {}
    data = data if isinstance(data, dict) else None
    curves = training_summary(run_dir) if run_dir else None
    ids = identifier_counts(data, spec)
    evaluation = find_eval_report(plan)
    lic = base_license(Path(plan.base_dir))
    name = Path(plan.out_dir).name if Path(plan.out_dir).name != "merged" else f"{plan.run_id or 'medtui'}-merged"

    arch = (plan.base_architecture or "").lower()
    tags = ["medtui", "lora", "merged", "medical", "clinical-reasoning", "text-generation"]
    for family in ("qwen3", "qwen2", "llama"):
        if family in arch:
            tags.append(family)
            break
    if plan.base_is_demo:
        tags.append("random-weights-demo")
    front = ["---", f"base_model: {_yaml_str(plan.base_label or plan.base_dir)}", "library_name: transformers",
             "pipeline_tag: text-generation", "tags:", *[f"- {t}" for t in tags]]
    if lic:
        front.append(f"license: {lic}")
    front.append("---")

    out = [*front, "", f"# {name}", ""]
    if plan.base_is_demo:
        out += ["> This model was merged on medtui's random-weight demo model: its output is noise. It exists to try "
                "medtui end to end, never for answers.", ""]
    lora = plan.lora or {}
    out += ["## Model", "",
            f"- Base model: {plan.base_label} (`{plan.base_dir}`), {plan.base_architecture}, "
            f"{plan.base_params / 1e9:.2f} B parameters",
            f"- Fine-tuning: LoRA r={lora.get('r', '-')}, alpha={lora.get('lora_alpha', lora.get('alpha', '-'))}, "
            f"merged into {plan.dtype} weights ({plan.method})",
            f"- Adapter: {plan.adapter_kind}" + (f", step {plan.adapter_step}" if plan.adapter_step is not None else "")
            + (f", run `{plan.run_id}`" if plan.run_id else ""),
            f"- Prompt template: `{plan.template}` (the prompt format it was trained on; use the same one)",
            f"- Trained with: {plan.backend or 'not recorded'}"
            + (" (base loaded in 4 bits)" if plan.trained_4bit else ""),
            ""]

    out += ["## Training data", ""]
    if data:
        out += [f"- File: `{Path(str(data.get('path') or '')).name}`",
                f"- sha256: `{data.get('sha256') or 'not recorded (a directory, not one file)'}`",
                f"- Rows used: {data.get('rows_used', 'not recorded')}; training rows: "
                f"{len(data.get('train_rows') or [])}; held-out evaluation rows: {len(data.get('eval_rows') or [])} "
                f"(eval fraction {data.get('eval_fraction')}, seed {data.get('seed')})"]
    else:
        out.append("- Not recorded (no data.json in the run)." if run_dir else
                   "- Not recorded: merged from an adapter directory outside a medtui run.")
    out += ["", "### Identifier scan", ""]
    if ids is None:
        out.append("Not recorded: this run did not record an identifier scan.")
    elif not any(ids.values()):
        out.append("No possible identifiers were found in the training data.")
    else:
        out.append(f"Possible identifiers found in the training data, counts by kind ({sum(ids.values())} in all; "
                   "values are never recorded):")
        out += ["", "| kind | count |", "| --- | ---: |", *[f"| {_cell(k)} | {v} |" for k, v in sorted(ids.items())]]
    if ids is not None:
        out += [""] + gate_lines(data)
    out.append("")

    out += ["## Training recipe", ""]
    if spec:
        keys = [k for k in RECIPE_FIRST if k in spec] + sorted(k for k in spec if k not in RECIPE_FIRST and k != "data")
        out += ["From the run's `spec.json`:", "", "| setting | value |", "| --- | --- |",
                *[f"| {_cell(k)} | {_cell(spec[k])} |" for k in keys]]
    else:
        out.append("Not recorded (no spec.json).")
    out.append("")

    out += ["## Training curves", ""]
    if curves and curves["first_loss"] is not None:
        out += [f"- Steps: {curves['steps']}" + (f" of {curves['total_steps']}" if curves["total_steps"] else "")
                + (f", {curves['examples']} cases" if curves["examples"] else ""),
                f"- Loss: first {_loss(curves['first_loss'])} (step {curves['first_loss_step']}), last "
                f"{_loss(curves['last_loss'])} (step {curves['last_loss_step']}), best {_loss(curves['best_loss'])} "
                f"(step {curves['best_loss_step']})",
                f"- Held-out loss: {_loss(curves['last_eval_loss'])} at step {curves['last_eval_step']}"
                if curves["last_eval_loss"] is not None else "- Held-out loss: not measured",
                f"- Runtime: {fmt_duration(curves['runtime_s'])}"
                + (f" on {curves['device']}" if curves["device"] else "")
                + (f" ({curves['backend']})" if curves["backend"] else "")]
    else:
        out.append("Not recorded (the run's events hold no loss).")
    out.append("")

    out += ["## Evaluation", ""]
    if evaluation is None:
        out.append("Not evaluated: no evaluation report of this run was found (`medtui eval` writes one).")
    else:
        path, report = evaluation
        out.append(f"From `{path.parent.name}/report.json` ({report.get('n_cases')} cases of "
                   f"`{Path(str(report.get('cases_file') or '')).name}`):")
        models = report.get("models") or {}
        cols = list(models)
        out += ["", "| measure | " + " | ".join(_cell(c) for c in cols) + " |", "| --- |" + " --- |" * len(cols)]
        for key in EVAL_MEASURES:
            entries = [((models[c] or {}).get("summary") or {}).get(key) for c in cols]
            if any(isinstance(e, dict) for e in entries):
                label = next(e.get("label") for e in entries if isinstance(e, dict)) or key
                out.append(f"| {_cell(label)} | " + " | ".join(_fmt_measure(e) if isinstance(e, dict) else "-"
                                                           for e in entries) + " |")
    out.append("")

    out += ["## Verification of the merge", ""]
    if record.get("top1_agreement") is not None:
        out.append(f"- Logits against the unmerged base + adapter: max |difference| {record.get('max_abs_logit_diff')} "
                   f"(the adapter moves them by up to {record.get('adapter_effect_max_abs_logit')}); top-1 agreement "
                   f"{record.get('top1_agreement'):.2%} over {record.get('positions')} positions")
    contract = record.get("stop_contract") or {}
    if contract:
        out.append(f"- Stop tokens: generation_config.json ends on {record.get('generation_eos_ids')}; the template's "
                   f"end of turn is {contract.get('turn_end')}, the tokenizer's EOS {contract.get('tokenizer_eos')}")
    b = record.get("behaviour") or {}
    if b.get("prompts"):
        out.append(f"- Stops by itself: {b['stopped']} of {b['prompts']} probe answers within {b['max_new_tokens']} "
                   f"tokens (cut-off rate {b['cut_off_rate']:.0%})" + (f". Warning: {b['warning']}" if b.get("warning") else ""))
    out.append("- Loads with plain transformers (peft and unsloth not needed).")
    out.append("")

    out += gguf_lines((merge or {}).get("gguf"))

    out += ["## Versions", "", "| package | merge | training |", "| --- | --- | --- |"]
    trained = (curves or {}).get("versions") or {}
    for pkg in dict.fromkeys([*versions, *trained]):
        out.append(f"| {pkg} | {versions.get(pkg) or '-'} | {trained.get(pkg) or '-'} |")
    out.append("")

    out += ["## Intended use", "", INTENDED_USE, "", "## Disclaimer", "", DISCLAIMER, ""]
    out += ["## How it was made", "",
            "Fine-tuned and merged with medtui. `medtui.json` beside this card records the provenance "
            "and the sha256 of every file.", ""]
    found = {"file": CARD, "identifier_scan": "recorded" if ids is not None else "not recorded",
             "evaluation": str(evaluation[0]) if evaluation else None, "license": lic,
             "training_summary": {k: v for k, v in (curves or {}).items() if k != "versions"} or None}
    return "\n".join(out), found


def gguf_lines(entry: dict | None) -> list[str]:
    """The card's GGUF section: each file that passed its check, with its figures and Ollama command."""
    files = [f for f in (entry or {}).get("files") or [] if not f.get("removed")]
    if not entry:
        return []
    out = ["## GGUF (llama.cpp, Ollama)", ""]
    if not files:
        return out + [f"- Not written: {entry.get('why') or 'no file passed its check'}", ""]
    for f in files:
        v = f.get("verification") or {}
        check = (f"max |logit diff| {v.get('max_abs_logit_diff')} against this model (tolerance "
                 f"{v.get('tolerance'):.1%} of the largest logit), top-1 agreement {v.get('top1_agreement'):.2%}"
                 if v.get("passed") else "not verified")
        out.append(f"- `gguf/{f['file']}` ({f['type']}, {f['bytes'] / 2**20:.1f} MiB): {check}; "
                   f"Ollama: `{f['ollama_create']}` (the Modelfile `gguf/{f['modelfile']}` holds the `{entry.get('template')}` "
                   "template and its stop tokens)")
    return out + [""]


def write_card(plan: MergePlan, out_dir: Path, record: dict, versions: dict, merge: dict | None = None) -> dict:
    text, found = render_card(plan, record, versions, merge)
    (Path(out_dir) / CARD).write_text(text, encoding="utf-8")
    return found
