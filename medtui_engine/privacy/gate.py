"""The identifier gate: training refuses data with possible patient identifiers unless the file was
redacted or the user acknowledged each kind found. Also what a run records about its data (the
audit): the file's sha256, its row counts, identifier counts by kind and the gate's decision.
Never a value: only kinds and counts.

    audit = check_run_data(spec)          # UserError: mapping, no rows; IdentifierGate: refused
    audit.as_dict()                       # recorded in spec.json ("data_audit") and data.json
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..dataset.findings import IDENTIFIER_KINDS
from ..dataset.identifiers import find_identifiers
from ..errors import UserError

# The typed placeholder for each kind (what `medtui redact` writes in place of a value).
PLACEHOLDERS: dict[str, str] = {
    "id_number": "[身份证号]",
    "phone_number": "[手机号]",
    "email": "[邮箱]",
    "record_number": "[病历号]",
    "name_field": "[姓名]",
}
assert set(PLACEHOLDERS) == set(IDENTIFIER_KINDS)

# kind -> (one, many): how a count reads
KIND_NOUNS: dict[str, tuple[str, str]] = {
    "id_number": ("resident ID number", "resident ID numbers"),
    "phone_number": ("mobile number", "mobile numbers"),
    "email": ("e-mail address", "e-mail addresses"),
    "record_number": ("record number", "record numbers"),
    "name_field": ("patient name", "patient names"),
}

# the gate's decisions
CLEAN = "clean"                # no possible identifier found
REDACTED = "redacted"          # none found, and the file holds redaction placeholders
ACKNOWLEDGED = "acknowledged"  # identifiers found, every kind acknowledged by the user

FIELDS = ("question", "cot", "response")


def parse_kinds(text: str | Iterable[str] | None) -> list[str]:
    """``"id_number, phone_number"`` -> the kinds, in the detector's order; unknown names kept out
    (the setting's own check refuses them)."""
    if not text:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    wanted = {p.strip() for p in parts if p and p.strip()}
    return [k for k in IDENTIFIER_KINDS if k in wanted]


def kinds_ok(text: str) -> bool:
    """Every comma-separated name is a kind the detector knows (the empty text too)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    return all(p in IDENTIFIER_KINDS for p in parts)


def counts_phrase(counts: dict[str, int]) -> str:
    """``{"id_number": 2, "email": 1}`` -> ``2 resident ID numbers, 1 e-mail address``."""
    parts = []
    for kind in IDENTIFIER_KINDS:
        n = counts.get(kind, 0)
        if n:
            one, many = KIND_NOUNS[kind]
            parts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(parts) if parts else "none"


def scan_texts(rows: Iterable[Iterable[str]]) -> tuple[dict[str, int], int, dict[str, int]]:
    """Identifier counts by kind, rows holding any, and redaction placeholders by kind, over rows of texts."""
    counts = {k: 0 for k in IDENTIFIER_KINDS}
    placeholders = {k: 0 for k in IDENTIFIER_KINDS}
    rows_with = 0
    for texts in rows:
        hit_row = False
        for text in texts:
            if not text:
                continue
            for hit in find_identifiers(text):
                counts[hit.kind] += 1
                hit_row = True
            if "[" in text:
                for kind, ph in PLACEHOLDERS.items():
                    placeholders[kind] += text.count(ph)
        rows_with += hit_row
    return ({k: v for k, v in counts.items() if v}, rows_with, {k: v for k, v in placeholders.items() if v})


def scan_cases(cases: Iterable[object]) -> tuple[dict[str, int], int, dict[str, int]]:
    """:func:`scan_texts` over cases (anything with question, cot and response)."""
    return scan_texts([getattr(c, f) or "" for f in FIELDS] for c in cases)


@dataclass
class DataAudit:
    """What a run records about its data. Counts and kinds only, never a value."""

    path: str
    sha256: str
    size_bytes: int
    format: str
    rows_total: int          # rows in the file
    rows_usable: int         # rows that map to a case
    rows_skipped: int
    rows_used: int           # the cases this run trains and evaluates on (Rows to use applied)
    identifiers: dict[str, int] = field(default_factory=dict)   # kind -> count, in the rows used
    rows_with_identifiers: int = 0
    placeholders: dict[str, int] = field(default_factory=dict)  # kind -> redaction placeholders seen
    decision: str = CLEAN
    acknowledged: list[str] = field(default_factory=list)       # kinds found that the user acknowledged

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataAudit:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def unacknowledged(self) -> list[str]:
        return [k for k in IDENTIFIER_KINDS if self.identifiers.get(k) and k not in self.acknowledged]


def decide(identifiers: dict[str, int], placeholders: dict[str, int], allowed: Iterable[str]) -> tuple[str, list[str]]:
    """(decision, acknowledged kinds); the decision is ``None``-free: an unacknowledged kind leaves
    ``ACKNOWLEDGED`` with fewer kinds than found (the caller refuses)."""
    found = [k for k in IDENTIFIER_KINDS if identifiers.get(k)]
    if not found:
        return (REDACTED if placeholders else CLEAN), []
    allowed = set(allowed)
    return ACKNOWLEDGED, [k for k in found if k in allowed]


class IdentifierGate(UserError):
    """Training refused: the data holds possible identifiers of kinds nobody acknowledged.

    ``audit`` has the counts; the message names them and the two ways on (redact, or acknowledge).
    """

    def __init__(self, audit: DataAudit):
        self.audit = audit
        super().__init__(gate_message(audit))


def gate_message(audit: DataAudit) -> str:
    missing = audit.unacknowledged
    return (f"{audit.path}: the {audit.rows_used} rows this run would train on hold possible patient identifiers "
            f"({counts_phrase(audit.identifiers)}, in {audit.rows_with_identifiers} rows); "
            f"a model can memorise and repeat them. Redact the file (`medtui redact FILE --out NEW`) and train on "
            f"the new file, or acknowledge each kind found: --allow-identifiers {','.join(missing)}")


def gate_question(audit: DataAudit) -> tuple[str, str]:
    """The TUI's confirm: (title, body) naming the counts by kind."""
    return ("Train on possible patient identifiers?",
            f"The {audit.rows_used} rows this run would train on hold {counts_phrase(audit.identifiers)} "
            f"(in {audit.rows_with_identifiers} rows). A model can memorise and repeat them. "
            "Better: redact the file first (medtui redact FILE --out NEW). Training anyway records your "
            "acknowledgement of each kind with the run.")


def audit_loaded(loaded, cases: list, allowed: Iterable[str]) -> DataAudit:
    """The audit of ``cases`` (the rows used) of a loaded data set (:class:`LoadedDataset`)."""
    identifiers, rows_with, placeholders = scan_cases(cases)
    decision, acknowledged = decide(identifiers, placeholders, allowed)
    return DataAudit(path=str(loaded.path), sha256=loaded.sha256, size_bytes=loaded.size_bytes,
                     format=loaded.format, rows_total=loaded.total_rows, rows_usable=len(loaded.cases),
                     rows_skipped=len(loaded.skipped_rows), rows_used=len(cases), identifiers=identifiers,
                     rows_with_identifiers=rows_with, placeholders=placeholders, decision=decision,
                     acknowledged=acknowledged)


def check_run_data(spec) -> DataAudit:
    """Before a job starts: the data maps to the spec's fields (UserError naming the columns), has
    usable rows, and passes the gate (:class:`IdentifierGate` when it does not)."""
    from ..dataset.load import FieldMapping, load_cases

    mapping = FieldMapping(question=spec.field_question, cot=spec.field_cot or None, response=spec.field_response)
    try:
        loaded = load_cases(Path(spec.data), mapping)
    except UserError as exc:
        if ": no column " not in str(exc):
            raise
        raise UserError(f"{exc}; set the training's field names to the file's columns (Question field, "
                        "Reasoning field, Response field: --field-question, --field-cot, --field-response)") from None
    cases = loaded.cases[: spec.limit_rows] if spec.limit_rows else loaded.cases
    if not cases:
        first = loaded.skipped[0] if loaded.skipped else None
        why = f" (first: row {first.row}, {first.field}: {first.message})" if first else ""
        raise UserError(f"{loaded.path}: none of its {loaded.total_rows} rows is usable with fields "
                        f"{mapping.question}/{mapping.cot or '-'}/{mapping.response}{why}; "
                        "check the file with `medtui validate`")
    audit = audit_loaded(loaded, cases, parse_kinds(spec.allow_identifiers))
    if audit.unacknowledged:
        raise IdentifierGate(audit)
    return audit
