"""Clinician review of an evaluation report: blinded answers out, clinicians' judgements back in.

``export_review`` writes a review pack (``review.html``, a self-contained page, and ``review.csv``, one row
per case to fill) and, into the report folder only, a private key that says which model is A and which is
B in each pair. A and B are drawn at random per case from a recorded seed; the pack never names a model.
``import_review`` reads a filled CSV, checks every row, un-blinds it with the key and adds the clinician's
columns to report.json and report.md: for each judgement and model the rate with n and a 95% interval, the
paired difference where both answers were judged, and the preference counts. Each imported CSV is one
reviewer; rates are given per reviewer and pooled over reviewers.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import random
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..notices import DISCLAIMER
from ..sections import split_think
from .answers import prompt_opened_think
from .report import _fmt, _fmt_diff, _fmt_p, _write_text, markdown, wilson
from .stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, PairedBootstrap, mcnemar_exact

KEY_PREFIX = "PRIVATE-review-key-"  # in the report folder, never in the pack
PACK_HTML, PACK_CSV = "review.html", "review.csv"


@dataclass(frozen=True)
class Judgement:
    key: str
    label: str
    asks: str   # the question the clinician answers yes or no
    seed_row: str  # the row of the seed's table it stands for


JUDGEMENTS: tuple[Judgement, ...] = (
    Judgement("diagnosis_correct", "diagnosis correct",
              "Is the suspected diagnosis right in substance (a synonym or a more specific name counts)?",
              "diagnostic accuracy"),
    Judgement("basis_complete", "basis complete",
              "Does the basis cite the case's findings that support the diagnosis (the format asks for 3 points)?",
              "completeness of diagnostic basis"),
    Judgement("differential_adequate", "differential adequate",
              "Are the differentials the ones a clinician would consider here, each with why it is less likely?",
              "coverage of differential diagnosis"),
    Judgement("treatment_feasible", "treatment feasible",
              "Is the treatment plan safe and could it be carried out as written (drugs, doses, timing)?",
              "feasibility of treatment plan"),
)
YES = ("y", "yes", "1", "true", "是")
NO = ("n", "no", "0", "false", "否")
PREFERENCES = ("A", "B", "tie")
ACCEPTED_YES_NO = "y or n (also yes/no, 1/0, 是/否), or blank for not judged"
ACCEPTED_PREFERENCE = "A, B or tie, or blank for no preference given"

METHOD = (
    "clinicians judged the answers blinded: each case's answers were shown as A and B in an order drawn at random per "
    "case (seeded; the seed is in the report folder's private key file), with no model named; each judgement is yes, "
    "no, or not judged (blank), and a rate counts only the answers judged. One imported CSV is one reviewer. "
    "Per reviewer, a rate's 95% interval is a Wilson score interval; pooled over several reviewers, a case's value is "
    f"the share of its reviewers who said yes, and the interval is a bootstrap percentile interval over cases "
    f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}). Differences (second model − first) use the cases "
    "where the same reviewer judged both answers: a paired bootstrap interval, and per reviewer McNemar's exact test. "
    "Preference: counts of cases where a reviewer preferred each model or called a tie; per reviewer a two-sided sign "
    "test on the cases with a preference. With k samples per case, the review shows each case's first sample."
)


def csv_columns(two: bool) -> list[str]:
    cols = ["pair_id", "case_id"]
    for side in ("A", "B") if two else ("A",):
        cols += [f"{side}_{j.key}" for j in JUDGEMENTS]
    if two:
        cols.append("preference")
    return cols + ["comment"]


# ---------------------------------------------------------------------------------------------- reading a report

def read_report(report_dir: Path) -> dict:
    report_dir = Path(report_dir)
    path = report_dir / "report.json"
    if not report_dir.is_dir():
        raise UserError(f"{report_dir}: no such report folder; give the folder `medtui eval` wrote (it holds report.json)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{report_dir}: no report.json here; give the folder `medtui eval` wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable report ({exc}); rescore the answers with `medtui eval score`") from None
    if not isinstance(report, dict) or not isinstance(report.get("models"), dict) or not report["models"]:
        raise UserError(f"{path}: no models in this report; rescore the answers with `medtui eval score`")
    if len(report["models"]) > 2:
        raise UserError(f"{path}: {len(report['models'])} models; a review compares at most two (A and B)")
    return report


def _opened_flags(report_dir: Path, name: str) -> dict[str, bool]:
    """Whether each case's prompt opened the think block, from the saved answers (sample 0)."""
    path = report_dir / f"answers-{name}.jsonl"
    flags: dict[str, bool] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("sample", 0) == 0 and "id" in row:
                flags[str(row["id"])] = prompt_opened_think(row)
    return flags


