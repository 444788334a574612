"""What a job is doing, as rows (:class:`medtui_engine.rows.Row`) for both front ends.

Each fact is worded here once: the CLI prints the rows (:func:`medtui_engine.rows.format_rows`),
the TUI styles them (``medtui/widgets/rows.py``). What differs between the front ends is only how
the user acts next (a command or a key): that is a :class:`NextSteps` the caller passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..evaluate.events import EvalState
from ..fmt import fmt_duration
from ..merge.events import MergeState
from ..rows import Row, Severity
from ..runs.state import RunState
from .status import JobStatus


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# ------------------------------------------------------------------------------------- events

def _train_event(ev: dict, state: RunState | None) -> Row | None:
    t = ev.get("type")
    total = state.total_steps if state and state.total_steps else None
    if t == "job_start":
        how = f"resumed from step {ev.get('resumed_from')}" if ev.get("resumed_from") is not None else "started"
        return Row("", f"job {ev.get('pid')} {how} (backend {ev.get('backend')})")
    if t == "resume_settings":
        return Row("", f"settings from step {ev.get('step')} on: {ev.get('change')}")
    if t == "train_begin":
        tokens = ev.get("train_tokens")
        return Row("", f"training {ev.get('model_label') or ev.get('model')} on {ev.get('device')}: "
                       f"{ev.get('num_examples')} cases, {_f(tokens, ',')} tokens, steps {ev.get('start_step')}->{ev.get('total_steps')} "
                       f"(batch {ev.get('micro_batch')} x accumulation {ev.get('grad_accum')}, max length {ev.get('max_seq_length')})")
    if t == "log":
        step = f"{ev.get('step')}/{total}" if total else str(ev.get("step"))
        tps = ev.get("tokens_per_s")
        return Row("", f"step {step}  epoch {_f(ev.get('epoch'), '.2f')}  loss {_f(ev.get('loss'), '.4f')}  "
                       f"lr {_f(ev.get('lr'), '.2e')}  grad {_f(ev.get('grad_norm'), '.3f')}  "
                       f"{'-' if tps is None else f'{tps:,.0f}'} tok/s  ETA {fmt_duration(ev.get('eta_s'))}")
    if t == "eval":
        return Row("", f"eval at step {ev.get('step')}: loss {_f(ev.get('eval_loss'), '.4f')}")
    if t == "checkpoint":
        return Row("", f"checkpoint saved at step {ev.get('step')}")
    if t == "fit_probe":
        from ..fit import probe_sentence

        bad = ev.get("oom") or ev.get("fits") is False
        return Row("", probe_sentence(ev), Severity.WARNING if bad else Severity.INFO)
    if t == "notice":
        return Row("", f"note: {ev.get('message')}", Severity.WARNING if ev.get("level") == "warning" else Severity.INFO)
    if t == "finished":
        return Row("", f"finished at step {ev.get('step')} in {fmt_duration(ev.get('runtime_s'))}; adapter: {ev.get('adapter')}",
                   Severity.OK)
    if t == "stopped":
        return Row("", f"stopped at step {ev.get('step')} ({ev.get('reason')}); checkpoint: {ev.get('checkpoint') or 'none'}")
    if t == "failed":
        return Row("", f"FAILED at step {ev.get('step')}: {ev.get('error')}", Severity.PROBLEM)
    return None


def describe_fit(state: RunState) -> Row | None:
    """The measured fit beside the estimate (the fit probe's event), for the run's views; None before it."""
    ev = getattr(state, "fit_probe", None)
    if not ev:
        return None
    from ..fit import probe_sentence

    bad = ev.get("oom") or ev.get("fits") is False
    return Row("will it fit", probe_sentence(ev), Severity.WARNING if bad else Severity.INFO)


def describe_merge_progress(state: MergeState) -> Row | None:
    """Where a merge job is: its phase and how far (None before it began)."""
    if state.phase == "merge":
        if state.method == "peft":
            return Row("merge", "with PEFT's merge_and_unload ...")
        if state.total:
            return Row("merge", f"{int(state.done)}/{int(state.total)} tensors, {state.bytes_written / 2**30:.2f} GiB written")
        return Row("merge", "...")
    if state.phase == "verify":
        return Row("verify", "loading the merged model with plain transformers and comparing it with base + adapter ...")
    if state.phase == "gguf":
        done = len(state.gguf_files)
        return Row("gguf", f"{done} file(s) written; writing GGUF, then loading each back in a fresh process and "
                           "comparing its logits with the merged model ...")
    if state.phase and state.phase != "done":
        return Row(state.phase, "...")
    return None


def _verification_figures(v: dict) -> str:
    dec = v.get("top1_agreement_decisive")
    return (f"max |logit diff| vs base + adapter {v.get('max_abs_logit_diff')} (the adapter itself moves them by up to "
            f"{v.get('adapter_effect_max_abs_logit')}); top-1 agreement {v.get('top1_agreement'):.2%} over "
            f"{v.get('positions')} positions"
            + (f", {dec:.2%} at the {v.get('decisive_positions')} decisive ones" if dec is not None else ""))


def _merge_event(ev: dict, state: MergeState) -> Row | None:
    kind = ev.get("type")
    if kind == "merge_begin":
        return Row("", f"merging {state.adapter} into {state.base} -> {state.out} ({state.dtype}, {state.method})")
    if kind == "merge_progress":
        return describe_merge_progress(state)
    if kind == "merge_written":
        return Row("written", f"in {_f(ev.get('seconds'), '.1f')} s ({ev.get('shards')} shard(s), on {ev.get('device')}); verifying")
    if kind == "gguf_written":
        return Row("gguf", f"{ev.get('gguf_type')} written: {ev.get('file')} ({(ev.get('bytes') or 0) / 2**20:.1f} MiB "
                           f"in {_f(ev.get('seconds'), '.1f')} s)")
    if kind == "gguf_verified":
        ok = bool(ev.get("passed"))
        return Row("gguf", f"{ev.get('gguf_type')} loads back: max |logit diff| {ev.get('max_abs_logit_diff')} "
                           f"(tolerance {ev.get('tolerance')} of the largest logit)" + ("" if ok else "; FAILED, removed"),
                   Severity.OK if ok else Severity.PROBLEM)
    if kind == "merge_verified":
        v = state.verification
        failed = v.get("failed_checks")
        if "max_abs_logit_diff" in v and v.get("top1_agreement") is not None:
            return Row("verified", _verification_figures(v) + (f"; FAILED: {', '.join(failed)}" if failed else ""),
                       Severity.PROBLEM if failed else Severity.OK)
        return Row("verified", "", Severity.OK)
    return None


def describe_event(ev: dict, state: RunState | MergeState | EvalState | None = None) -> Row | None:
    """One event as a row (None for events not worth a line: heartbeats). ``state`` is the job's
    state right after the event was folded (a training run's total steps, a merge's figures)."""
    if isinstance(state, MergeState):
        return _merge_event(ev, state)
    if isinstance(state, EvalState):
        return _eval_event(ev, state)
    return _train_event(ev, state)


def event_line(row: Row) -> str:
    """An event row as the CLI prints it while following: the sentence, or ``  label  value``."""
    if not row.label:
        return row.value
    return f"  {row.label}  {row.value}".rstrip()


# ------------------------------------------------------------------------------------- runs

@dataclass(frozen=True)
class NextSteps:
    """How a front end words what the user does next (a command, a key). ``{run_id}`` and
    ``{run_dir}`` are filled in."""

    resume: str      # a subject + "resumes": "r resumes"
    merge: str       # "... merges it"
    console: str     # "... asks it" / "... opens the console with it"
    log: str         # where the job's output is
    resume_with: str = ""   # resuming with the advised settings ({flags}: their options); "" -> resume

    def fill(self, text: str, run_id: str, run_dir: Path | str | None, flags: str = "") -> str:
        return text.format(run_id=run_id, run_dir=run_dir or run_id, flags=flags)


CLI_STEPS = NextSteps(
    resume="`medtui runs resume {run_id}` resumes",
    merge="`medtui merge {run_id}` merges it",
    console="`medtui ask --model {run_id} CASE` asks it",
    log="details: {run_dir}/stdout.log",
    resume_with="`medtui runs resume {run_id} {flags}` resumes with it",
)


def _advised_resume(state: RunState, steps: NextSteps, run_id: str, run_dir) -> str:
    """After an OOM: how to resume with the advised settings, and from where."""
    from ..train.resume import resume_flags

    advice = state.advice or {}
    ckpt = advice.get("checkpoint")
    where = f"from the checkpoint of step {Path(ckpt).name.rsplit('-', 1)[-1]}" if ckpt else \
        "from step 0 (no checkpoint was saved)"
    return f"{steps.fill(steps.resume_with or steps.resume, run_id, run_dir, resume_flags(advice['settings']))} {where}"


def describe_run_status(status: str, state: RunState, *, run_dir: Path | str | None = None,
                        steps: NextSteps = CLI_STEPS, now: float | None = None, notice: bool = True) -> list[Row]:
    """How a training run stands, in words, with what to do next: one row for an ended or stalled
    run, the newest notice for a running one (with ``notice``), nothing otherwise."""
    status = JobStatus(status)
    run_id = state.run_id or (Path(run_dir).name if run_dir else "")

    def hint(*parts: str) -> str:
        return "; ".join(steps.fill(p, run_id, run_dir) for p in parts if p)

    if status is JobStatus.FAILED and state.advice and state.advice.get("settings"):
        return [Row("outcome", f"failed at step {state.step}: {state.error or state.error_type}", Severity.PROBLEM,
                    hint(steps.log) + "; " + _advised_resume(state, steps, run_id, run_dir))]
    if status is JobStatus.FAILED:
        return [Row("outcome", f"failed at step {state.step}: {state.error or state.error_type or 'unknown error'}",
                    Severity.PROBLEM, hint(steps.log, f"fix the cause, then {steps.resume}"))]
    if status is JobStatus.CRASHED:
        return [Row("outcome", f"crashed at step {state.step}: the job died without a word (killed, out of memory?)",
                    Severity.PROBLEM, hint(steps.log, f"{steps.resume} from the newest checkpoint"))]
    if status is JobStatus.STALLED:
        ago = (time.time() if now is None else now) - (state.last_event_t or (time.time() if now is None else now))
        return [Row("status", f"stalled: the job is alive but has written nothing for {fmt_duration(ago)}",
                    Severity.WARNING, hint(steps.log))]
    if status is JobStatus.STOPPED:
        return [Row("outcome", f"stopped ({state.stop_reason or 'on request'}) at step {state.step}", Severity.INFO,
                    hint(f"{steps.resume} from the checkpoint"))]
    if status is JobStatus.FINISHED:
        return [Row("outcome", f"finished: adapter in {state.adapter or 'adapter/'}", Severity.OK,
                    ", ".join(steps.fill(p, run_id, run_dir) for p in (steps.merge, steps.console) if p))]
    if notice and state.notices:
        return [Row("note", f"note: {state.notices[-1]}", Severity.INFO)]
    return []


# ------------------------------------------------------------------------------------- merges

def describe_merge_plan(plan) -> list[Row]:
    """What a merge will do, before it starts: base, adapter, output, what it writes, disk."""
    from ..merge.plan import human_bytes

    p = plan
    r = (p.lora or {}).get("r")
    rows = [
        Row("Base model", f"{p.base_dir} ({p.base_label}, {p.base_architecture}, {p.base_params / 1e9:.2f} B params)"),
        Row("Adapter", f"{p.adapter_dir} ({p.adapter_kind}{', run ' + p.run_id if p.run_id else ''}"
                       f"{f', r={r}' if r is not None else ''})"),
        Row("Output", p.out_dir + (" (replaces the existing one)" if p.out_exists else ""),
            Severity.WARNING if p.out_exists else Severity.INFO),
        Row("Writes", "adapter only (serve with vLLM --enable-lora)" if p.adapter_only else
            f"merged {p.dtype} weights (safetensors), tokenizer, chat template, generation config, medtui.json"),
        Row("Dtype", p.dtype),
        Row("Disk", f"needs about {human_bytes(p.disk_needed)}, {human_bytes(p.disk_free)} free", Severity.OK),
        Row("Template", p.template),
    ]
    if not p.adapter_only:
        rows.append(Row("Method", f"{p.method}: {p.method_reason}" if p.method_reason else p.method))
        rows.append(Row("GGUF", (", ".join(p.gguf) + " (each verified against the merged model, with an Ollama "
                                 "Modelfile)") if p.gguf else "none"))
    if p.trained_4bit and not p.adapter_only:
        rows.append(Row("Note", "the run asked for a 4-bit load of the base; the merge reads the 16-bit base weights",
                        Severity.WARNING))
    return rows


def _stop_rows(v: dict) -> list[Row]:
    """The verification's two stop rows: the contract and the forced-EOS halt (correctness), and
    whether the answers ended by themselves (behaviour: a warning with numbers, never a failure)."""
    if not (v.get("greedy") or v.get("forced_eos") or v.get("behaviour")):
        return []
    forced = all(h.get("halted") for h in v.get("forced_eos") or [])
    contract = v.get("stop_contract")
    agree = contract is None or (v.get("checks") or {}).get("stop_token_contract", True)
    where = (f"template end of turn {contract.get('turn_end')}, tokenizer EOS {contract.get('tokenizer_eos')}; "
             if contract else "")
    rows = [Row("Stop tokens", f"EOS ids {v.get('generation_eos_ids')} in generation_config.json ({where}"
                               f"{'they agree' if agree else 'they DISAGREE'}); forced EOS halts: {'yes' if forced else 'NO'}",
                Severity.OK if forced and agree else Severity.PROBLEM)]
    b = v.get("behaviour")
    if b and b.get("prompts"):
        lengths = b.get("tokens_when_stopped") or {}
        figures = (f"{b['stopped']} of {b['prompts']} probe answers ended by themselves within {b['max_new_tokens']} "
                   f"tokens, cut-off rate {b['cut_off_rate']:.0%}"
                   + (f" (ended after {lengths['min']}-{lengths['max']} tokens, mean {lengths['mean']})" if lengths else ""))
        if b.get("random_weights_demo"):
            rows.append(Row("Stops", figures + "; random-weight demo: not expected to stop", Severity.INFO))
        elif b.get("warning"):
            from ..merge.verify import BEHAVIOUR_FIX

            rows.append(Row("Stops", figures + "; installed anyway: the model may not have learned to end its answers",
                            Severity.WARNING, BEHAVIOUR_FIX))
        else:
            rows.append(Row("Stops", figures, Severity.OK))
        return rows
    # a medtui.json written before the behaviour check: one greedy answer
    g = v.get("greedy") or {}
    natural = f"yes, after {g.get('eos_at')} tokens" if g.get("reached_eos") else f"no, within {g.get('max_new_tokens')}"
    note = "" if v.get("natural_eos_required") else " (random-weight demo: not required)"
    return [Row("Stops", f"EOS ids {v.get('generation_eos_ids')} in generation_config.json; forced EOS halts: "
                         f"{'yes' if forced else 'NO'}; greedy answer reached EOS by itself: {natural}{note}",
                Severity.OK if forced else Severity.PROBLEM)]


def describe_merge_result(state: MergeState, result: dict | None = None, *, status: str | None = None,
                          job_dir: Path | str | None = None) -> list[Row]:
    """How a merge ended: the output, its verification, how to serve it; or why it failed.
    ``result`` is the job's ``result.json`` (when written); ``status`` the follower's (crashed)."""
    status = JobStatus(status or state.status)
    log = f"{job_dir}/stdout.log" if job_dir else "the job's stdout.log"
    if status is not JobStatus.FINISHED:
        if status is JobStatus.CRASHED:
            error = f"the merge job died without finishing (see {log})"
        else:
            error = state.error or "unknown error"
        return [Row("Failed", error, Severity.PROBLEM, f"nothing was installed at the output; details in {log}")]
    v = (result or {}).get("verification") or state.verification or {}
    rows = [Row("Output", state.out, Severity.OK)]
    if v.get("top1_agreement") is not None:
        failed = v.get("failed_checks")
        rows.append(Row("Logits", _verification_figures(v), Severity.PROBLEM if failed else Severity.OK,
                        f"failed checks: {', '.join(failed)}" if failed else ""))
    rows += _stop_rows(v)
    checks = v.get("checks") or {}
    if "loads_without_peft_unsloth" in checks:
        loads = checks["loads_without_peft_unsloth"]
        rows.append(Row("Loads", f"with plain transformers, no peft/unsloth: {'yes' if loads else 'NO'}",
                        Severity.OK if loads else Severity.PROBLEM))
    if state.out:
        rows.append(Row("Provenance", f"{Path(state.out) / 'medtui.json'} (sha256 of every file)"))
        if (result or {}).get("card"):
            rows.append(Row("Model card", str(Path(state.out) / (result or {})["card"].get("file", "README.md"))))
    rows.append(Row("Serve", state.serve_command or "", Severity.OK))
    g = (result or {}).get("gguf")
    if isinstance(g, dict):
        rows += _gguf_rows(g)
    return rows


def _gguf_rows(g: dict) -> list[Row]:
    """The GGUF files of a merge (medtui.json's gguf entry): each checked file and its ``ollama create``."""
    if not g.get("done"):
        return [Row("GGUF", "not written", Severity.WARNING, str(g.get("why") or ""))]
    rows = []
    for f in g.get("files") or []:
        v = f.get("verification") or {}
        if f.get("removed"):
            rows.append(Row("GGUF", f"{f.get('type')}: failed its check and was removed",
                            Severity.PROBLEM, str(v.get("error") or f"max |logit diff| {v.get('max_abs_logit_diff')}")))
            continue
        rows.append(Row("GGUF", f"{Path(g.get('path') or '') / str(f.get('file'))} ({f.get('type')}; max |logit diff| "
                                f"{v.get('max_abs_logit_diff')} vs the merged model, tolerance {v.get('tolerance')} of "
                                "the largest logit)", Severity.OK))
        rows.append(Row("Ollama", str(f.get("ollama_create")), Severity.OK))
    if g.get("why"):
        rows.append(Row("GGUF", str(g["why"]), Severity.WARNING))
    return rows


# ------------------------------------------------------------------------------------- evaluations

EVAL_CLI_STEPS = NextSteps(
    resume="`medtui eval resume {run_id}` resumes",
    merge="",
    console="",
    log="details: {run_dir}/stdout.log",
)


def _answers(state: EvalState) -> str:
    return f"{state.done}/{state.total} answers"


def describe_eval_progress(state: EvalState) -> Row | None:
    """Where an evaluation job is: answers on file in all and per side (None before it began)."""
    if not state.sides:
        return None
    per_side = ", ".join(f"{side} {state.done_by_side.get(side, 0)}/{state.cases * state.samples}" for side in state.sides)
    if state.phase == "loading":
        doing = f"; loading the {state.side} model" if state.side else ""
    elif state.phase == "scoring":
        doing = "; scoring and writing the report"
    elif state.phase == "answering" and state.side:
        doing = f"; {state.side} answering"
    else:
        doing = ""
    return Row("progress", f"{_answers(state)} ({per_side}){doing}")


def _eval_event(ev: dict, state: EvalState) -> Row | None:
    kind = ev.get("type")
    if kind == "eval_begin":
        samples = f" x {state.samples} samples" if state.samples > 1 else ""
        again = f"resumed with {state.done} of {state.total} answers on file" if state.done else "started"
        return Row("", f"evaluation {again}: {state.cases} cases{samples}, sides {', '.join(state.sides)}")
    if kind == "eval_model":
        if ev.get("phase") == "loading":
            return Row(state.side, f"loading {ev.get('label')} ...")
        return Row(state.side, f"loaded in {_f(ev.get('seconds'), '.1f')} s")
    if kind == "eval_answer":
        sample = f" sample {ev.get('sample')}" if state.samples > 1 else ""
        return Row(state.side, f"{_answers(state)}: {ev.get('id')}{sample} in {_f(ev.get('seconds'), '.1f')} s")
    if kind == "eval_written":
        return Row("report", str(ev.get("report_dir")), Severity.OK)
    if kind == "finished":
        return Row("", f"finished: {_answers(state)} in {fmt_duration(state.runtime_s)}", Severity.OK)
    if kind == "stopped":
        return Row("", f"stopped ({state.stop_reason}) with {_answers(state)} on file")
    if kind == "failed":
        return Row("", f"FAILED after {_answers(state)}: {state.error}", Severity.PROBLEM)
    return None


def describe_eval_status(status: str, state: EvalState, *, job_dir: Path | str | None = None,
                         steps: NextSteps = EVAL_CLI_STEPS) -> list[Row]:
    """How an evaluation job stands, with what to do next: its outcome once it ended, else its progress."""
    status = JobStatus(status)
    job_id = Path(job_dir).name if job_dir else ""

    def hint(*parts: str) -> str:
        return "; ".join(steps.fill(p, job_id, job_dir) for p in parts if p)

    kept = "the answers on file are kept and not given again"
    if status is JobStatus.FAILED:
        return [Row("outcome", f"failed after {_answers(state)}: {state.error or state.error_type or 'unknown error'}",
                    Severity.PROBLEM, hint(steps.log, f"fix the cause, then {steps.resume}"))]
    if status is JobStatus.CRASHED:
        return [Row("outcome", f"crashed after {_answers(state)}: the job died without a word (killed, out of memory?)",
                    Severity.PROBLEM, hint(steps.log, f"{steps.resume} ({kept})"))]
    if status is JobStatus.STOPPED:
        return [Row("outcome", f"stopped ({state.stop_reason or 'on request'}) after {_answers(state)}", Severity.INFO,
                    hint(f"{steps.resume} ({kept})"))]
    if status is JobStatus.FINISHED:
        return [Row("outcome", f"finished: {_answers(state)}; report in {state.report_dir}", Severity.OK)]
    row = describe_eval_progress(state)
    return [row] if row else [Row("status", str(status))]
