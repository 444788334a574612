"""Scoring saved answers and aggregating them into the report: per-case verdicts, rates with 95%
intervals, means, and base vs tuned as paired differences (McNemar, paired bootstrap).

The report is built from answer rows (``answers``) only, so ``medtui eval`` (answers from models) and
``medtui eval score`` (answers from files) write the same report.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..notices import DISCLAIMER
from ..sections import SECTION_LABELS
from .answers import prompt_opened_think, write_answers
from .cases import METHOD as CASES_METHOD
from .matching import Synonyms
from .scoring import BASIS_EXPECTED, DIFFERENTIAL_EXPECTED, METHODS, score_answer
from .stats import BOOTSTRAP_SEED, PairedBootstrap, mcnemar_exact
from .stats import METHODS as STATS_METHODS

SCHEMA = 2


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    kind: str  # "rate" | "mean"


MEASURES: tuple[Measure, ...] = (
    Measure("diagnosis_match", "diagnosis: match (exact, synonym, containment, subtype)", "rate"),
    Measure("diagnosis_exact", "diagnosis: exact or synonym", "rate"),
    Measure("diagnosis_similarity", "diagnosis: character similarity (mean F1; not a match)", "mean"),
    Measure("exam_correct", "exam: correct option", "rate"),
    *(Measure(f"section_{k}", f"section with content: {v}", "rate") for k, v in SECTION_LABELS.items()),
    Measure("all_sections", "all five sections with content", "rate"),
    Measure("three_elements", "three elements (鉴别诊断 + 诊断依据 + 随访)", "rate"),
    Measure("basis_complete", f"basis complete (>= {BASIS_EXPECTED} points)", "rate"),
    Measure("basis_points", "basis points (mean)", "mean"),
    Measure("differential_covered", f"differential covered (>= {DIFFERENTIAL_EXPECTED})", "rate"),
    Measure("differential_count", "differentials named (mean)", "mean"),
    Measure("think_well_formed", "think block well formed", "rate"),
    Measure("cut_off", "cut off at max_new_tokens", "rate"),
    Measure("ttft_s", "time to first token, s (mean)", "mean"),
    Measure("think_end_s", "time to end of </think>, s (mean)", "mean"),
    Measure("total_s", "total time, s (mean)", "mean"),
    Measure("decode_tokens_per_s", "decode tokens/s (mean)", "mean"),
    Measure("output_tokens", "output tokens (mean)", "mean"),
)
_KIND = {m.key: m.kind for m in MEASURES}


def case_values(case: dict) -> dict[str, float | bool | None]:
    """Flatten one scored answer (score + stats) into the measures' keys."""
    s, st = case["score"], case.get("stats") or {}
    exact_or_syn = None if s["diagnosis_match"] is None else s["diagnosis_tier"] in ("exact", "synonym")
    out: dict[str, float | bool | None] = {
        "diagnosis_match": s["diagnosis_match"],
        "diagnosis_exact": exact_or_syn,
        "diagnosis_similarity": s["diagnosis_similarity"],
        "exam_correct": s.get("exam_correct"),
        "all_sections": s["all_sections"],
        "three_elements": s["three_elements"],
        "basis_complete": s["basis_points"] >= BASIS_EXPECTED,
        "basis_points": s["basis_points"],
        "differential_covered": s["differential_count"] >= DIFFERENTIAL_EXPECTED,
        "differential_count": s["differential_count"],
        "think_well_formed": s["think_well_formed"],
        "cut_off": s["cut_off"],
        "ttft_s": st.get("ttft_s"),
        "think_end_s": st.get("think_end_s"),
        "total_s": st.get("total_s"),
        "decode_tokens_per_s": st.get("decode_tokens_per_s"),
        "output_tokens": st.get("output_tokens"),
    }
    if s.get("exam_correct") is not None:  # an exam answer is a letter: sections mean nothing there
        for k in ("all_sections", "three_elements", "basis_complete", "basis_points", "differential_covered",
                  "differential_count"):
            out[k] = None
    for k, present in s["sections"].items():
        out[f"section_{k}"] = None if s.get("exam_correct") is not None else present
    return out


