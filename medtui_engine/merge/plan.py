"""What a merge will do, decided before anything heavy runs: which adapter, which base, where the
output goes, in which dtype, how much disk it needs and how much there is.

Built from files alone (JSON and safetensors headers), so the CLI and the TUI's confirmation can show
it, and refuse a bad request (mismatched adapter, existing output, no room), in milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..demo import is_demo_model, model_label, resolve_model
from ..errors import UserError
from ..paths import ADAPTER_META
from ..runs.store import checkpoint_step, newest_adapter_checkpoint
from .adapter import AdapterInfo, check_against_base, is_adapter_dir, read_adapter
from .stfiles import SafetensorsError, model_tensors

DTYPES = ("bf16", "fp16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "chat_template.jinja", "chat_template.json")
# headroom over the estimate: config/index/provenance files and filesystem slack
DISK_MARGIN = 1.02
DISK_SLACK_BYTES = 64 << 20
PARTIAL_PREFIX = ".merge-partial-"


class OutputExists(UserError):
    """The output directory exists and replacing it was not asked for."""


@dataclass
class MergePlan:
    source: str                 # what the user named (run id, run dir, adapter dir)
    adapter_dir: str
    base_dir: str
    out_dir: str
    dtype: str                  # bf16 | fp16
    adapter_only: bool
    run_dir: str | None
    run_id: str | None
    template: str
    base_label: str
    base_is_demo: bool
    base_architecture: str
    base_params: int
    lora: dict = field(default_factory=dict)
    adapter_step: int | None = None
    adapter_kind: str = "adapter"   # final adapter | checkpoint-N | adapter directory
    backend: str | None = None
    trained_4bit: bool = False
    method: str = "stream"          # stream (medtui's own) | peft (PEFT merge_and_unload)
    method_reason: str = ""
    disk_needed: int = 0
    disk_free: int = 0
    out_exists: bool = False
    force: bool = False
    gguf: list = field(default_factory=list)   # GGUF types to write beside the merged model (f16, q8_0, ...)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MergePlan:
        from .gguf_export import parse_types

        known = {f for f in cls.__dataclass_fields__}
        plan = cls(**{k: v for k, v in d.items() if k in known})
        plan.gguf = parse_types(plan.gguf)   # specs written before GGUF types existed said true/false
        return plan


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _find_run_dir(path: Path) -> Path | None:
    """The run an adapter belongs to: the adapter itself, ``RUN/adapter`` or ``RUN/checkpoints/checkpoint-N``."""
    for cand in (path, path.parent, path.parent.parent):
        if (cand / "spec.json").is_file() and (cand / "events.jsonl").exists():
            return cand
    return None


def resolve_source(source: str | os.PathLike[str], runs_dir: Path | None) -> tuple[Path, Path | None, str, int | None]:
    """(adapter dir, run dir or None, kind, step) for a run id, run dir, checkpoint or adapter dir."""
    raw = str(source)
    path = Path(raw).expanduser()
    if not path.exists() and runs_dir is not None:
        from ..runs.store import find_run  # a run id, a unique prefix of one, or "last"

        try:
            path = find_run(Path(runs_dir), raw)
        except LookupError:
            pass
    if not path.exists():
        where = f" or a run id under {runs_dir}" if runs_dir else ""
        raise UserError(f"{raw} does not exist: give a run directory{where}, or an adapter directory")
    path = path.resolve()
    if is_adapter_dir(path):
        run_dir = _find_run_dir(path)
        step = checkpoint_step(path)
        kind = f"checkpoint-{step}" if step is not None else ("final adapter" if run_dir and path.name == "adapter" else "adapter directory")
        return path, run_dir, kind, step
    if (path / "spec.json").is_file():
        from ..jobs.status import JobStatus
        from ..runs.store import load_run

        _, state = load_run(path)
        if JobStatus(state.status).active:
            raise UserError(f"run {path.name} is still training: stop it first (medtui runs stop {path.name}), "
                            "or merge one of its checkpoints by giving the checkpoint directory")
        if is_adapter_dir(path / "adapter"):
            meta = _read_json(path / "adapter" / ADAPTER_META)
            return path / "adapter", path, "final adapter", meta.get("step")
        ckpt = newest_adapter_checkpoint(path)
        if ckpt is not None:
            return ckpt, path, f"checkpoint-{checkpoint_step(ckpt)} (newest)", checkpoint_step(ckpt)
        raise UserError(f"run {path.name} has no adapter yet: neither adapter/ nor a checkpoint. "
                        "It needs to train at least until its first checkpoint")
    raise UserError(f"{path} is neither a run directory (spec.json) nor a LoRA adapter (adapter_config.json)")


def _resolve_base(explicit: str | None, spec: dict, meta: dict, adapter: AdapterInfo) -> Path:
    candidates = []
    if explicit:
        candidates.append(("--base", explicit))
    else:
        for label, value in (("the run's spec.json", spec.get("model")), ("the adapter's medtui_adapter.json", meta.get("base_model")),
                             ("adapter_config.json", adapter.config.get("base_model_name_or_path"))):
            if value:
                candidates.append((label, str(value)))
    for label, value in candidates:
        try:
            return resolve_model(value)
        except FileNotFoundError as exc:
            if label == "--base" or value == "demo":
                raise UserError(f"base model ({label}): {exc}") from None
            continue
    if candidates:
        tried = "; ".join(f"{v} (from {lbl})" for lbl, v in candidates)
        raise UserError(f"cannot find the base model the adapter was trained on: tried {tried}. Pass it with --base DIR")
    raise UserError("the adapter does not say which base model it was trained on: pass it with --base DIR")


def _base_config(base: Path) -> dict:
    cfg = _read_json(base / "config.json")
    if not cfg:
        raise UserError(f"{base}/config.json is missing or unreadable: is {base} a Hugging Face model directory?")
    q = cfg.get("quantization_config")
    if q:
        method = q.get("quant_method") or ("bitsandbytes 4-bit" if q.get("load_in_4bit") else "quantized")
        raise UserError(
            f"the base model {base} is stored quantized ({method}). medtui merges into 16-bit weights only, never "
            "into quantized ones: pass the original 16-bit model with --base (training may load it in 4-bit; the "
            "merge must not)")
    return cfg


def default_dtype() -> str:
    """bf16 unless the box's GPU cannot compute in it (compute capability < 8.0: V100, T4): then fp16."""
    try:
        from ..gpu import read_nvml

        info = read_nvml(with_processes=False)
        caps = [g.compute_capability for g in info.gpus if g.compute_capability]
        if caps and min(caps) < (8, 0):
            return "fp16"
    except Exception:  # noqa: BLE001 - no NVML: a CPU box, where bf16 is fine
        pass
    return "bf16"


