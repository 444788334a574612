"""The validation report: every finding, the measurements, and a clear go / no-go."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..sections import SECTION_LABELS
from .findings import ERROR, INFO, SEVERITY_RANK, WARNING, Finding
from .load import LoadedDataset
from .measure import EpochEstimate, Measurement, format_duration


@dataclass
class ValidationReport:
    dataset: LoadedDataset
    findings: list[Finding]                  # sorted: row, then severity
    template: str
    max_seq_length: int
    model: str = ""                          # how the model is shown (demo label included)
    measurement: Measurement | None = None   # None when no tokenizer was given
    estimate: EpochEstimate | None = None
    section_rates: dict[str, float] = field(default_factory=dict)
    all_sections_rate: float = 0.0
    three_elements_rate: float = 0.0
    elapsed_s: float = 0.0

    def _count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def errors(self) -> int:
        return self._count(ERROR)

    @property
    def warnings(self) -> int:
        return self._count(WARNING)

    @property
    def infos(self) -> int:
        return self._count(INFO)

    @property
    def go(self) -> bool:
        return self.errors == 0 and bool(self.dataset.cases)

    @property
    def exit_code(self) -> int:
        return 0 if self.go else 1

    def by_kind(self, severity: str | None = None) -> Counter[str]:
        return Counter(f.kind for f in self.findings if severity is None or f.severity == severity)

    def rows_with(self, severity: str = ERROR) -> list[int]:
        return sorted({f.row for f in self.findings if f.severity == severity and f.row > 0})

    def sorted_findings(self) -> list[Finding]:
        """Most serious first, then by row: what the findings table shows."""
        return sorted(self.findings, key=lambda f: (SEVERITY_RANK[f.severity], f.row, f.field, f.kind))

    @property
    def summary(self) -> str:
        ds = self.dataset
        usable = f"{len(ds.cases)} of {ds.total_rows} rows usable"
        if self.go:
            head = f"GO: {usable}, no errors"
            if self.warnings:
                head += f", {self.warnings} warning(s) ({_top(self.by_kind(WARNING))})"
        else:
            kinds = _top(self.by_kind(ERROR))
            rows = self.rows_with(ERROR)
            where = f" in {len(rows)} row(s)" if rows else ""
            head = f"NO-GO: {self.errors} error(s){where} ({kinds}); {usable}" if self.errors else f"NO-GO: {usable}"
        if self.estimate and self.estimate.steps_per_epoch:
            head += f"; {self.estimate.steps_per_epoch} steps/epoch"
            if self.estimate.epoch_seconds is not None:
                head += f", ~{format_duration(self.estimate.epoch_seconds)}/epoch"
        return head

    def as_dict(self) -> dict[str, object]:
        ds = self.dataset
        return {
            "go": self.go,
            "summary": self.summary,
            "file": {
                "path": str(ds.path), "format": ds.format, "encoding": ds.encoding, "sha256": ds.sha256,
                "size_bytes": ds.size_bytes, "note": ds.note,
            },
            "mapping": ds.mapping.as_dict(),
            "columns": ds.columns,
            "extra_columns": ds.extra_columns,
            "rows_total": ds.total_rows,
            "rows_usable": len(ds.cases),
            "rows_skipped": ds.skipped_rows,
            "counts": {"error": self.errors, "warning": self.warnings, "info": self.infos},
            "kinds": dict(self.by_kind()),
            "sections": {
                "rates": {SECTION_LABELS[k]: round(v, 4) for k, v in self.section_rates.items()},
                "all_sections_rate": round(self.all_sections_rate, 4),
                "three_elements_rate": round(self.three_elements_rate, 4),
            },
            "model": self.model,
            "template": self.template,
            "max_seq_length": self.max_seq_length,
            "tokens": self.measurement.as_dict() if self.measurement else None,
            "epoch": self.estimate.as_dict() if self.estimate else None,
            "elapsed_s": round(self.elapsed_s, 2),
            "findings": [f.as_dict() for f in self.sorted_findings()],
        }


def _top(counts: Counter[str], n: int = 3) -> str:
    parts = [f"{k} ×{v}" for k, v in counts.most_common(n)]
    if len(counts) > n:
        parts.append("…")
    return ", ".join(parts)