def score_row(row: dict, synonyms: Synonyms | None = None) -> dict:
    """One answer row (as saved in answers-*.jsonl) scored."""
    stats = dict(row.get("stats") or {})
    cut_off = stats.get("cut_off", row.get("cut_off"))
    score = score_answer(row["answer"], prompt_opened_think(row), row.get("reference_diagnosis"), cut_off=cut_off,
                         exam_answer=row.get("exam_answer"), options=row.get("options"), synonyms=synonyms)
    return {"sample": row.get("sample", 0), "output": row["answer"], "stats": stats, "score": score.as_dict()}


def _case_value(samples_values: list[dict], key: str) -> float | None:
    xs = [v[key] for v in samples_values if v.get(key) is not None]
    if not xs:
        return None
    return sum(float(x) for x in xs) / len(xs)


def score_rows(rows: list[dict], synonyms: Synonyms | None = None) -> list[dict]:
    """Answer rows -> one entry per case (its samples scored, its values averaged over samples)."""
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(str(row["id"]), []).append(row)
    cases = []
    for cid, group in by_id.items():
        group.sort(key=lambda r: r.get("sample", 0))
        scored = [score_row(r, synonyms) for r in group]
        values_per_sample = [case_values(s) for s in scored]
        values = {m.key: _case_value(values_per_sample, m.key) for m in MEASURES}
        first, head = scored[0], group[0]
        verdicts = [s["score"]["diagnosis_match"] for s in scored]
        if verdicts[0] is None:
            match, tier = None, None
        else:
            match = sum(bool(v) for v in verdicts) * 2 > len(verdicts)
            tiers = Counter(s["score"]["diagnosis_tier"] for s in scored if bool(s["score"]["diagnosis_match"]) == match)
            tier = tiers.most_common(1)[0][0]
        entry = {
            "id": cid,
            "kind": head.get("kind", "flat"),
            "question": head["question"],
            "reference_diagnosis": head.get("reference_diagnosis"),
            "diagnosis_match": match,
            "diagnosis_tier": tier,
            "predicted_diagnosis": first["score"]["predicted_diagnosis"],
            "diagnosis_similarity": first["score"]["diagnosis_similarity"],
            "n_samples": len(scored),
            "values": values,
            # the first sample, where readers of schema 1 looked
            "output": first["output"],
            "stats": first["stats"],
            "score": first["score"],
        }
        for k in ("exam_answer", "reference_answer", "record"):
            if head.get(k) is not None:
                entry[k] = head[k]
        if len(scored) > 1:
            entry["samples"] = scored
        cases.append(entry)
    return cases


def aggregate(cases: list[dict]) -> dict[str, dict]:
    """Summary per measure over cases. A case's value is its mean over samples (one sample: 0 or 1)."""
    per_case = [c["values"] if "values" in c else case_values(c) for c in cases]
    multi = any(c.get("n_samples", 1) > 1 for c in cases)
    boots: dict[int, PairedBootstrap] = {}  # one set of resamples per number of cases
    summary: dict[str, dict] = {}
    for m in MEASURES:
        xs = [float(v[m.key]) for v in per_case if v.get(m.key) is not None]
        n = len(xs)
        if m.kind == "rate":
            k = sum(1 for x in xs if x > 0.5)
            entry = {"label": m.label, "kind": "rate", "k": k, "n": n, "value": sum(xs) / n if n else None,
                     "ci95": None, "ci_method": None}
            if n and not multi:
                entry["ci95"], entry["ci_method"] = list(wilson(k, n)), "wilson"
            elif n:
                boot = boots.setdefault(n, PairedBootstrap(n))
                entry["ci95"], entry["ci_method"] = list(boot.interval(xs)), "bootstrap"
            summary[m.key] = entry
        else:
            summary[m.key] = {"label": m.label, "kind": "mean", "n": n, "value": sum(xs) / n if n else None}
    return summary


