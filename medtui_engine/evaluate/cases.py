"""Reading an evaluation case file: JSONL, a JSON array, or CSV/TSV; three shapes of case.

* **flat case**: a question (field ``Question``, or question/case/input/instruction), optionally a
  ``reference_diagnosis`` (a name, names separated by ; or |, or a list) and a ``reference_answer``;
* **clinical record** (the CMB-Clin shape): ``description`` (the case) and ``QA_pairs``, a list of
  ``{"question", "solution"}``; each question is asked together with the description, one case per
  question (id ``<record id>-q<n>``). A question about the diagnosis (it says 诊断 other than in
  鉴别诊断/诊断依据) takes its reference diagnosis from its solution: the first sentence under the
  solution's 诊断 heading, else the solution's first sentence (after 诊断为/考虑为 when it says so),
  without parentheticals and up to the first comma.
  ``reference_diagnosis`` on the pair or the record overrides that;
* **multiple-choice exam** (the CMB-Exam shape): ``question``, ``option`` (or ``options``: an object
  of letter -> text, or a list, lettered A, B, ...; in CSV, columns A, B, ...) and ``answer``, the
  correct letter(s).

Anything else is a ``UserError`` naming the file, the row and the field, and what to do.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError
from ..sections import find_sections
from .matching import PARENTHETICAL

QUESTION_KEYS = ("Question", "question", "case", "input", "instruction")
REFERENCE_KEYS = ("reference_diagnosis", "diagnosis", "answer_diagnosis")
ANSWER_KEYS = ("reference_answer", "Response", "response", "answer")
RECORD_KEYS = ("QA_pairs", "qa_pairs")
DESCRIPTION_KEYS = ("description", "Description")
OPTION_KEYS = ("option", "options")
SOLUTION_KEYS = ("solution", "answer", "reference_answer")
LETTERS = "ABCDEFGH"
KINDS = ("flat", "clinical", "exam")

CLINICAL_PROMPT = "以下是一位病人的病例：\n{description}\n\n{question}"
EXAM_PROMPT = "{question}\n{options}\n请分析后给出答案，写明所选选项的字母。"

METHOD = (
    "flat cases are asked as written; each question of a clinical record (CMB-Clin shape) is asked together with the "
    "record's description, one case per question (id <record>-q<n>); a question asking for the diagnosis (诊断 other "
    "than in 鉴别诊断/诊断依据) takes its reference from the record's or pair's reference_diagnosis, else from its "
    "solution (the first sentence under its 诊断 heading, else its first sentence after 诊断为/考虑为; parentheticals "
    "dropped, up to the first comma); multiple-choice questions are asked with their lettered options and a request "
    "to name the letter(s)"
)

SHAPES_HELP = (
    "a flat case needs 'Question' (or question/case/input/instruction); a clinical record needs 'description' "
    "and 'QA_pairs' (a list of objects with 'question' and 'solution'); an exam question needs 'question', "
    "'option' (letter -> text) and 'answer' (the letter)"
)


@dataclass(frozen=True)
class EvalCase:
    id: str
    question: str                                  # what the model is asked (the whole prompt text)
    reference_diagnosis: list[str] | str | None
    reference_answer: str | None
    kind: str = "flat"                             # flat | clinical | exam
    record: str | None = None                      # clinical: the record's id; its title in `title`
    title: str | None = None
    exam_answer: str | None = None                 # exam: the correct letter(s), sorted
    options: dict[str, str] | None = None          # exam: letter -> text

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> EvalCase:
        """The inverse of :meth:`as_dict` (which leaves out what is None: an exam case has no reference)."""
        return cls(**{"reference_diagnosis": None, "reference_answer": None, **d})


def _first(rec: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in rec and rec[k] not in (None, ""):
            return rec[k]
    return None


def _first_key(rec: dict, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in rec), None)


def _rows(path: Path) -> list[tuple[int, dict]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such case file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; give a case file (JSONL, JSON or CSV)") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".csv" or suffix == ".tsv":
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        return [(i, dict(r)) for i, r in enumerate(reader, start=2)]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if isinstance(data, dict):  # one record, or {"data": [...]}
            data = next((v for v in data.values() if isinstance(v, list)), [data]) if len(data) == 1 else [data]
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON array of cases")
        return list(enumerate(data, start=1))
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {n} is not valid JSON ({exc.msg}); fix or remove that line") from None
    return rows


def is_diagnosis_question(question: str) -> bool:
    """"简述该病人的诊断及诊断依据" asks for the diagnosis; "鉴别诊断" and "诊断依据" alone do not."""
    return "诊断" in question.replace("鉴别诊断", "").replace("诊断依据", "")


_CUE = re.compile(r"(?:诊断为|诊断是|考虑为|考虑是|初步诊断|诊断)[:：]?")


def diagnosis_from_solution(solution: str) -> str | None:
    """The reference diagnosis a clinical record's solution gives (None when it gives none)."""
    span = find_sections(solution).spans.get("diagnosis")
    text = span.body(solution) if span is not None else solution
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    first = re.split(r"[。；;\n]", PARENTHETICAL.sub("", first))[0]
    cue = max(_CUE.finditer(first), key=lambda m: m.start(), default=None)
    if cue is not None and first[cue.end():].strip():
        first = first[cue.end():]
    first = re.split(r"[，,]", first)[0].strip(" ：:")
    return first or None


def _where(path: Path, row: int, field: str | None = None) -> str:
    return f"{path}: row {row}" + (f", field '{field}'" if field else "")


