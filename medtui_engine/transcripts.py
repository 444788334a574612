"""Console sessions saved as transcripts: Markdown for people, JSONL for reading back.

``<workspace>/transcripts/<session_id>.md`` and ``.jsonl``; both rewritten whole on each save, through
a temporary file renamed into place, so a reader never sees half a transcript. The JSONL's first line
describes the session; each further line is one answer (compare mode: two answers with one ``case``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .errors import UserError
from .notices import DISCLAIMER
from .sections import SECTION_LABELS, find_sections, split_think

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TranscriptEntry:
    case: int                      # 1-based case number in the session; compare answers share it
    question: str
    model: str                     # the model's label as shown
    output: str                    # the raw generated text
    template: str = "seed"
    model_dir: str = ""
    adapter_dir: str | None = None
    sampling: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    side: str = ""                 # "" | "tuned" | "base" (compare mode)
    t: float = 0.0

    @property
    def think(self) -> str:
        return split_think(self.output, prompt_opened_think=self.template == "seed").think

    @property
    def answer(self) -> str:
        return split_think(self.output, prompt_opened_think=self.template == "seed").answer

    def as_record(self) -> dict:
        sections = find_sections(self.answer)
        rec = {"type": "answer", **asdict(self)}
        rec["think"] = self.think
        rec["answer"] = self.answer
        rec["sections_present"] = [n for n in SECTION_LABELS if n in sections.present]
        rec["sections_missing"] = sections.missing
        return rec


@dataclass
class Transcript:
    session_id: str
    started: float
    entries: list[TranscriptEntry] = field(default_factory=list)

    @classmethod
    def new(cls) -> Transcript:
        now = time.time()
        return cls(time.strftime("%Y%m%d-%H%M%S", time.localtime(now)), now)

    def next_case(self) -> int:
        return max((e.case for e in self.entries), default=0) + 1

    def add(self, entry: TranscriptEntry) -> None:
        self.entries.append(entry)

    def cases(self) -> list[list[TranscriptEntry]]:
        """Entries grouped by case, in order."""
        groups: dict[int, list[TranscriptEntry]] = {}
        for e in self.entries:
            groups.setdefault(e.case, []).append(e)
        return [groups[k] for k in sorted(groups)]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def to_jsonl(tr: Transcript) -> str:
    head = {"type": "session", "v": SCHEMA_VERSION, "session_id": tr.session_id, "started": tr.started,
            "medtui": __version__, "disclaimer": DISCLAIMER}
    lines = [json.dumps(head, ensure_ascii=False)]
    lines += [json.dumps(e.as_record(), ensure_ascii=False) for e in tr.entries]
    return "\n".join(lines) + "\n"


def _fmt_stats(stats: dict) -> str:
    bits = []
    if stats.get("ttft_s") is not None:
        bits.append(f"first token {stats['ttft_s'] * 1000:.0f} ms")
    if stats.get("decode_tokens_per_s"):
        bits.append(f"{stats['decode_tokens_per_s']:.1f} tok/s")
    if stats.get("total_s") is not None:
        bits.append(f"{stats['total_s']:.1f} s total")
    if stats.get("output_tokens") is not None:
        bits.append(f"{stats['output_tokens']} tokens")
    reason = stats.get("finish_reason")
    if reason == "length":
        bits.append("cut off at max_new_tokens")
    elif reason == "cancelled":
        bits.append("stopped by the user")
    return " · ".join(bits)


def to_markdown(tr: Transcript) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(tr.started))
    out = [f"# medtui console session {tr.session_id}", "", f"Started {started}. medtui {__version__}.", "",
           f"> {DISCLAIMER}", ""]
    for group in tr.cases():
        first = group[0]
        out += [f"## Case {first.case}", "", "```text", first.question.strip(), "```", ""]
        for e in group:
            side = f" ({e.side})" if e.side else ""
            out += [f"### {e.model}{side}", ""]
            sampling = ", ".join(f"{k} {v}" for k, v in e.sampling.items() if v is not None)
            out += [f"*template {e.template}; {sampling}*  ", f"*{_fmt_stats(e.stats)}*", ""]
            sections = find_sections(e.answer)
            marks = " ".join(("✓ " if n in sections.present else "✗ ") + SECTION_LABELS[n] for n in SECTION_LABELS)
            out += [f"Sections: {marks}", ""]
            if e.think:
                out += ["<details><summary>思考过程 (think)</summary>", "", e.think, "", "</details>", ""]
            out += [e.answer or "*(no answer after the think block)*", ""]
    return "\n".join(out).rstrip() + "\n"


def save_transcript(tr: Transcript, directory: Path) -> tuple[Path, Path]:
    """Write ``<id>.md`` and ``<id>.jsonl`` into ``directory``; returns both paths."""
    directory = Path(directory)
    md, jl = directory / f"{tr.session_id}.md", directory / f"{tr.session_id}.jsonl"
    try:
        _write_atomic(jl, to_jsonl(tr))
        _write_atomic(md, to_markdown(tr))
    except OSError as exc:
        raise UserError(f"cannot write the transcript into {directory}: {exc.strerror or exc}") from None
    return md, jl


def load_transcript(path: Path) -> Transcript:
    """Read a saved session back (from its JSONL; a ``.md`` path reads the ``.jsonl`` beside it)."""
    path = Path(path)
    if path.suffix == ".md":
        path = path.with_suffix(".jsonl")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read the transcript {path}: {exc.strerror or exc}") from None
    tr: Transcript | None = None
    known = {f for f in TranscriptEntry.__dataclass_fields__}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise UserError(f"{path}, line {n}: not valid JSON; the transcript is damaged") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}, line {n}: expected a JSON object")
        if rec.get("type") == "session":
            tr = Transcript(str(rec.get("session_id") or path.stem), float(rec.get("started") or 0))
        elif rec.get("type") == "answer":
            if tr is None:
                raise UserError(f"{path}, line {n}: an answer before the session line; not a medtui transcript")
            missing = [f for f in ("case", "question", "model", "output") if f not in rec]
            if missing:
                raise UserError(f"{path}, line {n}: missing field(s) {', '.join(missing)}")
            tr.add(TranscriptEntry(**{k: v for k, v in rec.items() if k in known}))
    if tr is None:
        raise UserError(f"{path} has no session line; not a medtui transcript")
    return tr


def list_transcripts(directory: Path) -> list[Path]:
    """Saved sessions, newest first (their JSONL files)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted((p for p in d.glob("*.jsonl") if not p.name.startswith(".")), reverse=True)
