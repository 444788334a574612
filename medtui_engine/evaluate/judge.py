"""A local judge model: a model directory reads each answer with a rubric and says yes or no to the
clinician's four judgements. Its columns are the judge's, never a clinician's, and sit apart from them
in the report (``report['judge']``, the report's "Judge model" section).

The judge reads one answer at a time, with the case and the reference, never a model's name; it decodes
greedily. Its verdicts are read from lines ``<judgement>: yes|no`` after any think block; an answer whose
output gives no verdict for a judgement counts as not judged for it, and the raw outputs are kept.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..sections import split_think
from .report import _write_text, markdown
from .review import JUDGEMENTS, read_report, reviewable_cases, summarise

PLACEHOLDERS = ("{question}", "{reference}", "{answer}", "{criteria}")
REQUIRED = ("{question}", "{answer}")

DEFAULT_RUBRIC = """You are a strict, experienced clinician reviewing one answer a model gave to a clinical case.
Judge only from the case, the reference and the answer below.

Case:
{question}

Reference:
{reference}

Answer to review:
{answer}

Reply with exactly these lines, each ending in yes or no:
{criteria}
"""

JUDGE_SYSTEM = "You grade clinical answers strictly and reply in the format asked, nothing else."


def criteria_lines() -> str:
    return "\n".join(f"{j.key}: yes or no ({j.asks})" for j in JUDGEMENTS)


def load_rubric(path: Path | None) -> str:
    if path is None:
        return DEFAULT_RUBRIC
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such rubric file") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise UserError(f"{path}: not a UTF-8 text file; a rubric is text with {', '.join(REQUIRED)} in it") from None
    missing = [p for p in REQUIRED if p not in text]
    if missing:
        raise UserError(f"{path}: the rubric has no {missing[0]} placeholder; it needs {' and '.join(REQUIRED)} (and "
                        f"may use {{reference}} and {{criteria}}: the lines the judge must answer)")
    return text


def fill_rubric(rubric: str, question: str, reference: str, answer: str) -> str:
    """The placeholders replaced once each, left to right (braces elsewhere in a rubric stay as written)."""
    values = {"{question}": question, "{reference}": reference, "{answer}": answer, "{criteria}": criteria_lines()}
    pattern = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))
    return pattern.sub(lambda m: values[m.group(0)], rubric)


_VERDICT = {"yes": True, "y": True, "是": True, "no": False, "n": False, "否": False}


def parse_verdicts(output: str) -> dict[str, bool]:
    """``<judgement>: yes|no`` lines (the last one for each judgement), read after any think block. An echo of the
    format (``yes/no``, ``yes or no``) is not a verdict."""
    text = split_think(output).answer if "</think>" in output else output
    found: dict[str, bool] = {}
    for j in JUDGEMENTS:
        pat = re.compile(rf"{j.key}\W{{0,4}}[:：=]\W{{0,3}}(yes|no|是|否|y|n)\b(?!\s*(?:/|or\b|或))", re.I)
        hits = pat.findall(text)
        if hits:
            found[j.key] = _VERDICT[hits[-1].lower()]
    return found


def _reference(c) -> str:
    parts = []
    if c.reference_diagnosis:
        ref = c.reference_diagnosis
        parts.append("diagnosis: " + (" / ".join(ref) if isinstance(ref, list) else str(ref)))
    if c.reference_answer:
        parts.append(c.reference_answer)
    return "\n".join(parts) or "(none)"


def judge_prompt(loaded, filled: str) -> str:
    tok = loaded.tokenizer
    if getattr(tok, "chat_template", None):
        messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": filled}]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return filled + "\n"


def run_judge(report_dir: Path, model: str, *, rubric_file: Path | None = None, max_new_tokens: int = 256,
              runs_dir: Path | None = None, merged_dir: Path | None = None, limit: int | None = None,
              progress: Callable[[str], None] | None = None) -> dict:
    """Have a local model judge every reviewable answer of the report; add its columns to report.json and report.md."""
    from ..infer import LoadOptions, SamplingSettings, answer, load_model, resolve_source

    say = progress or (lambda _m: None)
    report_dir = Path(report_dir)
    report = read_report(report_dir)
    rubric = load_rubric(rubric_file)
    if not 1 <= max_new_tokens <= 32768:
        raise UserError("--max-new-tokens must be a whole number from 1 to 32768")
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    cases = reviewable_cases(report_dir, report)[:limit]
    if not cases:
        raise UserError(f"{report_dir}: no case to judge (multiple-choice questions are scored, not judged)")
    source = resolve_source(model, runs_dir, merged_dir)
    settings = SamplingSettings(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, seed=0).checked()
    loaded = load_model(source, LoadOptions(), progress=lambda msg, _f: say(f"judge: {msg}"))
    judged: dict[str, dict] = {}
    raw: dict[str, dict] = {}
    unparsed = 0
    started = time.time()
    total = sum(len(c.answers) for c in cases)
    done = 0
    try:
        for c in cases:
            for name, (_think, visible) in c.answers.items():
                done += 1
                say(f"judge: answer {done}/{total} ({c.case_id})")
                filled = fill_rubric(rubric, c.question, _reference(c), visible)
                out = answer(loaded, c.question, settings, prompt=judge_prompt(loaded, filled)).output
                verdicts = parse_verdicts(out)
                unparsed += len(JUDGEMENTS) - len(verdicts)
                raw.setdefault(c.case_id, {})[name] = out
                entry = judged.setdefault(c.case_id, {"answers": {}, "preference": None, "comment": ""})
                if verdicts:
                    entry["answers"][name] = verdicts
    finally:
        loaded.unload()
    models = list(report["models"])
    label = source.label
    block = report.get("judge") or {"judges": {}}
    block["judges"][label] = {
        "model": source.as_dict(), "rubric": rubric, "rubric_file": str(rubric_file) if rubric_file else None,
        "sampling": settings.as_dict(), "seconds": round(time.time() - started, 2), "answers": total,
        "verdicts_missing": unparsed, "cases": judged, "raw": raw, **summarise({label: {"cases": judged}}, models, who="judge")}
    block["method"] = METHOD
    report["judge"] = block
    _write_text(report_dir / "report.json", json.dumps(report, ensure_ascii=False, indent=2))
    _write_text(report_dir / "report.md", markdown(report))
    return {"report_dir": report_dir, "judge": label, "answers": total, "verdicts_missing": unparsed, "report": report}


METHOD = ("a local model read each answer alone (the case, the reference and the answer, no model named) with a "
          "rubric, decoding greedily, and answered yes or no for each judgement; a judgement with no verdict in its "
          "output counts as not judged; rates with Wilson 95% intervals, differences with a paired bootstrap interval "
          "and McNemar's exact test, as for one clinician. These are a model's opinions, not a clinician's; the raw "
          "outputs are in report.json.")


def judge_message(result: dict) -> str:
    from .review import judge_markdown

    lines = [f"judge {result['judge']!r} read {result['answers']} answers; "
             f"{result['verdicts_missing']} verdicts missing from its outputs (counted as not judged)"]
    lines += judge_markdown(result["report"], methods=False)
    lines.append(f"report: {result['report_dir']}/report.md and report.json")
    return "\n".join(lines)
