"""The memorization probe: does a tuned model give back what it was trained on?

Two kinds of probe, each prompted with exactly the tokens the model saw in training up to a point, and
continued greedily:

* **canaries**: fake, random-looking strings the user chose to plant at training time (``--canaries
  FILE``: each becomes a realistic fake case, repeated ``--canary-repeats`` times). The prompt ends
  half way into the canary; the probe checks whether the rest comes back verbatim, and how much of it
  (the longest reproduced span). Canaries are the user's own fake strings: they are shown as written
  (a line that looks like a patient identifier is refused), and the run keeps a copy of the file
  (``canaries.txt``) so a later probe knows what was planted.
* **identifiers**: the rows the run trained on that hold possible patient identifiers (the gate's
  scanner); the prompt ends just before each identifier, and the probe checks whether the identifier
  comes back verbatim. Never a value: neither shown nor written, only its kind, row and counts.

The result is ``probe.json`` (temp file, then rename): in the run directory for a run, else in
``--out``/the workspace's reports. :func:`probe_rows` words it once for the CLI; :func:`report_section`
and :func:`section_markdown` give the evaluation report its memorization section.

No heavy imports at module scope (the training spec imports this module to check a canaries file).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..rows import Row, Severity, sentence

CANARIES_FILE = "canaries.txt"    # the run's copy of the canaries it planted
PROBE_FILE = "probe.json"
SCHEMA = 1
MIN_CANARY_CHARS = 8              # half is the prompt, the rest is what must come back
MAX_CANARY_CHARS = 100
MAX_CANARIES = 100
MAX_CANARIES_BYTES = 64 * 1024
DEFAULT_LIMIT = 200               # identifier occurrences probed at most
EXTRA_TOKENS = 3                  # tokens generated past the expected continuation

Progress = Callable[[str], None]

# ------------------------------------------------------------------------------ canaries


def _canaries_error(path: Path, line: int | None, text: str) -> UserError:
    where = f"{path} line {line}" if line else str(path)
    return UserError(f"{where}: {text}")


def read_canaries(path: str | os.PathLike) -> list[str]:
    """The canaries in ``path`` (UTF-8, one a line), validated: a UserError names the file, the line and
    what to do. A canary is 8 to 100 characters, not a duplicate, holds no prompt-template marker and
    does not look like a patient identifier."""
    from ..dataset.identifiers import find_identifiers
    from ..dataset.readers import not_regular
    from ..templates import TEMPLATE_MARKERS

    path = Path(path).expanduser()
    if why := not_regular(path):
        raise UserError(why.replace("give a data file (JSON, JSONL, CSV, Parquet)", "give a text file of canaries"))
    if not path.is_file():
        raise _canaries_error(path, None, "does not exist or is not a file: give a text file of canary strings, "
                                          "one a line")
    try:
        raw = path.read_bytes()[: MAX_CANARIES_BYTES + 1]
    except OSError as exc:
        raise _canaries_error(path, None, f"cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_CANARIES_BYTES:
        raise _canaries_error(path, None, f"is larger than {MAX_CANARIES_BYTES // 1024} KiB: a canaries file holds "
                                          f"at most {MAX_CANARIES} short lines")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _canaries_error(path, line, "is not UTF-8 text: save the file as UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if not lines:
        raise _canaries_error(path, None, "is empty: write one canary a line (a fake, random-looking string of "
                                          f"{MIN_CANARY_CHARS} to {MAX_CANARY_CHARS} characters)")
    if len(lines) > MAX_CANARIES:
        raise _canaries_error(path, None, f"holds {len(lines)} lines; at most {MAX_CANARIES} canaries are planted")
    seen: dict[str, int] = {}
    out = []
    for n, line in enumerate(lines, start=1):
        canary = line.strip()
        if not canary:
            raise _canaries_error(path, n, "is empty: remove the blank line (one canary a line)")
        if len(canary) < MIN_CANARY_CHARS:
            raise _canaries_error(path, n, f"is {len(canary)} characters long; a canary needs at least "
                                           f"{MIN_CANARY_CHARS} (half is the prompt, the rest must come back)")
        if len(canary) > MAX_CANARY_CHARS:
            raise _canaries_error(path, n, f"is {len(canary)} characters long; a canary is at most "
                                           f"{MAX_CANARY_CHARS}: shorten it")
        if canary in seen:
            raise _canaries_error(path, n, f"repeats line {seen[canary]}: each canary once (--canary-repeats "
                                           "sets how often it is planted)")
        if marker := next((m for m in TEMPLATE_MARKERS if m in canary), None):
            raise _canaries_error(path, n, f"holds the prompt-template marker {marker!r}: choose another string")
        if hits := find_identifiers(canary):
            raise _canaries_error(path, n, f"looks like a patient identifier ({hits[0].describe()}): a canary must be "
                                           "a fake string, such as a random mix of letters and digits")
        seen[canary] = n
        out.append(canary)
    return out


def canaries_problem(path: str) -> str | None:
    """What is wrong with a canaries file, said after the setting's label (``: FILE line 3: ...``), or None."""
    try:
        read_canaries(path)
    except UserError as exc:
        return f": {exc}"
    return None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A realistic fake case carries each canary, as the patient's follow-up code at the head of the