def paired(base_cases: list[dict], tuned_cases: list[dict]) -> dict:
    """Base vs tuned on the cases both answered: differences with paired bootstrap intervals; McNemar for rates."""
    base = {c["id"]: c["values"] for c in base_cases}
    tuned = {c["id"]: c["values"] for c in tuned_cases}
    ids = [cid for cid in tuned if cid in base]
    boot = PairedBootstrap(len(ids))
    out: dict[str, dict] = {}
    for m in MEASURES:
        diffs: list[float | None] = []
        b = c = 0
        for cid in ids:
            x, y = base[cid].get(m.key), tuned[cid].get(m.key)
            if x is None or y is None:
                diffs.append(None)
                continue
            diffs.append(float(y) - float(x))
            if m.kind == "rate":
                bx, by = x > 0.5, y > 0.5
                b += bx and not by
                c += by and not bx
        xs = [d for d in diffs if d is not None]
        entry: dict = {"label": m.label, "kind": m.kind, "n": len(xs), "diff": sum(xs) / len(xs) if xs else None,
                       "ci95": None}
        if xs:
            ci = boot.interval(diffs)
            entry["ci95"] = list(ci) if ci else None
        if m.kind == "rate":
            entry.update({"b": b, "c": c, "p_mcnemar": mcnemar_exact(b, c) if xs else None})
        out[m.key] = entry
    return {"n_pairs": len(ids), "only_base": len(base) - len(ids), "only_tuned": len(tuned) - len(ids),
            "resamples": boot.resamples, "seed": BOOTSTRAP_SEED, "measures": out}