@dataclass
class ReviewCase:
    case_id: str
    question: str
    reference_diagnosis: object
    reference_answer: str | None
    answers: dict[str, tuple[str, str]] = field(default_factory=dict)  # model -> (think, visible answer)


def reviewable_cases(report_dir: Path, report: dict) -> list[ReviewCase]:
    """Every case that is not a multiple-choice question, in the report's order, with each model's answer."""
    out: dict[str, ReviewCase] = {}
    for name, model in report["models"].items():
        flags = _opened_flags(report_dir, name)
        for c in model.get("cases") or []:
            if c.get("kind") == "exam" or c.get("exam_answer") is not None:
                continue  # a letter: the report scores it; nothing for a clinician to judge
            cid = str(c["id"])
            rc = out.setdefault(cid, ReviewCase(cid, c.get("question") or "", c.get("reference_diagnosis"),
                                                c.get("reference_answer")))
            output = c.get("output") or ""
            opened = flags.get(cid, prompt_opened_think({"answer": output}))
            split = split_think(output, prompt_opened_think=opened)
            rc.answers[name] = (split.think, split.answer)
    return list(out.values())


# ------------------------------------------------------------------------------------------------------ export

@dataclass(frozen=True)
class ExportResult:
    pack_dir: Path
    html: Path
    csv: Path
    key: Path
    tag: str
    seed: int
    n_cases: int
    n_pairs: int
    n_single: int


def _tag(seed: int, ids: list[str], models: list[str]) -> str:
    return hashlib.sha256(json.dumps([seed, ids, models]).encode()).hexdigest()[:6]


def assign(cases: list[ReviewCase], models: list[str], seed: int) -> tuple[str, dict[str, dict]]:
    """pair id -> {case_id, A, B}: the order of a case's two answers drawn from ``random.Random(seed)``."""
    rng = random.Random(seed)
    tag = _tag(seed, [c.case_id for c in cases], models)
    pairs = {}
    for i, c in enumerate(cases, start=1):
        have = [m for m in models if m in c.answers]
        if len(have) == 2:
            flip = rng.random() < 0.5
            a, b = (have[1], have[0]) if flip else (have[0], have[1])
        else:
            rng.random()  # one draw a case either way, so a case's order depends only on the seed and its place
            a, b = have[0], None
        pairs[f"{tag}-{i:03d}"] = {"case_id": c.case_id, "A": a, "B": b}
    return tag, pairs


