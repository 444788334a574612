"""A run's data audit as rows (:class:`medtui_engine.rows.Row`): shown by ``medtui runs show`` and on
the Runs screen. The audit is written by :func:`medtui_engine.train.launch.start_run` (spec.json,
key ``data_audit``); the job adds what it trained on (data.json). Counts and kinds, never a value.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..rows import Row, Severity
from .gate import ACKNOWLEDGED, PLACEHOLDERS, REDACTED, counts_phrase

AUDIT_KEY = "data_audit"


def read_data_record(run_dir: Path | str) -> dict | None:
    """The job's data.json, or None (not written yet, or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "data.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe_data_audit(spec: dict, data: dict | None = None) -> list[Row]:
    """The data file's sha256 and row counts, the identifiers found by kind and the gate's decision."""
    audit = spec.get(AUDIT_KEY)
    if not isinstance(audit, dict):
        return [Row("privacy", "no data audit recorded (the run was started before medtui recorded one)")]
    rows = [Row("sha256", str(audit.get("sha256") or "-")),
            Row("rows", f"{audit.get('rows_total', 0)} in the file, {audit.get('rows_usable', 0)} usable, "
                        f"{audit.get('rows_skipped', 0)} skipped, {audit.get('rows_used', 0)} used by this run")]
    decision = audit.get("decision")
    ids = audit.get("identifiers") or {}
    if decision == ACKNOWLEDGED:
        rows.append(Row("privacy", f"possible identifiers trained on, acknowledged by the user: {counts_phrase(ids)} "
                                   f"(in {audit.get('rows_with_identifiers', 0)} rows; kinds: "
                                   f"{', '.join(audit.get('acknowledged') or [])})", Severity.WARNING,
                        "to keep them out of the model: medtui redact the file, then train on the new file"))
    elif decision == REDACTED:
        ph = audit.get("placeholders") or {}
        shown = ", ".join(f"{n} {PLACEHOLDERS[k]}" for k, n in ph.items() if k in PLACEHOLDERS)
        rows.append(Row("privacy", f"redacted: no possible identifiers; placeholders {shown}", Severity.OK))
    else:
        rows.append(Row("privacy", "no possible patient identifiers found in the rows used", Severity.OK))
    if data and data.get("sha256") and audit.get("sha256") and data["sha256"] != audit["sha256"]:
        rows.append(Row("changed", "the data file changed between the check and the training (sha256 differs); "
                                   f"the job trained on sha256 {data['sha256']}", Severity.WARNING))
    return rows