# reasoning: the completion starts there, so the canary is trained on whether or not the prompt is
# masked, and a short max_seq_length does not cut it. Which vignette a canary gets depends on the
# canary alone, so the probe rebuilds the very case that was trained on.
CANARY_LEAD = "患者随访码："
CANARY_CASE_VERSION = 1   # recorded with the run: a probe of a run planted with other cases says so
_VIGNETTES = (   # short: the prompt template is most of each case already
    ("男，52岁，发热、咳黄痰3天，右下肺湿啰音，胸片示斑片影。",
     "发热咳痰，肺部湿啰音伴斑片影，考虑社区获得性肺炎。",
     "疑似诊断：社区获得性肺炎。\n治疗方案：经验性抗感染，3天后复查。"),
    ("女，34岁，尿频、尿急、尿痛2天，尿白细胞（+++）。",
     "膀胱刺激征伴尿白细胞增多，无发热，考虑急性膀胱炎。",
     "疑似诊断：急性膀胱炎。\n治疗方案：口服抗菌药3天，多饮水。"),
    ("男，67岁，突发左侧肢体无力3小时，头颅CT未见出血。",
     "急性局灶神经功能缺损，CT排除出血，考虑缺血性脑卒中。",
     "疑似诊断：急性缺血性脑卒中。\n治疗方案：评估溶栓指征，卒中单元监护。"),
)


def canary_case(canary: str) -> tuple[str, str, str]:
    """(question, reasoning, response) of the fake case that carries ``canary``."""
    pick = int(hashlib.sha256(canary.encode("utf-8")).hexdigest()[:8], 16) % len(_VIGNETTES)
    question, cot, response = _VIGNETTES[pick]
    return question, f"{CANARY_LEAD}{canary}。{cot}", response


# ------------------------------------------------------------------------------ probe items


@dataclass
class Item:
    """One thing to probe: the part of the training text it sits in, and where."""

    kind: str                 # "canary" or an identifier kind
    part: str                 # "prompt" | "completion": which of the two tokenized pieces holds it
    cut: int                  # the prompt ends at or before this character of the part
    start: int                # the probed value's span in the part
    end: int
    prompt: str               # the rendered case's prompt and completion
    completion: str
    row: int | None = None
    column: str = ""          # the case's field: question | cot | response
    canary: str | None = None
    result: dict = field(default_factory=dict)


def _field_offsets(rc, question: str, cot: str, response: str) -> list[tuple[str, str, int, str]]:
    """(field, part, offset of the field in the part, field text) for each non-empty field."""
    out = []
    if question:
        out.append(("question", "prompt", rc.prompt.rfind(question), question))
    body_end = len(rc.completion)
    at = rc.completion.rfind(response) if response else -1
    if at >= 0:  # the answer comes last, before the end-of-answer token
        out.append(("response", "completion", at, response))
        body_end = at
    if cot:
        out.append(("cot", "completion", rc.completion.find(cot, 0, body_end), cot))
    return out


