"""What validation finds: one ``Finding`` per problem, gathered into a ``ValidationReport``.

``kind`` strings are stable: tests, the CLI's JSON and the TUI rely on them. Every finding names the
row (1-based; 0 for the file as a whole), the field, how serious it is and what to do about it.
Values that may identify a patient never appear in a finding unmasked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ERROR = "error"      # the run should not start: rows would be dropped, corrupted or leak identifiers
WARNING = "warning"  # training works, but the result will be worse than it could be
INFO = "info"        # worth knowing; nothing to fix
SEVERITIES = (ERROR, WARNING, INFO)
SEVERITY_RANK = {ERROR: 0, WARNING: 1, INFO: 2}

# kind -> (default severity, one-line title, fix hint). The single place these strings live.
KINDS: dict[str, tuple[str, str, str]] = {
    # the file as a whole
    "bom": (WARNING, "byte order mark at the start of the file",
            "read correctly here, but some tools choke on it: save the file as UTF-8 without BOM"),
    "not_utf8": (WARNING, "file is not UTF-8",
                 "read with the suggested encoding here; convert it to UTF-8 so every tool reads it the same"),
    "no_cot_column": (INFO, "no reasoning (Complex_CoT) column",
                      "the <think> block will be empty in every row; map a reasoning column with --map cot=COLUMN if there is one"),
    "unmapped_columns": (INFO, "extra columns ignored",
                         "these columns are not used for training; map one with --map if it holds the question, reasoning or answer"),
    "no_rows": (ERROR, "no usable rows", "fix the errors below; nothing would be trained"),
    # one row's structure
    "bad_json": (ERROR, "line is not valid JSON", "fix the line (each JSONL line must be one JSON object)"),
    "not_object": (ERROR, "row is not an object", "each row must be an object with the question, reasoning and answer fields"),
    "bad_csv_row": (ERROR, "row has the wrong number of columns", "check the quoting of this row: a field with a comma, tab or newline must be quoted"),
    "missing_field": (ERROR, "field is missing", "add the field, or map another column to it with --map"),
    "null_field": (ERROR, "field is null", "fill in the field or drop the row"),
    "not_string": (ERROR, "field is not text", "the field must be a string; convert the value or drop the row"),
    "empty_field": (ERROR, "field is empty or whitespace only", "fill in the field or drop the row"),
    # one row's text
    "template_marker": (ERROR, "template marker inside a field",
                        "remove it: text such as <think>, </think> or '### 回答:' inside a field corrupts the rendered template"),
    "control_char": (WARNING, "control characters in the text",
                     "remove them (they are invisible, often pasted from other systems, and waste tokens)"),
    "replacement_char": (ERROR, "undecodable bytes (shown as \ufffd)",
                         "the text was damaged by a wrong encoding before it reached this file; re-export it from the source as UTF-8"),
    "mojibake": (ERROR, "garbled text (wrong encoding applied)",
                 "the text was decoded with the wrong encoding somewhere upstream; re-export it from the source as UTF-8"),
    "duplicate_question": (WARNING, "duplicate question",
                           "drop the duplicate, or keep it only if the answers differ on purpose: duplicates are learnt twice as hard"),
    "near_duplicate_question": (WARNING, "question repeats another up to spacing and punctuation",
                                "drop one of them, or keep both only if the answers differ on purpose"),
    "missing_sections": (INFO, "answer lacks expected sections",
                         "the model learns the structure of the answers: add the missing sections if the answers should have them"),
    "too_long": (WARNING, "longer than max_seq_length after templating",
                 "raise --max-seq-length, shorten the row, or drop it: truncation cuts the end of the answer and the EOS token, so the model does not learn to stop"),
    "prompt_too_long": (ERROR, "prompt alone is longer than max_seq_length",
                        "raise --max-seq-length or shorten the question: nothing of this row's answer would be trained"),
    # possible patient identifiers (always masked in messages)
    "id_number": (ERROR, "possible resident ID number", "remove or mask it before training: a model can memorise and repeat it"),
    "phone_number": (ERROR, "possible mobile phone number", "remove or mask it before training: a model can memorise and repeat it"),
    "email": (ERROR, "possible e-mail address", "remove or mask it before training: a model can memorise and repeat it"),
    "record_number": (ERROR, "possible hospital record number (住院号/门诊号/病案号)",
                      "remove or mask it before training: a model can memorise and repeat it"),
    "name_field": (ERROR, "possible patient name (姓名：)", "replace the name (e.g. 张某) before training: a model can memorise and repeat it"),
}
IDENTIFIER_KINDS = ("id_number", "phone_number", "email", "record_number", "name_field")


@dataclass(frozen=True)
class Finding:
    row: int          # 1-based row in the source file; 0 for the file as a whole
    field: str        # the mapped field ("question", "cot", "response") or a column name; "" for the file
    kind: str         # one of KINDS
    severity: str     # error | warning | info
    message: str      # what is wrong here (identifiers masked)
    hint: str         # what to do

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def where(self) -> str:
        if self.row == 0:
            return "file"
        return f"row {self.row}" + (f", {self.field}" if self.field else "")


def finding(kind: str, row: int, field: str, message: str = "", severity: str | None = None,
            hint: str | None = None) -> Finding:
    """A finding with the kind's default severity, title and hint filled in."""
    default_sev, title, default_hint = KINDS[kind]
    return Finding(row, field, kind, severity or default_sev, message or title, hint or default_hint)