def disk_free(path: Path) -> int:
    """Free bytes on the filesystem that will hold ``path`` (its nearest existing ancestor)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def default_out(run_dir: Path | None, adapter_dir: Path, merged_dir: Path, adapter_only: bool) -> Path:
    if run_dir is not None:
        return run_dir / ("adapter-export" if adapter_only else "merged")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", adapter_dir.name).strip("-") or "adapter"
    return merged_dir / f"{name}-{stamp}{'-adapter' if adapter_only else ''}"


def make_plan(source: str | os.PathLike[str], *, base: str | None = None, out: str | None = None,
              dtype: str | None = None, adapter_only: bool = False, force: bool = False, gguf=None,
              runs_dir: Path | None = None, merged_dir: Path | None = None, check_disk: bool = True) -> MergePlan:
    """Resolve and check everything; raise UserError (one clear message) for anything the user must fix."""
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose bf16 or fp16 (merging is always into 16-bit weights)")
    adapter_dir, run_dir, kind, step = resolve_source(source, runs_dir)
    adapter = read_adapter(adapter_dir)
    spec = _read_json(run_dir / "spec.json") if run_dir else {}
    meta = _read_json(adapter_dir / ADAPTER_META)
    if not meta and run_dir and (run_dir / "adapter" / ADAPTER_META).exists():
        meta = _read_json(run_dir / "adapter" / ADAPTER_META)
    base_dir = _resolve_base(base, spec, meta, adapter)
    cfg = _base_config(base_dir)
    try:
        tensors = model_tensors(base_dir)
    except SafetensorsError as exc:
        raise UserError(f"base model: {exc}") from None
    check_against_base(adapter, tensors, cfg, base_dir)
    params = sum(t.numel for t in tensors.values())
    from .gguf_export import check_exportable, gguf_bytes, parse_types

    gguf_types = parse_types(gguf)
    if gguf_types and adapter_only:
        raise UserError("--gguf needs a merged model: drop --adapter-only (an adapter alone cannot be written as GGUF)")
    if gguf_types:
        check_exportable(base_dir, cfg)
    template = str(spec.get("template") or meta.get("template") or "seed")

    if out:
        out_dir = Path(out).expanduser().resolve()
    else:
        out_dir = default_out(run_dir, adapter_dir, merged_dir or (runs_dir.parent / "merged" if runs_dir else Path.cwd()),
                              adapter_only)
    if out_dir in (adapter_dir, base_dir) or adapter_dir.is_relative_to(out_dir) or base_dir.is_relative_to(out_dir):
        raise UserError(f"--out {out_dir} would overwrite the adapter or the base model; choose another directory")
    exists = out_dir.exists()
    if exists and not force:
        raise OutputExists(f"{out_dir} already exists: pass --force to replace it (it is replaced only once the new "
                        "merge is complete and verified), or choose another directory with --out")

    tok_bytes = sum((base_dir / f).stat().st_size for f in TOKENIZER_FILES if (base_dir / f).is_file())
    if adapter_only:
        needed = (adapter_dir / "adapter_model.safetensors").stat().st_size + tok_bytes
    else:
        needed = params * 2 + tok_bytes + sum(gguf_bytes(t, params) for t in gguf_types)
    needed = int(needed * DISK_MARGIN) + DISK_SLACK_BYTES
    free = disk_free(out_dir.parent)
    if check_disk and free < needed:
        raise UserError(
            f"not enough disk for the merge: it needs about {human_bytes(needed)} (base {params / 1e9:.2f} B parameters "
            f"x 2 bytes + tokenizer) and {out_dir.parent} has {human_bytes(free)} free. Free some space or choose "
            "another place with --out")

    method, reason = "stream", "plain LoRA pairs: merged tensor by tensor from the 16-bit base files"
    if not adapter.streamable:
        method = "peft"
        reason = "the adapter uses " + ", ".join(adapter.reasons_not_streamable) + ": merged with PEFT's merge_and_unload into the 16-bit base"
    lora = adapter.lora_settings()
    return MergePlan(
        source=str(source), adapter_dir=str(adapter_dir), base_dir=str(base_dir), out_dir=str(out_dir),
        dtype=dtype or default_dtype(), adapter_only=adapter_only, run_dir=str(run_dir) if run_dir else None,
        run_id=(meta.get("run_id") or (run_dir.name if run_dir else None)), template=template,
        base_label=model_label(base_dir), base_is_demo=is_demo_model(base_dir),
        base_architecture=", ".join(cfg.get("architectures") or [str(cfg.get("model_type", "?"))]),
        base_params=params, lora=lora, adapter_step=step if step is not None else meta.get("step"), adapter_kind=kind,
        backend=meta.get("backend") or spec.get("backend"), trained_4bit=bool(meta.get("base_loaded_in_4bit", spec.get("load_in_4bit"))),
        method=method, method_reason=reason, disk_needed=needed, disk_free=free, out_exists=exists, force=force,
        gguf=gguf_types,
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def partial_dir_for(out_dir: Path) -> Path:
    """The temporary directory a merge writes into: hidden, beside the output, named as partial."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{PARTIAL_PREFIX}{out_dir.name}-{os.getpid()}"


