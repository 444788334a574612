"""The detached evaluation job: ``python -m medtui_engine.evaluate.job JOB_DIR``.

``JOB_DIR/spec.json`` holds everything the job needs (the cases themselves, each side's model, the
sampling settings, where the report goes), written by ``medtui eval`` or the Eval screen, so a resume
answers the same cases even if the case file changed since. Each side's model answers every case in
turn; each answer is appended to ``JOB_DIR/answers-<side>.jsonl`` (flushed and fsynced line by line)
before its ``eval_answer`` event, so a stopped or crashed job resumes where it was: the (side, case,
sample) triples on file are never answered again. Only when every answer is in is the report written,
into a temp dir renamed to the job's report dir (``<workspace>/reports/<job id>``): a partial run never
looks complete.

Stop: SIGTERM/SIGINT (the answer in progress is dropped and given again on resume) or a ``STOP`` file
(seen between answers); the job then ends with ``stopped``. Started by
:func:`medtui_engine.runs.jobs.launch_job` (new session, offline environment).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from ..errors import UserError
from ..offline import apply_offline, skip_cuda_only_packages
from ..runs.events import EventWriter, last_seq, read_events
from ..runs.jobs import STOP_FILE, job_alive, launch_job, proc_start_time
from .cases import EvalCase
from .events import JOB_MODULE

SPEC = "spec.json"
EVENTS = "events.jsonl"
JOBS_DIR = "jobs"
PREFIX = "eval-"
SIDES_ORDER = ("base", "tuned", "model")


def answers_path(job_dir: Path, side: str) -> Path:
    return Path(job_dir) / f"answers-{side}.jsonl"


# ------------------------------------------------------------------------------------- starting

def new_job_dir(workspace: Path) -> Path:
    jobs = Path(workspace) / JOBS_DIR
    jobs.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = jobs / (f"{PREFIX}{stamp}" if n == 1 else f"{PREFIX}{stamp}-{n}")
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a job directory under {jobs}")


def source_from_dict(d: dict):
    from ..infer import ModelSource

    return ModelSource(d["kind"], Path(d["model_dir"]), Path(d["adapter_dir"]) if d.get("adapter_dir") else None,
                       d["template"], d.get("template_from", "default"), d["label"], d.get("run_id"),
                       d.get("given", ""))


def eval_sources(model: str, base: str, runs_dir: Path | None, merged_dir: Path | None) -> dict:
    """The sides an evaluation compares, from what the user named: "base" (``base``: auto, the tuned
    model's own base when it has one; none; or a model) and "tuned"."""
    from ..infer import resolve_source

    tuned = resolve_source(model, runs_dir, merged_dir)
    sources = {}
    if base == "auto":
        if tuned.adapter_dir is not None or tuned.kind == "merged":
            sources["base"] = tuned.base()
    elif base != "none":
        sources["base"] = resolve_source(base, runs_dir, merged_dir).with_template(tuned.template)
    sources["tuned"] = tuned
    return sources


def make_spec(sources: dict, cases: list[EvalCase], cases_file: Path, settings, reports_dir: Path, job_dir: Path,
              *, samples: int = 1, synonyms: Path | None = None, batch: int | None = None) -> dict:
    """The job's whole input. ``sources``: side ("base", "tuned", or "model" alone) -> ModelSource."""
    return {
        "kind": "eval", "created_at": time.time(), "cases_file": str(cases_file),
        "cases": [c.as_dict() for c in cases], "samples": samples, "sampling": settings.as_dict(),
        "batch": batch,  # cases decoded together; None: runner.default_batch for the device
        "sources": {side: {**src.as_dict(), "given": src.given} for side, src in sources.items()},
        "synonyms": str(synonyms) if synonyms else None,
        "report_dir": str(Path(reports_dir) / job_dir.name),
    }


def write_job_spec(job_dir: Path, spec: dict) -> Path:
    path = Path(job_dir) / SPEC
    tmp = path.with_name(".spec.json.tmp")
    tmp.write_text(json.dumps(spec, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_job_spec(job_dir: Path) -> dict:
    try:
        spec = json.loads((Path(job_dir) / SPEC).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{job_dir}: not an evaluation job (no readable spec.json)") from None
    if not isinstance(spec, dict) or spec.get("kind") != "eval":
        raise UserError(f"{job_dir}: not an evaluation job (its spec.json is of another kind)")
    return spec


def start_eval(workspace: Path, reports_dir: Path, sources: dict, cases: list[EvalCase], cases_file: Path, settings,
               *, samples: int = 1, synonyms: Path | None = None, batch: int | None = None) -> Path:
    """Write the job's spec and launch the detached job; returns the job directory (follow it with
    ``JobFollower(job_dir, "eval")``)."""
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be at least 1 (got {batch})")
    job_dir = new_job_dir(workspace)
    write_job_spec(job_dir, make_spec(sources, cases, cases_file, settings, reports_dir, job_dir, samples=samples,
                                      synonyms=synonyms, batch=batch))
    launch_job(JOB_MODULE, job_dir)
    return job_dir


def resume_eval(job_dir: Path) -> int:
    """Start a stopped, failed or crashed evaluation job again; it answers only what is not on file.
    Returns the sequence number of the last event before it (follow with ``past_seq`` so the old
    terminal event is not taken for the new job's)."""
    job_dir = Path(job_dir)
    spec = read_job_spec(job_dir)
    if (Path(spec["report_dir"]) / "report.json").is_file():
        raise UserError(f"evaluation {job_dir.name} has finished; its report is in {spec['report_dir']}")
    if job_alive(job_dir):
        raise UserError(f"evaluation {job_dir.name} is still running; nothing to resume")
    past = last_seq(job_dir / EVENTS)
    launch_job(JOB_MODULE, job_dir)
    return past


def list_eval_jobs(workspace: Path) -> list[Path]:
    """Every evaluation job of the workspace, newest first."""
    jobs = Path(workspace) / JOBS_DIR
    if not jobs.is_dir():
        return []
    return sorted((p for p in jobs.iterdir() if p.name.startswith(PREFIX) and (p / SPEC).is_file()),
                  key=lambda p: p.name, reverse=True)


def find_eval_job(workspace: Path, ref: str) -> Path:
    """A job by directory, id, unique id prefix, or ``last``."""
    p = Path(ref).expanduser()
    if (p / SPEC).is_file():
        read_job_spec(p)
        return p.resolve()
    jobs = list_eval_jobs(workspace)
    if ref in ("last", "latest") and jobs:
        return jobs[0]
    matches = [j for j in jobs if j.name == ref] or [j for j in jobs if j.name.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    where = Path(workspace) / JOBS_DIR
    if not matches:
        raise UserError(f"no evaluation job {ref!r} in {where}"
                        + (f" (the newest is {jobs[0].name})" if jobs else " (there are none yet)"))
    raise UserError(f"{ref!r} matches {len(matches)} evaluation jobs ({', '.join(j.name for j in matches[:4])}); "
                    "give more of the id")


# ------------------------------------------------------------------------------------- answers on file

def read_answer_rows(path: Path) -> list[dict]:
    """The complete answer rows in one of the job's answers files. A torn last line (the job died while
    writing it) is dropped from the file, so the next append starts on a line of its own."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    rows, good, torn = [], [], False
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            torn = True
            continue
        if isinstance(row, dict) and "id" in row:
            rows.append(row)
            good.append(raw)
    if torn or (data and not data.endswith(b"\n")):
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in good))
        os.replace(tmp, path)
    return rows


class AnswerLog:
    """Appends answer rows to one side's answers file, each line flushed and fsynced before it counts."""

    def __init__(self, path: Path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fh = os.fdopen(fd, "ab", buffering=0)

    def append(self, row: dict) -> None:
        self._fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


# ------------------------------------------------------------------------------------- the job

class StopFlag:
    """Set by SIGTERM/SIGINT (which also cancels the answer in progress) or by a STOP file (seen between
    answers)."""

    def __init__(self, job_dir: Path):
        self.stop_file = Path(job_dir) / STOP_FILE
        self.event = threading.Event()
        self.reason: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)   # an SSH drop never ends a job

    def _on_signal(self, signum, frame) -> None:
        if self.reason is None:
            self.reason = f"signal {signal.Signals(signum).name}"
        self.event.set()

    def requested(self) -> bool:
        if self.reason is None and self.stop_file.exists():
            self.reason = "stop file"
            self.event.set()
        return self.event.is_set()


def _previous_runtime(job_dir: Path) -> float:
    return sum(float(ev.get("runtime_s") or 0) for ev in read_events(job_dir / EVENTS)
               if ev.get("type") in ("stopped", "failed") and isinstance(ev.get("runtime_s"), (int, float)))


def run_job(job_dir: Path) -> int:
    apply_offline()
    skip_cuda_only_packages()
    job_dir = Path(job_dir)
    flag = StopFlag(job_dir)
    flag.install()
    t0 = time.time()
    earlier = _previous_runtime(job_dir)
    done = 0
    with EventWriter(job_dir / EVENTS) as writer:
        try:
            spec = read_job_spec(job_dir)
            from ..infer import LoadOptions, SamplingSettings, load_model
            from .matching import load_synonyms
            from .runner import Item, answer_items, default_batch, report_from_answers

            cases = [EvalCase.from_dict(c) for c in spec["cases"]]
            samples = int(spec.get("samples") or 1)
            settings = SamplingSettings(**spec["sampling"]).checked()
            sides = sorted(spec["sources"], key=lambda s: SIDES_ORDER.index(s) if s in SIDES_ORDER else 99)
            sources = {side: source_from_dict(spec["sources"][side]) for side in sides}
            synonyms = load_synonyms(Path(spec["synonyms"]) if spec.get("synonyms") else None)
            rows = {side: read_answer_rows(answers_path(job_dir, side)) for side in sides}
            known = {c.id for c in cases}
            finished = {side: {(str(r["id"]), int(r.get("sample", 0))) for r in rows[side] if str(r["id"]) in known}
                        for side in sides}
            done = sum(len(v) for v in finished.values())
            writer.emit("eval_begin", pid=os.getpid(), start_time=proc_start_time(os.getpid()), cases=len(cases),
                        samples=samples, sides=sides, total=len(cases) * samples * len(sides), done=done,
                        done_by_side={s: len(v) for s, v in finished.items()},
                        labels={s: sources[s].label for s in sides})
            items = [Item(case, j, i) for i, case in enumerate(cases) for j in range(samples)]
            pace: dict[str, dict] = {}   # answers a minute, per side, in this process (after loading)
            for side in sides:
                todo = [it for it in items if (it.case.id, it.sample) not in finished[side]]
                if not todo:
                    continue
                if flag.requested():
                    break
                source = sources[side]
                writer.emit("eval_model", side=side, phase="loading", label=source.label, seconds=None)
                t_load = time.time()
                loaded = load_model(source, LoadOptions())
                try:
                    writer.emit("eval_model", side=side, phase="loaded", label=source.label,
                                seconds=round(time.time() - t_load, 2))
                    log = AnswerLog(answers_path(job_dir, side))
                    try:
                        if flag.requested():
                            break
                        t_item = time.time()
                        batch = int(spec.get("batch") or default_batch(
                            loaded, [it.case.question for it in todo], settings.max_new_tokens))
                        t_side, n_side = time.time(), 0
                        for item, row in answer_items(loaded, source, todo, settings, flag.event, batch):
                            log.append(row)   # on file (fsynced) before it is reported as done
                            rows[side].append(row)
                            finished[side].add((item.case.id, item.sample))
                            done += 1
                            n_side += 1
                            writer.emit("eval_answer", side=side, id=item.case.id, sample=item.sample,
                                        index=item.index, seconds=round(time.time() - t_item, 3), batch=batch)
                            t_item = time.time()
                        if n_side:
                            pace[side] = {"answers": n_side, "seconds": round(time.time() - t_side, 2), "batch": batch,
                                          "per_minute": round(60 * n_side / max(time.time() - t_side, 1e-9), 2)}
                            flag.requested()  # a STOP file cancels before the next answer
                    finally:
                        log.close()
                finally:
                    loaded.unload()
                if flag.requested():
                    break
            if flag.requested() or any(len(finished[s]) < len(items) for s in sides):
                writer.emit("stopped", step=done, checkpoint=None, reason=flag.reason or "on request",
                            runtime_s=round(time.time() - t0, 2))
                return 0
            order = {(c.id, j): n for n, (c, j) in enumerate((it.case, it.sample) for it in items)}
            answers = {side: sorted((r for r in rows[side] if (str(r["id"]), int(r.get("sample", 0))) in order),
                                    key=lambda r: order[(str(r["id"]), int(r.get("sample", 0)))]) for side in sides}
            runtime = round(earlier + time.time() - t0, 2)
            meta = {"cases_file": spec["cases_file"], "sampling": settings.as_dict(), "started": spec.get("created_at"),
                    "seconds": runtime, "job": job_dir.name, "pace": pace}
            final = Path(spec["report_dir"])
            report_from_answers({s: sources[s].as_dict() for s in sides}, answers,
                                meta, final, synonyms)
            writer.emit("eval_written", report_dir=str(final))
            writer.emit("finished", step=done, adapter="", runtime_s=runtime, final_loss=None, report_dir=str(final))
            return 0
        except BaseException as exc:  # the job's only way to report: a terminal event, then exit
            tail = "".join(traceback.format_exception(exc))[-4000:]
            writer.emit("failed", step=done, error=str(exc) or type(exc).__name__, error_type=type(exc).__name__,
                        traceback_tail=tail, runtime_s=round(time.time() - t0, 2))
            print(tail, file=sys.stderr)
            return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m medtui_engine.evaluate.job JOB_DIR", file=sys.stderr)
        return 2
    return run_job(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