def build_report(models: dict[str, dict], meta: dict, synonyms: Synonyms | None = None) -> dict:
    """``models``: name -> {"source": {...}, "rows": [answer rows]}; ``meta``: cases_file, sampling, ..."""
    built = {}
    for name, m in models.items():
        cases = score_rows(m["rows"], synonyms)
        built[name] = {"source": m["source"], "summary": aggregate(cases), "cases": cases}
    n_cases = max((len(m["cases"]) for m in built.values()), default=0)
    samples = max((c["n_samples"] for m in built.values() for c in m["cases"]), default=1)
    report = {"schema": SCHEMA, "disclaimer": DISCLAIMER, **meta, "n_cases": n_cases, "samples_per_case": samples,
              "synonyms": synonyms.sources if synonyms is not None else ["default"], "models": built}
    if "base" in built and "tuned" in built:
        report["paired"] = paired(built["base"]["cases"], built["tuned"]["cases"])
    from ..privacy.probe import report_section  # canaries planted, identifier rows trained on, probe.json

    if memorization := report_section(models, meta.get("probe_file")):
        report["memorization"] = memorization
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def _fmt(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry["kind"] == "rate":
        ci = entry.get("ci95")
        ci_s = f"; 95% CI {_pct(ci[0])}-{_pct(ci[1])}%" if ci else ""
        count = f"{entry['k']}/{entry['n']}" if entry.get("ci_method") == "wilson" else f"n={entry['n']}"
        return f"{100 * entry['value']:.1f}% ({count}{ci_s})"
    return f"{entry['value']:.2f}"


def _fmt_diff(entry: dict | None) -> str:
    if not entry or entry.get("diff") is None:
        return ""
    ci = entry.get("ci95")
    if entry["kind"] == "rate":
        s = f"{100 * entry['diff']:+.1f} pts"
        return s + (f" ({100 * ci[0]:+.1f} to {100 * ci[1]:+.1f})" if ci else "")
    s = f"{entry['diff']:+.2f}"
    return s + (f" ({ci[0]:+.2f} to {ci[1]:+.2f})" if ci else "")


def _fmt_p(entry: dict | None) -> str:
    if not entry or entry.get("p_mcnemar") is None:
        return ""
    return f"p = {entry['p_mcnemar']:.3g} (b={entry['b']}, c={entry['c']})"


def markdown(report: dict) -> str:
    models = report["models"]
    names = list(models)
    pair = report.get("paired")
    lines = [f"# medtui evaluation: {report['cases_file']}", "", f"> {DISCLAIMER}", ""]
    for name in names:
        src = models[name]["source"]
        demo = " (random weights: its numbers mean nothing)" if src.get("demo") else ""
        where = f"; answers from `{src['answers_file']}`" if src.get("answers_file") else ""
        lines.append(f"- **{name}**: {src.get('label', name)}{demo}; template `{src.get('template', 'unknown')}`{where}")
    k = report.get("samples_per_case", 1)
    per = f"; {k} samples per case" if k > 1 else ""
    sampling = f"; sampling {report['sampling']}" if report.get("sampling") else ""
    lines += ["", f"n = {report['n_cases']} cases{per}{sampling}.", ""]
    pace = report.get("pace") or {}
    if pace:
        lines += ["Pace (after loading): " + "; ".join(
            f"{name} {p['per_minute']:g} answers a minute ({p['answers']} in {p['seconds']:g} s, "
            + (f"{p['batch']} at a time)" if p.get("batch", 1) > 1 else "one at a time)")
            for name, p in pace.items()) + ".", ""]
    if pair:
        lines.append(f"Paired on {pair['n_pairs']} cases answered by both models"
                     + (f" ({pair['only_base']} base-only and {pair['only_tuned']} tuned-only cases left out of the "
                        "differences)" if pair["only_base"] or pair["only_tuned"] else "") + ".")
        lines.append("")
        header = "| measure | " + " | ".join(names) + " | difference (95% paired bootstrap CI) | McNemar exact |"
        lines += [header, "|" + "---|" * (len(names) + 3)]
    else:
        lines += ["| measure | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for m in MEASURES:
        if all((models[n]["summary"].get(m.key) or {}).get("n", 0) == 0 for n in names):
            continue  # e.g. no exam questions in this file
        row = f"| {m.label} | " + " | ".join(_fmt(models[n]["summary"].get(m.key)) for n in names)
        if pair:
            e = pair["measures"].get(m.key)
            row += f" | {_fmt_diff(e)} | {_fmt_p(e)}"
        lines.append(row + " |")
    if report.get("memorization"):
        from ..privacy.probe import section_lines

        lines += ["", *section_lines(report["memorization"])]
    lines += ["", "## Methods", "", f"- **cases**: {CASES_METHOD}"]
    lines += [f"- **{key}**: {v}" for key, v in METHODS.items()]
    lines += [
        "- **rates**: a rate counts only cases where the measure applies (diagnosis: cases with a reference; exam: "
        "multiple-choice cases; sections: not exam cases); with one sample per case its 95% interval is a Wilson score "
        "interval, with more a bootstrap percentile interval over cases",
        f"- **synonyms**: {', '.join(report.get('synonyms') or ['default'])} (a TSV file: one group of names for the "
        "same diagnosis a line, tab-separated)",
        "- **per case**: report.json lists every case with `diagnosis_match` (true, false, or null without a reference) "
        "and `diagnosis_tier` (the tier that matched, or why none did: no_diagnosis, too_many_candidates, negated, "
        "different)",
    ]
    if pair:
        lines += [f"- **{key}**: {v}" for key, v in STATS_METHODS.items() if key != "samples" or k > 1]
    if report.get("judge"):
        lines += ["- A judge model's verdicts are in their own section below, labelled as a model's, not a clinician's.",
                  ""]
    else:
        lines += ["- No judge model was used: whether a diagnosis is right beyond these rules, and whether a treatment "
                  "is feasible, need a clinician's review (`medtui review export` writes a blinded review pack).", ""]
    if report.get("clinician") or report.get("judge"):  # added by `medtui review import` / `review judge`
        from .review import review_markdown

        lines += review_markdown(report) + [""]
    return "\n".join(lines)


def write_report(report: dict, answers: dict[str, list[dict]], final: Path) -> Path:
    """Write report.json, report.md and answers-<model>.jsonl into ``final`` (a temp dir, then a rename).

    If ``final`` exists (``eval score --out DIR``), the files are replaced in it one by one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if not final.is_dir():
            from ..errors import UserError

            raise UserError(f"{final}: exists and is not a directory; give --out a directory")
        _keep_clinician_review(final / "report.json", report)
        for name, rows in answers.items():
            write_answers(final / f"answers-{name}.jsonl", rows)
        _write_text(final / "report.json", json.dumps(report, ensure_ascii=False, indent=2))
        _write_text(final / "report.md", markdown(report))
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".eval-", dir=final.parent))
    try:
        for name, rows in answers.items():
            write_answers(tmp / f"answers-{name}.jsonl", rows)
        (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        (tmp / "report.md").write_text(markdown(report), encoding="utf-8")
        os.chmod(tmp, 0o700)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _keep_clinician_review(old_path: Path, report: dict) -> None:
    """Scoring the same answers again into their report keeps the clinicians' and the judge model's judgements
    (`medtui review import`, `medtui review judge`); judgements of other answers are not carried over."""
    try:
        old = json.loads(old_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or not (old.get("clinician") or old.get("judge")):
        return

    def outputs(r: dict) -> dict:
        return {n: {c.get("id"): c.get("output") for c in m.get("cases") or []} for n, m in (r.get("models") or {}).items()}

    if outputs(old) == outputs(report):
        for key in ("clinician", "judge"):
            if old.get(key) and key not in report:
                report[key] = old[key]


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