OWNER_FILE = ".merge-owner.json"


def _owner_alive(partial: Path) -> bool:
    """Whether the merge that writes ``partial`` is still running (pid alive, same start time, not a zombie)."""
    from ..runs.jobs import proc_start_time

    try:
        owner = json.loads((partial / OWNER_FILE).read_text(encoding="utf-8"))
        pid, start = int(owner["pid"]), owner.get("start_time")
    except (OSError, ValueError, KeyError, TypeError):
        pid_text = partial.name.rsplit("-", 1)[-1]
        if not pid_text.isdigit():
            return False
        pid, start = int(pid_text), None
    now = proc_start_time(pid)
    if now is None or (start is not None and now != start):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return stat[stat.rindex(b")") + 2:].split()[0] not in (b"Z", b"X")
    except (OSError, ValueError, IndexError):
        return False


def claim_partial(partial: Path) -> None:
    """Record who writes ``partial`` so a later merge can tell a dead merge's leftovers from a live one."""
    from ..runs.jobs import proc_start_time

    (partial / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}),
                                      encoding="utf-8")


def stale_partials(out_dir: Path) -> list[Path]:
    """Partial directories for ``out_dir`` left by merges that died."""
    out_dir = Path(out_dir)
    return [p for p in out_dir.parent.glob(f"{PARTIAL_PREFIX}{out_dir.name}-*") if p.is_dir() and not _owner_alive(p)]