def _e(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


_CSS = """
:root { --ink:#1d2329; --muted:#5b6570; --line:#c9d0d6; --soft:#f3f5f7; --accent:#24598f; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", "Noto Sans SC", "Microsoft YaHei",
       sans-serif; color: var(--ink); margin: 0 auto; max-width: 1320px; padding: 24px 28px 60px; line-height: 1.5;
       font-size: 15px; }
h1 { font-size: 24px; margin: 0 0 4px; }
.sub { color: var(--muted); margin: 0 0 14px; }
.disclaimer { border-left: 4px solid #b35c00; background: #fff6ec; padding: 8px 12px; margin: 0 0 16px; }
.howto { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 16px;
         margin-bottom: 26px; }
.howto h2 { font-size: 16px; margin: 6px 0; }
.howto table { border-collapse: collapse; margin: 6px 0 8px; }
.howto td, .howto th { border-top: 1px solid var(--line); padding: 3px 10px 3px 0; text-align: left;
                       vertical-align: top; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px;
       background: #e8ecef; padding: 0 4px; border-radius: 3px; }
.case { border: 1px solid var(--line); border-radius: 8px; margin: 0 0 28px; page-break-inside: avoid;
        break-inside: avoid; }
.case > header { background: var(--soft); border-bottom: 1px solid var(--line); padding: 8px 14px;
                 display: flex; gap: 18px; flex-wrap: wrap; align-items: baseline; border-radius: 8px 8px 0 0; }
.case > header .num { font-weight: 700; font-size: 17px; }
.case > header .ids { color: var(--muted); }
.body { padding: 10px 14px 14px; }
.label { font-size: 12px; font-weight: 700; letter-spacing: .04em; text-transform: uppercase; color: var(--muted);
         margin: 8px 0 2px; }
.question { white-space: pre-wrap; }
.reference { background: #eef5ee; border: 1px solid #c6dcc6; border-radius: 6px; padding: 6px 10px; margin-top: 8px; }
.reference .text { white-space: pre-wrap; font-size: 14px; }
.answers { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; margin-top: 12px; }
.answers.single { grid-template-columns: 1fr; }
.answer { border: 1px solid var(--line); border-radius: 6px; display: flex; flex-direction: column; min-width: 0; }
.answer h3 { margin: 0; padding: 6px 10px; font-size: 16px; background: #e7eef6; color: var(--accent);
             border-bottom: 1px solid var(--line); border-radius: 6px 6px 0 0; }
.answer .text { white-space: pre-wrap; overflow-wrap: anywhere; padding: 8px 10px; flex: 1; font-size: 14.5px; }
.answer .empty { color: #9a2b2b; font-style: italic; }
details { padding: 0 10px 6px; color: var(--muted); font-size: 13px; }
details pre { white-space: pre-wrap; overflow-wrap: anywhere; font-family: inherit; margin: 4px 0; }
table.judge { border-collapse: collapse; width: 100%; border-top: 1px solid var(--line); font-size: 14px; }
table.judge td { padding: 4px 10px; border-bottom: 1px solid #e3e7ea; }
table.judge td.col { color: var(--muted); font-size: 11.5px; text-align: right; white-space: nowrap; }
.box { display: inline-block; width: 13px; height: 13px; border: 1.5px solid var(--ink); border-radius: 2px;
       vertical-align: -2px; margin: 0 4px 0 10px; }
.choice { white-space: nowrap; }
.verdict { margin-top: 12px; border-top: 1px dashed var(--line); padding-top: 8px; display: flex; gap: 30px;
           flex-wrap: wrap; }
.line { display: inline-block; min-width: 420px; border-bottom: 1px solid var(--ink); height: 1.2em; }
@media print { body { padding: 0; font-size: 12px; } .case { margin-bottom: 14px; } details { display: none; } }
"""


def _judge_table(side: str) -> str:
    rows = "".join(
        f'<tr><td title="{_e(j.asks)}">{_e(j.label)}</td>'
        f'<td class="choice"><span class="box"></span>yes<span class="box"></span>no</td>'
        f'<td class="col"><code>{_e(side)}_{_e(j.key)}</code></td></tr>'
        for j in JUDGEMENTS)
    return f'<table class="judge">{rows}</table>'


def _reference(c: ReviewCase) -> str:
    ref = c.reference_diagnosis
    parts = []
    if ref:
        names = " / ".join(ref) if isinstance(ref, list) else str(ref)
        parts.append(f'<div><b>Reference diagnosis:</b> {_e(names)}</div>')
    if c.reference_answer:
        parts.append(f'<div class="label">Reference answer</div><div class="text">{_e(c.reference_answer)}</div>')
    if not parts:
        return ""
    return f'<div class="reference">{"".join(parts)}</div>'


def _answer_block(side: str, think: str, answer: str) -> str:
    text = (f'<div class="text">{_e(answer)}</div>' if answer.strip()
            else '<div class="text empty">(no answer after the reasoning: the output stopped inside it)</div>')
    reasoning = (f"<details><summary>reasoning before the answer ({len(think)} characters)</summary>"
                 f"<pre>{_e(think)}</pre></details>" if think else "")
    return f'<section class="answer"><h3>Answer {side}</h3>{text}{reasoning}{_judge_table(side)}</section>'


def render_html(cases: list[ReviewCase], pairs: dict[str, dict], tag: str, samples: int) -> str:
    two = any(p["B"] for p in pairs.values())
    n_pairs = sum(1 for p in pairs.values() if p["B"])
    by_id = {c.case_id: c for c in cases}
    intro = (f"{len(pairs)} cases, each with two answers labelled A and B in an order drawn at random per case; "
             "the models are not named." if two else f"{len(pairs)} cases, each with one answer (A).")
    if two and n_pairs < len(pairs):
        k = len(pairs) - n_pairs
        intro += f" {k} case{' has' if k == 1 else 's have'} one answer only (A)."
    jrows = "".join(f"<tr><td><b>{_e(j.label)}</b></td><td>{_e(j.asks)}</td><td><code>A_{_e(j.key)}</code>"
                    + (f" <code>B_{_e(j.key)}</code>" if two else "") + "</td></tr>" for j in JUDGEMENTS)
    pref = (f"<tr><td><b>preference</b></td><td>Which answer would you rather a colleague gave? A, B, or tie.</td>"
            f"<td><code>preference</code>: {_e(ACCEPTED_PREFERENCE)}</td></tr>" if two else "")
    first_sample = (f"<p>Each case was answered {samples} times; the page shows the first answer.</p>"
                    if samples > 1 else "")
    howto = (
        '<div class="howto"><h2>How to fill it in</h2>'
        f"<p>Judge each answer on its own against the case and the reference. Fill in <code>{PACK_CSV}</code> "
        "(one row per case, matched by its pair id), or mark this page on paper and have the answers typed into the "
        f"CSV. Yes/no columns take {_e(ACCEPTED_YES_NO)}. Leave blank what you did not judge. Do not change the "
        "<code>pair_id</code> and <code>case_id</code> columns.</p>"
        f"<table><tr><th>judgement</th><th>the question</th><th>CSV columns</th></tr>{jrows}{pref}"
        f"<tr><td><b>comment</b></td><td>anything worth saying (free text)</td><td><code>comment</code></td></tr>"
        f"</table>{first_sample}</div>")
    blocks = []
    for i, (pid, p) in enumerate(pairs.items(), start=1):
        c = by_id[p["case_id"]]
        sides = [("A", p["A"])] + ([("B", p["B"])] if p["B"] else [])
        answers = "".join(_answer_block(side, *c.answers[m]) for side, m in sides)
        verdict = ('<div class="verdict"><span><b>Preference</b><span class="box"></span>A<span class="box"></span>B'
                   '<span class="box"></span>tie</span>' if p["B"] else '<div class="verdict">')
        verdict += '<span><b>Comment</b> <span class="line"></span></span></div>'
        blocks.append(
            f'<article class="case" id="{_e(pid)}"><header><span class="num">Case {i} of {len(pairs)}</span>'
            f'<span class="ids">pair <code>{_e(pid)}</code> · case <code>{_e(c.case_id)}</code></span></header>'
            f'<div class="body"><div class="label">Case</div><div class="question">{_e(c.question)}</div>'
            f'{_reference(c)}<div class="answers{"" if p["B"] else " single"}">{answers}</div>{verdict}</div>'
            "</article>")
    return ("<!DOCTYPE html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Clinician review {_e(tag)}</title><style>{_CSS}</style></head><body>"
            f"<h1>Clinician review</h1><p class=\"sub\">Review pack <code>{_e(tag)}</code> · {_e(intro)}</p>"
            f'<p class="disclaimer">{_e(DISCLAIMER)}</p>{howto}{"".join(blocks)}</body></html>\n')


def render_csv(pairs: dict[str, dict]) -> str:
    two = any(p["B"] for p in pairs.values())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    cols = csv_columns(two)
    w.writerow(cols)
    for pid, p in pairs.items():
        w.writerow([pid, p["case_id"]] + [""] * (len(cols) - 2))
    return buf.getvalue()


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def export_review(report_dir: Path, out_dir: Path | None = None, seed: int | None = None) -> ExportResult:
    """Write the review pack (``out_dir``, default ``<report>/review``) and the private key (in the report folder)."""
    report_dir = Path(report_dir)
    report = read_report(report_dir)
    models = list(report["models"])
    cases = reviewable_cases(report_dir, report)
    if not cases:
        raise UserError(f"{report_dir}: no case to review (multiple-choice questions are scored, not reviewed)")
    if seed is None:
        seed = secrets.randbelow(2 ** 31)
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed must be a whole number from 0, got {seed}")
    out = Path(out_dir) if out_dir is not None else report_dir / "review"
    if out.resolve() == report_dir.resolve():
        raise UserError(f"{out}: give the review pack a folder of its own; the report folder holds the key that "
                        "un-blinds it, and the pack is what reviewers receive")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; give --out a folder")
    tag, pairs = assign(cases, models, seed)
    key = {"schema": 1, "export": tag, "seed": seed, "created": time.time(), "models": models,
           "note": "This file un-blinds the review (which model is A and which is B). Keep it with the report; "
                   "never send it to reviewers.",
           "pairs": pairs}
    key_path = report_dir / f"{KEY_PREFIX}{tag}.json"
    _write_private(key_path, json.dumps(key, ensure_ascii=False, indent=2))  # before the pack: no pack without its key
    page = render_html(cases, pairs, tag, int(report.get("samples_per_case") or 1))
    sheet = render_csv(pairs)
    if out.exists():
        _write_text(out / PACK_HTML, page)
        _write_bom_csv(out / PACK_CSV, sheet)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".review-", dir=out.parent))
        try:
            (tmp / PACK_HTML).write_text(page, encoding="utf-8")
            _write_bom_csv(tmp / PACK_CSV, sheet)
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    n_pairs = sum(1 for p in pairs.values() if p["B"])
    return ExportResult(out, out / PACK_HTML, out / PACK_CSV, key_path, tag, seed, len(pairs), n_pairs,
                        len(pairs) - n_pairs)


