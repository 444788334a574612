"""Aggregating case scores into the report: rates with 95% Wilson intervals, means, base vs tuned."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..notices import DISCLAIMER
from ..sections import SECTION_LABELS
from .scoring import BASIS_EXPECTED, DIFFERENTIAL_EXPECTED, F1_THRESHOLD, METHODS


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
    Measure("diagnosis_exact", "diagnosis: exact match", "rate"),
    Measure("diagnosis_contains", "diagnosis: containment match", "rate"),
    Measure("diagnosis_f1", f"diagnosis: char-F1 >= {F1_THRESHOLD}", "rate"),
    *(Measure(f"section_{k}", f"section present: {v}", "rate") for k, v in SECTION_LABELS.items()),
    Measure("all_sections", "all five sections", "rate"),
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


def case_values(case: dict) -> dict[str, float | bool | None]:
    """Flatten one scored case (score + stats) into the measures' keys."""
    s, st = case["score"], case["stats"]
    out: dict[str, float | bool | None] = {
        "diagnosis_exact": s["diagnosis_exact"],
        "diagnosis_contains": s["diagnosis_contains"],
        "diagnosis_f1": None if s["diagnosis_f1"] is None else s["diagnosis_f1"] >= F1_THRESHOLD,
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
    for k, present in s["sections"].items():
        out[f"section_{k}"] = present
    return out


def aggregate(cases: list[dict]) -> dict[str, dict]:
    values = [case_values(c) for c in cases]
    summary: dict[str, dict] = {}
    for m in MEASURES:
        xs = [v[m.key] for v in values if v.get(m.key) is not None]
        if m.kind == "rate":
            k, n = sum(bool(x) for x in xs), len(xs)
            lo, hi = wilson(k, n)
            summary[m.key] = {"label": m.label, "kind": "rate", "k": k, "n": n,
                              "value": k / n if n else None, "ci95": [lo, hi] if n else None}
        else:
            n = len(xs)
            summary[m.key] = {"label": m.label, "kind": "mean", "n": n, "value": sum(xs) / n if n else None}
    return summary


def _fmt(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry["kind"] == "rate":
        lo, hi = entry["ci95"]
        return f"{100 * entry['value']:.1f}% ({entry['k']}/{entry['n']}; 95% CI {100 * lo:.0f}-{100 * hi:.0f}%)"
    return f"{entry['value']:.2f}"


def _diff(a: dict | None, b: dict | None) -> str:
    if not a or not b or a.get("value") is None or b.get("value") is None:
        return ""
    d = b["value"] - a["value"]
    return f"{100 * d:+.1f} pts" if a["kind"] == "rate" else f"{d:+.2f}"


def markdown(report: dict) -> str:
    models = report["models"]
    names = list(models)
    lines = [f"# medtui evaluation: {report['cases_file']}", "", f"> {DISCLAIMER}", ""]
    for name in names:
        m = models[name]
        demo = " (random weights: its numbers mean nothing)" if m["source"].get("demo") else ""
        lines.append(f"- **{name}**: {m['source']['label']}{demo}; template `{m['source']['template']}`")
    lines += ["", f"n = {report['n_cases']} cases; sampling {report['sampling']}.", ""]
    header = "| measure | " + " | ".join(names) + (" | difference |" if len(names) == 2 else " |")
    lines += [header, "|" + "---|" * (len(names) + 1 + (1 if len(names) == 2 else 0))]
    for m in MEASURES:
        cells = [_fmt(models[n]["summary"].get(m.key)) for n in names]
        row = f"| {m.label} | " + " | ".join(cells)
        if len(names) == 2:
            row += " | " + _diff(models[names[0]]["summary"].get(m.key), models[names[1]]["summary"].get(m.key))
        lines.append(row + " |")
    lines += ["", "## Methods", ""]
    lines += [f"- **{k}**: {v}" for k, v in METHODS.items()]
    lines += ["- **rates**: 95% intervals are Wilson score intervals; diagnosis rates count only cases with a reference.",
              "- No judge model was used: diagnosis correctness beyond string matching and treatment feasibility "
              "need a clinician's review of the answers in report.json.", ""]
    return "\n".join(lines)
