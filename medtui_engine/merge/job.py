"""The detached merge job: ``python -m medtui_engine.merge.job JOB_DIR``.

Reads ``JOB_DIR/spec.json`` (the plan and options written by the CLI or the TUI), writes progress to
``JOB_DIR/events.jsonl`` and ends with ``finished`` or ``failed``. Started by
:func:`medtui_engine.runs.jobs.launch_job` (new session, offline environment).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from ..offline import apply_offline, skip_cuda_only_packages
from ..runs.events import EventWriter
from ..runs.jobs import proc_start_time
from .plan import MergePlan

SPEC = "spec.json"
EVENTS = "events.jsonl"


def new_job_dir(workspace: Path) -> Path:
    jobs = Path(workspace) / "jobs"
    jobs.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = jobs / (f"merge-{stamp}" if n == 1 else f"merge-{stamp}-{n}")
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a job directory under {jobs}")


def write_job_spec(job_dir: Path, plan: MergePlan, options: dict | None = None) -> Path:
    path = Path(job_dir) / SPEC
    tmp = path.with_name(".spec.json.tmp")
    tmp.write_text(json.dumps({"kind": "merge", "plan": plan.as_dict(), "options": options or {}}, indent=2,
                              ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def run_job(job_dir: Path) -> int:
    apply_offline()
    skip_cuda_only_packages()
    job_dir = Path(job_dir)
    spec = json.loads((job_dir / SPEC).read_text(encoding="utf-8"))
    plan = MergePlan.from_dict(spec["plan"])
    options = spec.get("options") or {}
    t0 = time.time()
    with EventWriter(job_dir / EVENTS) as writer:
        try:
            writer.emit("merge_begin", pid=os.getpid(), start_time=proc_start_time(os.getpid()), base=plan.base_dir,
                        adapter=plan.adapter_dir, out=plan.out_dir, dtype=plan.dtype, method=plan.method,
                        tensors_total=None, bytes_total=plan.base_params * 2, adapter_only=plan.adapter_only,
                        run_id=plan.run_id, template=plan.template)
            from .pipeline import execute

            prov = execute(plan, job_dir, writer, verify_tokens=options.get("verify_tokens"))
            (job_dir / "result.json").write_text(json.dumps(prov, indent=2, ensure_ascii=False), encoding="utf-8")
            writer.emit("finished", step=int(plan.adapter_step or 0), adapter=plan.adapter_dir,
                        runtime_s=round(time.time() - t0, 2), final_loss=None, out=plan.out_dir,
                        serve_command=prov["serve"]["vllm"], gguf=prov.get("gguf"),
                        verification=prov.get("verification"))
            return 0
        except BaseException as exc:  # the job's only way to report: a terminal event, then exit
            tail = "".join(traceback.format_exception(exc))[-4000:]
            writer.emit("failed", step=None, error=str(exc) or type(exc).__name__, error_type=type(exc).__name__,
                        traceback_tail=tail)
            print(tail, file=sys.stderr)
            return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m medtui_engine.merge.job JOB_DIR", file=sys.stderr)
        return 2
    return run_job(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