def _write_bom_csv(path: Path, text: str) -> None:
    """UTF-8 with a byte-order mark, so spreadsheet programs read the Chinese case ids right."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8-sig", newline="")
    os.replace(tmp, path)


def export_message(r: ExportResult) -> str:
    what = (f"{r.n_cases} cases: {r.n_pairs} pairs labelled A/B at random per case"
            + (f", {r.n_single} with one answer" if r.n_single else "") if r.n_pairs
            else f"{r.n_cases} cases, one answer each")
    return "\n".join([
        f"review pack {r.tag}: {r.html} and {r.csv} ({what}; no model named)",
        f"unblinding key (seed {r.seed}): {r.key}: keep it with the report; never send it to reviewers",
        f"send reviewers the pack folder only; then: medtui review import {r.key.parent} FILLED.csv",
    ])


# ------------------------------------------------------------------------------------------------------ import

def _load_key(report_dir: Path, tag: str, csv_path: Path) -> dict:
    path = report_dir / f"{KEY_PREFIX}{tag}.json"
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{csv_path}: its pair ids come from review pack {tag}, and {report_dir} has no key for that "
                        f"pack ({path.name}); import it into the report it was exported from") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: the key file is damaged; export a new review pack") from None
    return key


def _yes_no(value: str) -> bool | None:
    v = value.strip().lower()
    if not v:
        return None
    if v in YES:
        return True
    if v in NO:
        return False
    raise ValueError


def _preference(value: str) -> str | None:
    v = value.strip()
    if not v:
        return None
    for p in PREFERENCES:
        if v.lower() == p.lower():
            return p
    raise ValueError


def _decode(raw: bytes, path: Path) -> str:
    """UTF-8 (with or without a byte-order mark), UTF-16 with one, or GB18030 (spreadsheets' "CSV" in Chinese locales)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UserError(f"{path}: not readable text; save the CSV as UTF-8 (\"CSV UTF-8\" in spreadsheet programs)")


def read_filled_csv(report_dir: Path, csv_path: Path) -> tuple[dict, dict[str, dict]]:
    """Check every row of a filled review CSV; return the key and, per case, the un-blinded judgements."""
    csv_path = Path(csv_path)
    try:
        raw = csv_path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{csv_path}: no such file; give the filled review CSV") from None
    except IsADirectoryError:
        raise UserError(f"{csv_path}: is a folder; give the filled review CSV") from None
    text = _decode(raw, csv_path)
    head = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=head.count)  # spreadsheets in some locales save with ';'
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise UserError(f"{csv_path}: not a readable CSV ({exc})") from None
    numbered = [(n, r) for n, r in enumerate(records, start=1) if any(cell.strip() for cell in r)]  # as spreadsheets count
    if not numbered:
        raise UserError(f"{csv_path}: empty; fill in the review CSV from the review pack")
    header_row, header = numbered[0][0], [h.strip() for h in numbered[0][1]]
    if "pair_id" not in header:
        raise UserError(f"{csv_path}: row {header_row} has no column 'pair_id'; this is not a review CSV from "
                        "`medtui review export` (keep its header row)")
    pid_col = header.index("pair_id")
    first_row, first = next(((n, r[pid_col].strip()) for n, r in numbered[1:] if len(r) > pid_col and r[pid_col].strip()),
                            (header_row + 1, ""))
    m = re.fullmatch(r"([0-9a-f]{6})-\d{3,}", first)
    if not m:
        raise UserError(f"{csv_path}: row {first_row}, column 'pair_id': {first!r} is not a pair id from `medtui review "
                        "export` (like 3fa9c1-001); keep the pair_id column as exported")
    key = _load_key(Path(report_dir), m.group(1), csv_path)
    pairs = key["pairs"]
    two = any(p.get("B") for p in pairs.values())
    expected = csv_columns(two)
    for i, h in enumerate(header):
        if h and h not in expected:
            raise UserError(f"{csv_path}: row {header_row}, column {i + 1} {h!r} is not a review column; the columns are "
                            f"{', '.join(expected)}")
    missing = [c for c in expected if c not in header]
    if missing:
        raise UserError(f"{csv_path}: row {header_row} has no column {missing[0]!r}; keep the header row as exported "
                        f"({', '.join(expected)})")
    col = {h: i for i, h in enumerate(header) if h}
    seen: dict[str, int] = {}
    judged: dict[str, dict] = {}
    for n, r in numbered[1:]:
        r = r + [""] * (len(header) - len(r))
        extra = [cell for i, cell in enumerate(r) if (i >= len(header) or not header[i]) and cell.strip()]
        if extra:
            raise UserError(f"{csv_path}: row {n} has a value outside the review columns ({extra[0]!r}); put it in "
                            "'comment'")
        pid = r[col["pair_id"]].strip()
        where = f"{csv_path}: row {n}"
        if pid not in pairs:
            raise UserError(f"{where}, column 'pair_id': unknown pair id {pid!r} (not in review pack {key['export']}); "
                            "keep the pair_id column as exported")
        if pid in seen:
            raise UserError(f"{where}, column 'pair_id': pair {pid} is also on row {seen[pid]}; keep one row per pair")
        seen[pid] = n
        pair = pairs[pid]
        if r[col["case_id"]].strip() != pair["case_id"]:
            raise UserError(f"{where}, column 'case_id': {r[col['case_id']].strip()!r} is not the case of pair {pid} "
                            f"({pair['case_id']!r}); keep the pair_id and case_id columns as exported")
        entry: dict = {"A": pair["A"], "answers": {}, "preference": None, "comment": r[col["comment"]].strip()}
        for side in ("A", "B") if two else ("A",):
            model = pair.get(side)
            values = {}
            for j in JUDGEMENTS:
                c = f"{side}_{j.key}"
                try:
                    v = _yes_no(r[col[c]])
                except ValueError:
                    raise UserError(f"{where}, column {c!r}: {r[col[c]].strip()!r} is not accepted; use "
                                    f"{ACCEPTED_YES_NO}") from None
                if v is not None and model is None:
                    raise UserError(f"{where}, column {c!r}: this case has one answer (A); leave the B columns blank")
                if v is not None:
                    values[j.key] = v
            if model is not None and values:
                entry["answers"][model] = values
        if two:
            try:
                p = _preference(r[col["preference"]])
            except ValueError:
                raise UserError(f"{where}, column 'preference': {r[col['preference']].strip()!r} is not accepted; use "
                                f"{ACCEPTED_PREFERENCE}") from None
            if p is not None and not pair.get("B"):
                raise UserError(f"{where}, column 'preference': this case has one answer (A); leave it blank")
            if p is not None:
                entry["preference"] = "tie" if p == "tie" else pair[p]
        if entry["answers"] or entry["preference"] or entry["comment"]:
            judged[pair["case_id"]] = entry
    if not any(e["answers"] or e["preference"] for e in judged.values()):
        raise UserError(f"{csv_path}: no judgement in it (every judgement column is blank); fill it in first")
    return key, judged