def _clinical(path: Path, row: int, rec: dict) -> list[EvalCase]:
    pairs_key = _first_key(rec, RECORD_KEYS)
    pairs = rec[pairs_key]
    desc = _first(rec, DESCRIPTION_KEYS)
    if not isinstance(desc, str) or not desc.strip():
        raise UserError(f"{_where(path, row, 'description')}: a clinical record needs the case description as text")
    if not isinstance(pairs, list) or not pairs:
        raise UserError(f"{_where(path, row, pairs_key)}: expected a non-empty list of "
                        "{\"question\": ..., \"solution\": ...} objects")
    record = str(rec.get("id") if rec.get("id") not in (None, "") else f"row-{row}")
    record_ref = _first(rec, REFERENCE_KEYS)
    cases = []
    for i, pair in enumerate(pairs, start=1):
        field = f"{pairs_key}[{i - 1}]"
        if not isinstance(pair, dict):
            raise UserError(f"{_where(path, row, field)}: expected an object with 'question' and 'solution'")
        q = pair.get("question")
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"{_where(path, row, field + '.question')}: every question/answer pair needs a question")
        solution = _first(pair, SOLUTION_KEYS)
        if solution is not None and not isinstance(solution, str):
            raise UserError(f"{_where(path, row, field + '.solution')}: expected text")
        ref = _first(pair, REFERENCE_KEYS)
        if ref is None and is_diagnosis_question(q):
            ref = record_ref if record_ref is not None else (diagnosis_from_solution(solution) if solution else None)
        cases.append(EvalCase(f"{record}-q{i}", CLINICAL_PROMPT.format(description=desc.strip(), question=q.strip()),
                              ref, solution, kind="clinical", record=record,
                              title=str(rec["title"]) if rec.get("title") else None))
    return cases


def _exam(path: Path, row: int, rec: dict, options_raw) -> EvalCase:
    okey = _first_key(rec, OPTION_KEYS) or "A"
    if isinstance(options_raw, dict):
        options = {str(k).strip().upper(): str(v).strip() for k, v in options_raw.items()
                   if v is not None and str(v).strip()}
    elif isinstance(options_raw, list):
        options = {LETTERS[i]: str(v).strip() for i, v in enumerate(options_raw[:len(LETTERS)])}
    else:
        raise UserError(f"{_where(path, row, okey)}: expected the options as an object of letter -> text "
                        "(or a list of texts, lettered A, B, ...)")
    if len(options) < 2 or not all(len(k) == 1 and k in LETTERS for k in options):
        raise UserError(f"{_where(path, row, okey)}: expected at least two options lettered A to H; got "
                        f"{', '.join(options) or 'none'}")
    q = _first(rec, QUESTION_KEYS)
    if not isinstance(q, str) or not q.strip():
        raise UserError(f"{_where(path, row, 'question')}: an exam question needs its question text")
    ans = rec.get("answer")
    letters = re.sub(r"[\s,，、]", "", str(ans or "")).upper()
    if not letters or not all(c in options for c in letters):
        raise UserError(f"{_where(path, row, 'answer')}: expected the correct option letter(s) out of "
                        f"{''.join(options)}; got {ans!r}")
    qtype = rec.get("question_type")
    head = f"（{qtype}）" + q.strip() if isinstance(qtype, str) and qtype.strip() else q.strip()
    prompt = EXAM_PROMPT.format(question=head, options="\n".join(f"{k}. {v}" for k, v in options.items()))
    return EvalCase(str(rec.get("id") if rec.get("id") not in (None, "") else f"row-{row}"), prompt, None, None,
                    kind="exam", exam_answer="".join(sorted(set(letters))), options=options)


def _csv_options(rec: dict) -> dict | None:
    cols = {k.strip().upper(): v for k, v in rec.items() if isinstance(k, str) and len(k.strip()) == 1}
    opts = {k: v for k, v in cols.items() if k in LETTERS and v not in (None, "")}
    return opts if len(opts) >= 2 and "answer" in rec else None


def case_from_record(path: Path, row: int, rec) -> list[EvalCase]:
    if not isinstance(rec, dict):
        raise UserError(f"{_where(path, row)}: is not an object with fields; {SHAPES_HELP}")
    if _first_key(rec, RECORD_KEYS):
        return _clinical(path, row, rec)
    okey = _first_key(rec, OPTION_KEYS)
    if okey is not None:
        return [_exam(path, row, rec, rec[okey])]
    csv_opts = _csv_options(rec)
    if csv_opts is not None:
        return [_exam(path, row, rec, csv_opts)]
    q = _first(rec, QUESTION_KEYS)
    if q is None:
        fields = ", ".join(repr(k) for k in list(rec)[:8]) or "none"
        raise UserError(f"{path}: row {row} has no question (field 'Question') and is no other shape of case "
                        f"(fields: {fields}); {SHAPES_HELP}")
    if not isinstance(q, str) or not q.strip():
        raise UserError(f"{_where(path, row, 'Question')}: the question must be non-empty text")
    ref = _first(rec, REFERENCE_KEYS)
    if ref is not None and not isinstance(ref, (str, list)):
        raise UserError(f"{_where(path, row, 'reference_diagnosis')}: expected a name or a list of names")
    return [EvalCase(str(rec.get("id") or f"row-{row}"), q.strip(), ref, _first(rec, ANSWER_KEYS))]


def load_eval_cases(path: Path, limit: int | None = None) -> list[EvalCase]:
    cases: list[EvalCase] = []
    seen: dict[str, int] = {}
    for row, rec in _rows(path):
        for case in case_from_record(path, row, rec):
            if case.id in seen:
                raise UserError(f"{_where(path, row, 'id')}: id {case.id!r} is already used by row {seen[case.id]}; "
                                "ids must be unique (base and tuned answers are paired by id)")
            seen[case.id] = row
            cases.append(case)
            if limit and len(cases) >= limit:
                return cases
    if not cases:
        raise UserError(f"{path}: no cases found")
    return cases