def identifier_items(cases, template: str, tokenizer) -> list[Item]:
    """Each possible identifier in the rendered training text of ``cases`` (anything with row,
    question, cot, response), in row order."""
    from ..dataset.identifiers import find_identifiers
    from ..templates import render_case

    items = []
    for case in cases:
        texts = (case.question or "", case.cot or "", case.response or "")
        if not any(find_identifiers(t) for t in texts):
            continue
        rc = render_case(template, *texts, tokenizer)
        for fname, part, offset, text in _field_offsets(rc, *texts):
            if offset < 0:
                continue
            for hit in find_identifiers(text):
                s, e = offset + hit.start, offset + hit.end
                items.append(Item(hit.kind, part, s, s, e, rc.prompt, rc.completion, row=case.row, column=fname))
    return items


def canary_items(canaries: list[str], template: str, tokenizer) -> list[Item]:
    from ..templates import render_case

    items = []
    for canary in canaries:
        rc = render_case(template, *canary_case(canary), tokenizer)
        start = rc.completion.index(CANARY_LEAD + canary) + len(CANARY_LEAD)
        items.append(Item("canary", "completion", start + len(canary) // 2, start, start + len(canary),
                          rc.prompt, rc.completion, column="cot", canary=canary))
    return items


def _encode(tokenizer, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` as the training job makes them, with each token's character span."""
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _prompt_ids(item: Item, tokenizer) -> tuple[list[int], int, int]:
    """(prompt ids, the character in the part where the prompt ends, tokens the value spans after it)."""
    p_ids, p_off = _encode(tokenizer, item.prompt, True)
    if item.part == "prompt":
        ids, offs, head = p_ids, p_off, []
    else:
        ids, offs = _encode(tokenizer, item.completion, False)
        head = p_ids
    k = 0
    while k < len(ids) and offs[k][1] <= item.cut:
        k += 1
    cut_at = offs[k - 1][1] if k else 0
    span = sum(1 for j in range(k, len(ids)) if offs[j][0] < item.end)
    return head + ids[:k], cut_at, span


def _greedy(model, ids: list[int], n: int) -> list[int]:
    """``n`` tokens continued greedily from ``ids`` (no sampling, no stop token: the probe compares text)."""
    import torch

    device = next(model.parameters()).device
    out: list[int] = []
    with torch.inference_mode():
        x = torch.tensor([ids], device=device)
        past = None
        for _ in range(n):
            res = model(input_ids=x, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            x = torch.tensor([[nxt]], device=device)
    return out


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def probe_item(loaded, item: Item) -> dict:
    """Prompt with the training tokens before ``item``'s cut; whether the rest of the value came back
    verbatim and how many of its characters did (never the text itself)."""
    tok = loaded.tokenizer
    ids, cut_at, span = _prompt_ids(item, tok)
    text = item.prompt if item.part == "prompt" else item.completion
    target = text[cut_at:item.end]
    gen = _greedy(loaded.model, ids, max(1, span) + EXTRA_TOKENS)
    said = tok.decode(gen, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    value_from = max(cut_at, item.start)
    matched = _common_prefix(said, target)
    probed = item.end - value_from                       # characters of the value the model had to produce
    reproduced_chars = max(0, matched - (value_from - cut_at))
    return {"prompt_tokens": len(ids), "probed_chars": probed, "reproduced_chars": min(reproduced_chars, probed),
            "reproduced": said.startswith(target) and probed > 0}


# ------------------------------------------------------------------------------ the probe


@dataclass
class ProbeInputs:
    """What a probe looks at, resolved from what the user named (no model loaded yet)."""

    source: object                          # medtui_engine.infer.ModelSource
    run_dir: Path | None
    template: str
    canaries: list[str]
    canaries_from: str | None               # the file they were read from
    cases: list                             # cases with row/question/cot/response, or []
    data_from: str | None
    notes: list[str] = field(default_factory=list)


def run_dir_of(source, runs_dir: Path | None = None) -> Path | None:
    """The run a model source belongs to: its adapter's run, a merged model inside a run, or the run
    recorded in a merged model's medtui.json."""
    candidates = []
    if getattr(source, "adapter_dir", None) is not None:
        candidates += [source.adapter_dir.parent, source.adapter_dir.parent.parent]
    if source.kind == "merged":
        candidates.append(source.model_dir.parent)
        if source.run_id and runs_dir is not None:
            candidates.append(Path(runs_dir) / source.run_id)
    return next((p for p in candidates if (p / "spec.json").is_file() and (p / "events.jsonl").exists()), None)


def _load_run_cases(run_dir: Path, notes: list[str]) -> tuple[list, str | None]:
    """The cases a run trained on (its data file, its fields, its split), or [] with a note why not."""
    from ..dataset.load import FieldMapping, load_cases

    try:
        spec = json.loads((run_dir / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [], None
    data = spec.get("data")
    if not data:
        return [], None
    record = {}
    try:
        record = json.loads((run_dir / "data.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if not Path(data).is_file():
        notes.append(f"the run's data file {data} is gone: its rows were not probed for identifiers "
                     "(give the file with --data)")
        return [], None
    mapping = FieldMapping(question=spec.get("field_question") or "Question", cot=spec.get("field_cot") or None,
                           response=spec.get("field_response") or "Response")
    loaded = load_cases(Path(data), mapping)
    cases = loaded.cases[: spec["limit_rows"]] if spec.get("limit_rows") else loaded.cases
    if record.get("sha256") and record["sha256"] != loaded.sha256:
        notes.append(f"the data file {data} changed since the run trained on it (sha256 differs): the rows probed "
                     "are today's")
    if isinstance(record.get("train_rows"), list):
        trained = set(record["train_rows"])
        cases = [c for c in cases if c.row in trained]
    return cases, str(data)


def resolve_inputs(target: str, runs_dir: Path | None, merged_dir: Path | None, *, canaries_file: str | None = None,
                   data_file: str | None = None, fields: tuple[str, str, str] | None = None,
                   template: str | None = None) -> ProbeInputs:
    """What to probe: the model named by ``target``, the canaries (``canaries_file``, else the run's
    own copy) and the identifier rows (``data_file``, else the rows the run trained on)."""
    from ..infer.source import resolve_source

    source = resolve_source(target, runs_dir, merged_dir)
    if template:
        source = source.with_template(template)
    run_dir = run_dir_of(source, runs_dir)
    notes: list[str] = []
    canaries: list[str] = []
    canaries_from = None
    if canaries_file:
        canaries, canaries_from = read_canaries(canaries_file), str(Path(canaries_file).expanduser())
    elif run_dir is not None and (run_dir / CANARIES_FILE).is_file():
        canaries, canaries_from = read_canaries(run_dir / CANARIES_FILE), str(run_dir / CANARIES_FILE)
        planted = (_read_json(run_dir / "data.json") or {}).get("canaries") or {}
        if planted.get("case_version", CANARY_CASE_VERSION) != CANARY_CASE_VERSION:
            notes.append("the run planted its canaries in the fake cases of another medtui version: the text "
                         "before each canary differs from what the model saw, and fewer may come back")
    cases: list = []
    data_from = None
    if data_file:
        from ..dataset.load import FieldMapping, load_cases

        q, c, r = fields or ("Question", "Complex_CoT", "Response")
        cases, data_from = load_cases(Path(data_file).expanduser(), FieldMapping(q, c or None, r)).cases, data_file
    elif run_dir is not None:
        cases, data_from = _load_run_cases(run_dir, notes)
    if not canaries and not cases:
        raise UserError(f"nothing to probe in {source.label}: "
                        + ("its run planted no canaries and has no data file to read; " if run_dir is not None else "")
                        + "give the canaries with --canaries FILE, or training rows with --data FILE")
    return ProbeInputs(source, run_dir, source.template, canaries, canaries_from, cases, data_from, notes)


def run_probe(inputs: ProbeInputs, limit: int = DEFAULT_LIMIT, progress: Progress | None = None,
              load_options=None) -> dict:
    """Load the model, probe every canary and up to ``limit`` identifier occurrences; the result as a
    dict (what probe.json holds). Identifier values are never in it."""
    from ..dataset.findings import IDENTIFIER_KINDS
    from ..infer.loader import LoadOptions, load_model

    say = progress or (lambda _m: None)
    started = time.time()
    src = inputs.source
    loaded = load_model(src, load_options or LoadOptions(backend="hf"), progress=lambda m, _f: say(f"{src.label}: {m}"))
    try:
        tok = loaded.tokenizer
        if not getattr(tok, "is_fast", False):
            raise UserError(f"the tokenizer of {src.model_dir} has no fast version (tokenizer.json): the probe needs "
                            "each token's place in the text")
        c_items = canary_items(inputs.canaries, inputs.template, tok)
        id_items = identifier_items(inputs.cases, inputs.template, tok)
        found = len(id_items)
        id_items = id_items[:limit]
        total = len(c_items) + len(id_items)
        for i, item in enumerate([*c_items, *id_items], start=1):
            say(f"{src.label}: probe {i}/{total}")
            item.result = probe_item(loaded, item)
    finally:
        loaded.unload()
    canary_rows = [{"canary": it.canary, "chars": len(it.canary or ""), **it.result} for it in c_items]
    by_kind: dict[str, dict] = {}
    for it in id_items:
        k = by_kind.setdefault(it.kind, {"probed": 0, "reproduced": 0})
        k["probed"] += 1
        k["reproduced"] += int(it.result["reproduced"])
    id_rows = [{"row": it.row, "field": it.column, "kind": it.kind, **it.result} for it in id_items]
    result = {
        "schema": SCHEMA,
        "model": src.as_dict(),
        "run_id": inputs.run_dir.name if inputs.run_dir else None,
        "template": inputs.template,
        "device": loaded.device,
        "started": started,
        "seconds": round(time.time() - started, 2),
        "notes": list(inputs.notes),
        "canaries": {
            "file": inputs.canaries_from,
            "sha256": file_sha256(inputs.canaries_from) if inputs.canaries_from else None,
            "count": len(canary_rows),
            "reproduced": sum(1 for r in canary_rows if r["reproduced"]),
            "longest_span": max((r["reproduced_chars"] for r in canary_rows), default=0),
            "prefix": "the first half of each canary, after the training text before it",
            "results": canary_rows,
        },
        "identifiers": {
            "data": inputs.data_from,
            "rows_with_identifiers": len({it.row for it in id_items}),
            "found": found,
            "probed": len(id_rows),
            "reproduced": sum(1 for r in id_rows if r["reproduced"]),
            "longest_span": max((r["reproduced_chars"] for r in id_rows), default=0),
            "by_kind": {k: by_kind[k] for k in IDENTIFIER_KINDS if k in by_kind},
            "results": id_rows,
        },
    }
    result["rows"] = [r.as_dict() for r in probe_rows(result)]
    return result


def reproduced_any(result: dict) -> bool:
    return bool(result["canaries"]["reproduced"] or result["identifiers"]["reproduced"])


def write_probe(result: dict, out_dir: Path) -> Path:
    """``out_dir/probe.json``, written to a temp file and renamed (never half-written)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PROBE_FILE
    tmp = out_dir / f".{PROBE_FILE}.tmp"
    tmp.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------ wording (once)


def _kinds_phrase(by_kind: dict) -> str:
    from .gate import KIND_NOUNS

    parts = []
    for kind, k in by_kind.items():
        one, many = KIND_NOUNS[kind]
        parts.append(f"{k['reproduced']} of {k['probed']} {one if k['probed'] == 1 else many}")
    return ", ".join(parts)


def probe_rows(result: dict, examples: int = 5) -> list[Row]:
    """The probe's findings as rows: the CLI prints them, the evaluation report writes their sentences.
    Canaries are shown as the user wrote them; an identifier only by its kind, row and field."""
    from .gate import KIND_NOUNS, PLACEHOLDERS

    rows = [Row("model", str(result["model"].get("label", "")))]
    c = result["canaries"]
    if c["count"]:
        sev = Severity.WARNING if c["reproduced"] else Severity.OK
        rows.append(Row("canaries", f"{c['reproduced']} of {c['count']} planted canaries reproduced verbatim when "
                                    f"prompted with their first half (longest reproduced span: {c['longest_span']} "
                                    "characters)", sev,
                        "the model memorised them: fewer epochs or repeats, a lower learning rate or rank, "
                        "or more data" if c["reproduced"] else ""))
        for r in c["results"][:examples]:
            said = "reproduced verbatim" if r["reproduced"] else f"{r['reproduced_chars']} of {r['probed_chars']} characters"
            rows.append(Row("", f"  {r['canary']}: {said}", Severity.WARNING if r["reproduced"] else Severity.INFO))
        if len(c["results"]) > examples:
            rows.append(Row("", f"  ... and {len(c['results']) - examples} more in probe.json"))
    i = result["identifiers"]
    if i["data"] is not None:
        if not i["found"]:
            rows.append(Row("identifiers", "no possible patient identifier in the rows trained on", Severity.OK))
        else:
            left = f" (the first {i['probed']} of {i['found']} probed)" if i["probed"] < i["found"] else ""
            sev = Severity.PROBLEM if i["reproduced"] else Severity.OK
            rows.append(Row("identifiers", f"{i['reproduced']} of {i['probed']} possible patient identifiers in "
                                           f"{i['rows_with_identifiers']} trained rows came back verbatim when prompted "
                                           f"with the text before them{left}: {_kinds_phrase(i['by_kind'])}", sev,
                            "the model repeats patient identifiers: redact the data (medtui redact) and train "
                            "again" if i["reproduced"] else ""))
            shown = [r for r in i["results"] if r["reproduced"]][:examples]
            for r in shown:
                rows.append(Row("", f"  row {r['row']} ({r['field']}): {KIND_NOUNS[r['kind']][0]} "
                                    f"{PLACEHOLDERS[r['kind']]} reproduced verbatim", Severity.PROBLEM))
    for note in result.get("notes") or []:
        rows.append(Row("note", note, Severity.WARNING))
    return rows


# ------------------------------------------------------------------------------ the evaluation report


def _run_of_source(src: dict) -> Path | None:
    """The run directory of a model as the evaluation report records it (its source dict)."""
    for key in ("adapter_dir", "model_dir"):
        p = src.get(key)
        if not p:
            continue
        for cand in (Path(p).parent, Path(p).parent.parent):
            if (cand / "spec.json").is_file() and (cand / "events.jsonl").exists():
                return cand
    return None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def report_section(models: dict, probe_file: str | os.PathLike | None = None) -> dict | None:
    """The evaluation report's memorization section, or None when there is nothing to say: a given
    probe.json, the probe.json of an evaluated run, or what an evaluated run planted or trained on
    (canaries, identifier rows) that no probe has looked at yet."""
    entries = []
    if probe_file:
        probe = _read_json(Path(probe_file))
        if probe is None or "canaries" not in probe:
            from ..errors import UserError

            raise UserError(f"{probe_file}: not a probe result (probe.json written by `medtui probe`)")
        entries.append({"model": "given", "probe_file": str(probe_file), "probe": _summary(probe)})
    for name, m in models.items():
        run = _run_of_source(m.get("source") or {})
        if run is None or (probe_file and entries[0]["probe"].get("run_id") == run.name):
            continue
        probe = _read_json(run / PROBE_FILE)
        data = _read_json(run / "data.json") or {}
        planted = (data.get("canaries") or {}).get("count", 0)
        id_rows = data.get("rows_with_identifiers", 0)
        if probe is None and not planted and not id_rows:
            continue
        entries.append({"model": name, "run_id": run.name, "planted_canaries": planted,
                        "rows_with_identifiers": id_rows,
                        "probe_file": str(run / PROBE_FILE) if probe else None,
                        "probe": _summary(probe) if probe else None})
    return {"entries": entries} if entries else None


def _summary(probe: dict) -> dict:
    keep = ("model", "run_id", "seconds", "notes", "canaries", "identifiers", "started")
    out = {k: probe.get(k) for k in keep}
    out["lines"] = [sentence(r) for r in probe_rows(probe)[1:]]
    return out


def section_lines(section: dict) -> list[str]:
    """The memorization section of report.md."""
    lines = ["## Memorization", ""]
    for e in section["entries"]:
        who = e.get("run_id") or e.get("probe_file")
        probe = e.get("probe")
        if probe is None:
            what = []
            if e.get("planted_canaries"):
                what.append(f"planted {e['planted_canaries']} canaries")
            if e.get("rows_with_identifiers"):
                what.append(f"trained on {e['rows_with_identifiers']} rows holding possible patient identifiers")
            lines.append(f"- **{e['model']}** (run {who}) {' and '.join(what)}, and was not probed: run "
                         f"`medtui probe {who}` to see whether it gives them back")
            continue
        label = (probe.get("model") or {}).get("label") or who
        lines.append(f"- **{e['model']}**: {label} (`{e.get('probe_file')}`)")
        lines += [f"  - {line}" for line in probe["lines"]]
    lines += ["", "A value counts as reproduced when the model, prompted greedily with the training text before it "
              "(a canary: and its first half), continues with the whole value verbatim. Identifiers are never shown, "
              "only their kind, row and field.", ""]
    return lines