def _rate(xs: list[float], boot_ok: bool) -> dict:
    """A rate over cases: Wilson when every value is 0 or 1 (one reviewer), else a bootstrap over cases."""
    n = len(xs)
    k = sum(1 for x in xs if x > 0.5)
    entry = {"kind": "rate", "k": k, "n": n, "value": sum(xs) / n if n else None, "ci95": None, "ci_method": None}
    if not n:
        return entry
    if not boot_ok:
        entry["ci95"], entry["ci_method"] = list(wilson(k, n)), "wilson"
    else:
        ci = PairedBootstrap(n).interval(xs)
        entry["ci95"], entry["ci_method"] = (list(ci) if ci else None), "bootstrap"
    return entry


def _case_means(reviewers: dict[str, dict], model: str, key: str) -> dict[str, float]:
    """case -> share of its reviewers who said yes (only reviewers who judged it)."""
    acc: dict[str, list[float]] = {}
    for rv in reviewers.values():
        for cid, e in rv["cases"].items():
            v = e["answers"].get(model, {}).get(key)
            if v is not None:
                acc.setdefault(cid, []).append(float(v))
    return {cid: sum(v) / len(v) for cid, v in acc.items()}


def _case_diffs(reviewers: dict[str, dict], first: str, second: str, key: str) -> tuple[dict[str, float], int, int]:
    """case -> mean over reviewers who judged both answers of (second − first); discordant counts b, c."""
    acc: dict[str, list[float]] = {}
    b = c = 0
    for rv in reviewers.values():
        for cid, e in rv["cases"].items():
            x, y = e["answers"].get(first, {}).get(key), e["answers"].get(second, {}).get(key)
            if x is None or y is None:
                continue
            acc.setdefault(cid, []).append(float(y) - float(x))
            b += x and not y
            c += y and not x
    return {cid: sum(v) / len(v) for cid, v in acc.items()}, b, c


