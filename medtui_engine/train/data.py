"""Cases for training: loaded by the dataset engine, rendered by the run's template, tokenized.

Tokenizing here (prompt and completion separately, then joined) means the model is trained on
exactly the prompt tokens it will see at inference, the loss mask is exact, and the token counts
for the progress display come for free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class TrainCase:
    row: int
    question: str
    cot: str
    response: str


def load_train_cases(path: str | Path, question: str, cot: str, response: str) -> tuple[list[TrainCase], list[str]]:
    """Load and map the data file with the dataset engine: (cases, notes about skipped rows)."""
    from ..dataset.load import FieldMapping, load_cases

    loaded = load_cases(Path(path), FieldMapping(question=question, cot=cot or None, response=response))
    cases = [TrainCase(c.row, c.question, c.cot or "", c.response) for c in loaded.cases]
    notes = []
    if loaded.skipped:
        first = loaded.skipped[0]
        notes.append(f"{len(loaded.skipped)} of {loaded.total_rows} rows of {path} cannot be used and were skipped "
                     f"(first: row {first.row}, {first.field}: {first.message}); `medtui validate` lists them all")
    if not cases:
        raise UserError(f"{path}: no usable cases with fields {question}/{cot}/{response}; "
                        "check the file with `medtui validate`")
    return cases, notes


def privacy_record(cases: list[TrainCase], allow_identifiers: str) -> dict:
    """The identifier gate, again in the job, on the cases it trains: counts by kind and the decision
    (never a value). Raises UserError when a kind found was not acknowledged (the file changed since
    the run was started, or the spec was written by hand)."""
    from ..privacy.gate import counts_phrase, decide, parse_kinds, scan_cases

    identifiers, rows_with, placeholders = scan_cases(cases)
    decision, acknowledged = decide(identifiers, placeholders, parse_kinds(allow_identifiers))
    missing = [k for k in identifiers if k not in acknowledged]
    if missing:
        raise UserError(f"the rows to train on hold possible patient identifiers ({counts_phrase(identifiers)}) "
                        f"of kinds not acknowledged for this run ({', '.join(missing)}); redact the file with "
                        "`medtui redact`, or start a new run acknowledging them")
    return {"identifiers": identifiers, "rows_with_identifiers": rows_with, "placeholders": placeholders,
            "gate": decision, "acknowledged": acknowledged}


def plant_canaries(run_dir: Path, canaries_file: str, repeats: int) -> tuple[list[TrainCase], dict | None]:
    """The canary cases to add to the training rows (each canary's fake case, ``repeats`` times) and
    what the run records about them (data.json ``canaries``: the file, its sha256, the count).

    The run keeps a copy of the file (``canaries.txt``: the user's own fake strings, for ``medtui
    probe``); a resumed run plants what it planted first, from that copy."""
    if not canaries_file:
        return [], None
    import shutil

    from ..privacy.probe import CANARIES_FILE, CANARY_CASE_VERSION, canary_case, file_sha256, read_canaries

    kept = Path(run_dir) / CANARIES_FILE
    if not kept.is_file():
        canaries = read_canaries(canaries_file)  # validated before the copy: a bad file fails here, named
        tmp = kept.with_name(f".{CANARIES_FILE}.{os.getpid()}.tmp")  # ranks copy alike
        shutil.copyfile(canaries_file, tmp)
        os.replace(tmp, kept)
    canaries = read_canaries(kept)
    cases = [TrainCase(-(i + 1), *canary_case(c)) for i, c in enumerate(canaries) for _ in range(repeats)]
    record = {"file": str(Path(canaries_file).resolve()), "sha256": file_sha256(kept), "count": len(canaries),
              "repeats": repeats, "rows_added": len(cases), "kept_as": CANARIES_FILE,
              "case_version": CANARY_CASE_VERSION}
    return cases, record


def data_record(path: str | Path, cases: list[TrainCase], train: list[TrainCase], evals: list[TrainCase],
                eval_fraction: float, seed: int, privacy: dict | None = None, canaries: dict | None = None) -> dict:
    """What a run records about its data (data.json): enough to know the file is the same and to
    rebuild the exact split (the rows in each part, by their row number in the file), the
    identifier gate's counts and decision (``privacy``, from :func:`privacy_record`) and the canaries
    planted (``canaries``, from :func:`plant_canaries`)."""
    import hashlib

    sha = None  # a save_to_disk directory has no one file to hash
    if Path(path).is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        sha = digest.hexdigest()
    return {
        "path": str(Path(path).resolve()),
        "sha256": sha,
        "rows_used": len(cases),
        "eval_fraction": eval_fraction,
        "seed": seed,
        "train_rows": [c.row for c in train],
        "eval_rows": [c.row for c in evals],
        **(privacy or {}),
        **({"canaries": canaries} if canaries else {}),
    }


def split_train_eval(cases: list[TrainCase], eval_fraction: float, seed: int) -> tuple[list, list]:
    if eval_fraction <= 0:
        return cases, []
    from ..dataset.load import split_cases

    train, evals = split_cases(cases, eval_fraction, seed)
    return list(train), list(evals)


def tokenize_cases(cases: list[TrainCase], template: str, tokenizer, max_seq_length: int,
                   mask_prompt: bool) -> tuple[list[dict], dict]:
    """Rows of ``input_ids`` + ``labels`` (prompt tokens -100 when masked), truncated.

    Returns the rows and counts: tokens (after truncation), truncated rows, dropped rows (a prompt
    alone filling max_seq_length leaves nothing to learn when the prompt is masked).
    """
    from ..templates import render_case

    rows: list[dict] = []
    tokens = truncated = dropped = 0
    for case in cases:
        rc = render_case(template, case.question, case.cot, case.response, tokenizer)
        p_ids = tokenizer(rc.prompt)["input_ids"]
        c_ids = tokenizer(rc.completion, add_special_tokens=False)["input_ids"]
        ids = p_ids + c_ids
        labels = ([-100] * len(p_ids) if mask_prompt else list(p_ids)) + list(c_ids)
        if len(ids) > max_seq_length:
            truncated += 1
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        if all(x == -100 for x in labels[1:]):
            dropped += 1
            continue
        tokens += len(ids)
        rows.append({"input_ids": ids, "labels": labels})
    return rows, {"tokens": tokens, "truncated": truncated, "dropped": dropped}
