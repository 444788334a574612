"""One merge from start to installed output: write into a hidden partial directory, verify it there,
write ``medtui.json`` last, then rename it into place. Anything short of that leaves no directory
under the output's name, only ``.merge-partial-NAME-PID`` without ``medtui.json`` (cleaned up by the
next merge once its process is gone).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..errors import UserError
from ..paths import PROVENANCE_FILE
from .card import write_card
from .core import file_hashes, write_adapter_export, write_model
from .gguf_export import parse_types
from .plan import OWNER_FILE, MergePlan, claim_partial, partial_dir_for, stale_partials
from .serve import served_name, vllm_command
from .stfiles import fsync_tree
from .verify import verify, verify_adapter_export

FORMAT_VERSION = 1


class VerificationFailed(RuntimeError):
    def __init__(self, record: dict):
        self.record = record
        super().__init__("verification failed: " + ", ".join(record.get("failed_checks") or []) +
                         f" (max |logit diff| {record.get('max_abs_logit_diff')}, top-1 agreement "
                         f"{record.get('top1_agreement')}); the merged model was not installed")


def versions() -> dict:
    out = {"medtui": __version__}
    for dist in ("torch", "transformers", "peft", "safetensors", "accelerate", "unsloth", "trl"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def provenance(plan: MergePlan, merge: dict, record: dict, files: dict, serve: str, seconds: dict,
               card: dict | None = None) -> dict:
    return {
        "format": FORMAT_VERSION,
        "kind": "adapter" if plan.adapter_only else "merged",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": {"path": plan.base_dir, "label": plan.base_label, "architecture": plan.base_architecture,
                 "parameters": plan.base_params, "random_weights_demo": plan.base_is_demo},
        "adapter": {"path": plan.adapter_dir, "kind": plan.adapter_kind, "step": plan.adapter_step},
        "run_id": plan.run_id,
        "run_dir": plan.run_dir,
        "template": plan.template,
        "lora": plan.lora,
        "trained_with": {"backend": plan.backend, "base_loaded_in_4bit": plan.trained_4bit},
        "merge": {"dtype": plan.dtype, "method": plan.method, "why": plan.method_reason,
                  "into": "16-bit base weights read from the base's safetensors files" if plan.method == "stream"
                  else "the base loaded in 16 bits (PEFT merge_and_unload)",
                  **{k: merge.get(k) for k in ("shards", "threads", "device", "tensors", "merged_tensors")},
                  "seconds": seconds},
        "generation": merge.get("generation"),
        "tokenizer_files": merge.get("tokenizer_files"),
        "verification": record,
        "warnings": list(record.get("warnings") or []),
        "card": card,
        "serve": {"vllm": serve},
        "versions": versions(),
        "files": files,
        "files_note": "sha256 of every file in this directory except medtui.json itself",
    }


def _install(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished directory into place; an existing output (with --force) goes only after."""
    old = None
    if out.exists():
        if not force:
            raise FileExistsError(f"{out} appeared while merging; the new merge is left in {tmp}")
        old = out.with_name(f".merge-replaced-{out.name}-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def execute(plan: MergePlan, job_dir: Path, writer, *, verify_tokens: int | None = None) -> dict:
    """Run the merge described by ``plan``; emits progress through ``writer``; returns medtui.json.

    Only a failed correctness check refuses the install (:class:`VerificationFailed`); a model that
    does not stop by itself is installed with the warning in ``medtui.json`` (``warnings``)."""
    out = Path(plan.out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_partials(out):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = partial_dir_for(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=0o755)
    claim_partial(tmp)
    last = [0.0]

    def progress(phase: str, done: int, total: int, nbytes: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= 0.5:   # a few events per second at most
            last[0] = now
            writer.emit("merge_progress", phase=phase, done=done, total=total, bytes_written=nbytes)

    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        if plan.adapter_only:
            merge = write_adapter_export(plan, tmp)
            seconds["write"] = round(time.perf_counter() - t0, 3)
            record = verify_adapter_export(plan, tmp)
            merge.update(shards=0, device="cpu", hashes={})
        else:
            merge, tokenizer = write_model(plan, tmp, progress)
            seconds["write"] = round(time.perf_counter() - t0, 3)
            writer.emit("merge_written", seconds=seconds["write"], bytes=merge["bytes"], shards=merge["shards"],
                        device=merge["device"])
            writer.emit("merge_progress", phase="verify", done=0, total=1, bytes_written=merge["bytes"])
            t1 = time.perf_counter()
            record = verify(plan, tmp, job_dir, verify_tokens, tokenizer=tokenizer)
            seconds["verify"] = round(time.perf_counter() - t1, 3)
        writer.emit("merge_verified", max_abs_logit_diff=record.get("max_abs_logit_diff"),
                    top1_agreement=record.get("top1_agreement"), failed_checks=record.get("failed_checks", []),
                    record=record)
        (Path(job_dir) / "verification.json").write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
        if not record.get("passed"):
            raise VerificationFailed(record)
        gguf_entry = _write_gguf(plan, tmp, out, job_dir, writer, seconds, tokenizer) \
            if parse_types(plan.gguf) and not plan.adapter_only else None
        merge["gguf"] = gguf_entry
        (tmp / OWNER_FILE).unlink(missing_ok=True)
        card = None if plan.adapter_only else write_card(plan, tmp, record, versions(), merge)
        files = file_hashes(tmp, merge.get("hashes"))
        serve = vllm_command(out, plan.dtype, served_name(plan.run_id, out), plan.adapter_only, plan.base_dir)
        prov = provenance(plan, merge, record, files, serve, seconds, card)
        if gguf_entry is not None:   # medtui.json has a gguf entry only where GGUF was asked for
            prov["gguf"] = gguf_entry
        if gguf_entry and (not gguf_entry.get("done") or gguf_entry.get("passed") is False):
            prov["warnings"].append(f"GGUF: {gguf_entry.get('why')}")
        fsync_tree(tmp)
        # medtui.json last: a directory without it was never finished
        with open(tmp / PROVENANCE_FILE, "w", encoding="utf-8") as fh:
            json.dump(prov, fh, indent=2, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        _install(tmp, out, plan.force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return prov


def _write_gguf(plan: MergePlan, tmp: Path, out: Path, job_dir: Path, writer, seconds: dict, tokenizer=None) -> dict:
    """GGUF files of the verified merge, written into its partial directory (so medtui.json, the card
    and the file hashes include them). A GGUF that cannot be written or fails its check does not
    refuse the merged model: the entry says why, and medtui.json carries it as a warning."""
    import traceback

    from .gguf_export import export, failed_entry

    types = parse_types(plan.gguf)
    log = Path(job_dir) / "gguf.log"
    writer.emit("merge_progress", phase="gguf", done=0, total=len(types), bytes_written=None)
    t0 = time.perf_counter()
    try:
        entry = export(tmp, types, template=plan.template, name=served_name(plan.run_id, out), install_dir=out,
                       emit=writer.emit, log_path=log, tokenizer=tokenizer)
    except Exception as exc:  # noqa: BLE001 - the merged model stays good; the reason goes into medtui.json
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(traceback.format_exc())
        shutil.rmtree(tmp / "gguf", ignore_errors=True)
        entry = failed_entry(types, f"{exc} (details in {log})" if not isinstance(exc, UserError) else str(exc))
    seconds["gguf"] = round(time.perf_counter() - t0, 3)
    return entry