def summarise(reviewers: dict[str, dict], models: list[str], who: str = "clinician") -> dict:
    """Rates, paired differences and preferences for a set of reviewers (one reviewer: per-reviewer figures);
    ``who`` labels the columns (a clinician's, or the judge model's)."""
    single = len(reviewers) == 1
    out: dict = {"n_reviewers": len(reviewers), "models": {}, "paired": None, "preference": None}
    for m in models:
        out["models"][m] = {j.key: {"label": f"{who}: {j.label}", **_rate(list(_case_means(reviewers, m, j.key).values()),
                                                                              not single)}
                            for j in JUDGEMENTS}
    if len(models) == 2:
        first, second = models
        paired = {}
        for j in JUDGEMENTS:
            diffs, b, c = _case_diffs(reviewers, first, second, j.key)
            xs = list(diffs.values())
            entry = {"label": f"{who}: {j.label}", "kind": "rate", "n": len(xs),
                     "diff": sum(xs) / len(xs) if xs else None, "ci95": None}
            if xs:
                ci = PairedBootstrap(len(xs)).interval(xs)
                entry["ci95"] = list(ci) if ci else None
            if single:
                entry.update({"b": b, "c": c, "p_mcnemar": mcnemar_exact(b, c) if xs else None})
            paired[j.key] = entry
        out["paired"] = {"first": first, "second": second, "measures": paired}
        counts = {first: 0, second: 0, "tie": 0}
        for rv in reviewers.values():
            for e in rv["cases"].values():
                if e.get("preference") in counts:
                    counts[e["preference"]] += 1
        pref = {"counts": counts, "n": sum(counts.values())}
        if single:
            decided = counts[first] + counts[second]
            pref["p_sign_test"] = mcnemar_exact(counts[first], counts[second]) if decided else None
        out["preference"] = pref
    return out


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class ImportResult:
    report_dir: Path
    reviewer: str
    csv: Path
    n_cases: int        # cases with any judgement
    n_judgements: int
    replaced: bool
    reviewers: list[str]
    report: dict


def import_review(report_dir: Path, filled_csv: Path, reviewer: str | None = None,
                  replace: bool = False) -> ImportResult:
    """Add one reviewer's filled CSV to the report (report.json and report.md); the CSV is only read.

    ``reviewer`` defaults to the CSV's file name (without .csv). Importing the same file again changes nothing;
    a different file under a name already imported needs ``replace=True`` (or another name)."""
    report_dir, filled_csv = Path(report_dir), Path(filled_csv)
    report = read_report(report_dir)
    key, judged = read_filled_csv(report_dir, filled_csv)
    models = list(report["models"])
    if any(m not in models for m in key.get("models", [])):
        raise UserError(f"{filled_csv}: review pack {key['export']} was exported for models {key['models']}, and this "
                        f"report has {models}; import it into the report it was exported from")
    name = (reviewer if reviewer is not None else filled_csv.stem).strip()
    if not name or len(name) > 80 or any(ch in name for ch in "\r\n\t"):
        raise UserError(f"reviewer name {name!r}: give a short name on one line (--reviewer NAME)")
    digest = _sha256(filled_csv.read_bytes())
    clinician = report.get("clinician") or {"reviewers": {}}
    old = clinician["reviewers"].get(name)
    replaced = False
    if old is not None and old.get("sha256") != digest:
        if not replace:
            raise UserError(f"{filled_csv}: reviewer {name!r} was already imported from another file ({old.get('file')}); "
                            "give a second reviewer another name (--reviewer NAME), or --replace to replace their "
                            "judgements")
        replaced = True
    clinician["reviewers"][name] = {"file": str(filled_csv.resolve()), "sha256": digest, "export": key["export"],
                                    "imported": time.time(), "cases": judged,
                                    **summarise({name: {"cases": judged}}, models)}
    clinician["pooled"] = summarise(clinician["reviewers"], models)
    clinician["method"] = METHOD
    clinician["judgements"] = {j.key: {"label": j.label, "asks": j.asks, "seed_row": j.seed_row} for j in JUDGEMENTS}
    report["clinician"] = clinician
    _write_text(report_dir / "report.json", json.dumps(report, ensure_ascii=False, indent=2))
    _write_text(report_dir / "report.md", markdown(report))
    n_j = sum(len(v) for e in judged.values() for v in e["answers"].values())
    n_cases = sum(1 for e in judged.values() if e["answers"] or e["preference"])
    return ImportResult(report_dir, name, filled_csv, n_cases, n_j, replaced, list(clinician["reviewers"]), report)


# ----------------------------------------------------------------------------------------------- in the report

def _pref_line(pref: dict | None) -> str:
    if not pref or not pref["n"]:
        return ""
    counts = ", ".join(f"{k} {v}" for k, v in pref["counts"].items())
    p = pref.get("p_sign_test")
    return f"preferred: {counts} (n = {pref['n']}" + (f"; sign test p = {p:.3g}" if p is not None else "") + ")"


def _table(block: dict, models: list[str], who: str = "clinician") -> list[str]:
    pair = block.get("paired")
    if pair:
        lines = ["| judgement | " + " | ".join(models) + " | difference (95% paired bootstrap CI) | McNemar exact |",
                 "|" + "---|" * (len(models) + 3)]
    else:
        lines = ["| judgement | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 1)]
    for j in JUDGEMENTS:
        row = f"| {who}: {j.label} | " + " | ".join(_fmt(block["models"][m][j.key]) for m in models)
        if pair:
            e = pair["measures"][j.key]
            row += f" | {_fmt_diff(e)} (n={e['n']}) | {_fmt_p(e)}" if e["diff"] is not None else " | | "
        lines.append(row + " |")
    pref = _pref_line(block.get("preference"))
    return lines + ([f"\n{pref}"] if pref else [])


def clinician_markdown(report: dict, per_reviewer: bool = True) -> list[str]:
    """The report's clinician section (report.md), from report['clinician'] (``per_reviewer``: each reviewer's
    tables after the pooled one, and the methods)."""
    cl = report.get("clinician")
    if not cl or not cl.get("reviewers"):
        return []
    models = list(report["models"])
    reviewers = cl["reviewers"]
    lines = ["", "## Clinician review", ""]
    lines += [f"- reviewer **{name}**: {sum(1 for e in r['cases'].values() if e['answers'] or e['preference'])} cases "
              f"judged, review pack {r['export']}, from `{Path(r['file']).name}`" for name, r in reviewers.items()]
    lines.append("")
    if len(reviewers) > 1:
        lines += [f"Pooled over {len(reviewers)} reviewers (a case's value: the share of its reviewers who said yes):", ""]
    lines += _table(cl["pooled"], models)
    if not per_reviewer:
        return lines
    if len(reviewers) > 1:
        for name, r in reviewers.items():
            lines += ["", f"Reviewer {name}:", ""] + _table(r, models)
    lines += ["", f"- **clinician review**: {cl['method']}"]
    lines += [f"- **{j['label']}** (the seed's {j['seed_row']}): {j['asks']}" for j in cl["judgements"].values()]
    return lines


def judge_markdown(report: dict, methods: bool = True) -> list[str]:
    """The report's judge-model section, from report['judge']: always labelled as a model's, apart from clinicians."""
    jb = report.get("judge")
    if not jb or not jb.get("judges"):
        return []
    models = list(report["models"])
    lines = ["", "## Judge model (a model's opinion, not a clinician's)", ""]
    for label, j in jb["judges"].items():
        demo = " (random weights: its verdicts mean nothing)" if j["model"].get("demo") else ""
        rubric = f"rubric `{Path(j['rubric_file']).name}`" if j.get("rubric_file") else "the default rubric"
        lines += [f"Judge **{label}**{demo}, {rubric}: {j['answers']} answers read, {j['verdicts_missing']} verdicts "
                  "missing from its outputs (not judged).", ""]
        lines += _table(j, models, who="judge") + [""]
    if methods:
        lines.append(f"- **judge model**: {jb['method']}")
    return lines


def review_markdown(report: dict) -> list[str]:
    """What `medtui review` adds to report.md: the clinicians' section, then the judge model's."""
    return clinician_markdown(report) + judge_markdown(report)


def import_message(r: ImportResult) -> str:
    verb = "replaced" if r.replaced else "imported"
    lines = [f"{verb} reviewer {r.reviewer!r} from {r.csv}: {r.n_judgements} judgements on {r.n_cases} cases "
             f"(reviewers now: {', '.join(r.reviewers)})"]
    lines += clinician_markdown(r.report, per_reviewer=False) + [""]
    lines.append(f"report: {r.report_dir}/report.md and report.json")
    return "\n".join(lines)
