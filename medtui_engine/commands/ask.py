"""Ask a model a case and stream its answer; with --compare, ask a second model (e.g. the base) the
same case, one after the other. The prompt template is the one recorded with the model.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading

from ..cli import add_common, print_json
from ..context import load_context
from ..errors import UserError
from ..infer.loader import BACKENDS
from ..infer.sampling import SamplingSettings
from ..infer.stream import DECODE_MODES
from ..notices import DISCLAIMER
from ..templates import TEMPLATES

EXAMPLES = """examples:
  medtui ask --model RUN "女性，45岁，右上腹痛3天，TBil 68μmol/L"
  echo "男性，62岁，进行性吞咽困难2月" | medtui ask --model DIR --compare base -
  medtui ask --model demo --demo-case 1 --json

The answer streams to stdout; model, loading and timing lines go to stderr. With --json, one JSON
object at the end holding one answer object per model."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = f"{parser.description} {DISCLAIMER}"
    parser.epilog = EXAMPLES
    parser.add_argument("case", nargs="?", metavar="CASE", help="the case text, or - to read it from stdin")
    parser.add_argument("--model", default="demo", metavar="DIR|RUN|demo",
                        help="merged model dir, run dir or id, adapter dir, base model dir, or demo (default)")
    parser.add_argument("--compare", metavar="DIR|RUN|base",
                        help="also ask this model (base: the --model's own base model), with the same prompt")
    parser.add_argument("--base", metavar="DIR", help="base model for an adapter directory that does not name one")
    parser.add_argument("--demo-case", metavar="N|TITLE", help="ask one of the bundled demo cases")
    parser.add_argument("--template", choices=TEMPLATES, help="override the template recorded with the model")
    s = parser.add_argument_group("sampling (the seed's defaults)")
    d = SamplingSettings()
    s.add_argument("--temperature", type=float, default=d.temperature, help=f"0 = greedy (default {d.temperature})")
    s.add_argument("--top-p", type=float, default=d.top_p, help=f"default {d.top_p}")
    s.add_argument("--top-k", type=int, default=d.top_k, help=f"0 = off (default {d.top_k})")
    s.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, metavar="N", help=f"default {d.max_new_tokens}")
    s.add_argument("--seed", type=int, metavar="S", help="random seed, for repeatable sampling")
    s.add_argument("--repetition-penalty", type=float, metavar="P",
                   help="1 = off (default: the model's generation config; every decode path applies the same)")
    e = parser.add_argument_group("engine")
    e.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: transformers with medtui's CUDA-graph decode loop (fastest measured); unsloth: Unsloth's fast inference")
    e.add_argument("--4bit", dest="load_in_4bit", action="store_true", help="load the weights in 4-bit (GPU only)")
    e.add_argument("--decode", choices=DECODE_MODES, default="auto", help="transformers decode path (auto: on a GPU the CUDA-graph loop; its compiled form, "
                   "fused, repays its compile only over many answers: the console and evaluations)")
    parser.add_argument("--save", action="store_true", help="also save a transcript (Markdown + JSONL) in the workspace")
    add_common(parser)


def _read_case(args: argparse.Namespace) -> str:
    if args.demo_case:
        from ..infer.cases import load_console_cases, pick_case

        if args.case:
            raise UserError("give either a CASE or --demo-case, not both")
        return pick_case(load_console_cases(), args.demo_case).question
    if args.case == "-" or (args.case is None and not sys.stdin.isatty()):
        text = sys.stdin.read()
    elif args.case is None:
        raise UserError("give the case as an argument, - to read it from stdin, or --demo-case N")
    else:
        text = args.case
    if not text.strip():
        raise UserError("the case is empty: give the complaint and the findings")
    return text.strip()


def run(args: argparse.Namespace) -> int:
    from ..infer import LoadOptions, StreamChunk, StreamDone, load_model, resolve_source, stream_answer
    from ..offline import skip_cuda_only_packages
    from ..sections import SECTION_LABELS, find_sections

    ctx = load_context(args.workspace, args.config)
    settings = SamplingSettings(args.temperature, args.top_p, args.max_new_tokens, args.seed, args.top_k,
                                args.repetition_penalty).checked()
    question = _read_case(args)
    tuned = resolve_source(args.model, ctx.runs_dir, ctx.merged_dir, args.base)
    if args.template:
        tuned = tuned.with_template(args.template)
    sources = [("", tuned)]
    if args.compare:
        other = tuned.base() if args.compare == "base" else resolve_source(args.compare, ctx.runs_dir, ctx.merged_dir)
        other = other.with_template(tuned.template) if other.template != tuned.template else other
        sources = [("tuned", tuned), ("base" if args.compare == "base" else "compare", other)]
    options = LoadOptions(backend=args.backend, load_in_4bit=args.load_in_4bit)
    skip_cuda_only_packages()   # this process loads a model and ends: on a machine without CUDA, a faster start
    err = sys.stderr
    if not args.json:
        print(DISCLAIMER, file=err)
    answers = []
    for side, src in sources:
        if not args.json:
            print(f"\n== {src.label}{' [' + side + ']' if side else ''} · template {src.template} "
                  f"({src.template_from}) ==", file=err, flush=True)
        # Libraries print banners while loading (Unsloth does, to stdout): keep stdout for the answer/JSON.
        with contextlib.redirect_stdout(err):
            loaded = load_model(src, options, None if args.json else
                                (lambda m, f: print(f"   loading: {m}", file=err, flush=True)))
        if not args.json:
            for note in loaded.notes:   # e.g. the end-of-turn token it also stops on (the stop-token contract)
                print(f"   note: {note}", file=err, flush=True)
        cancel = threading.Event()
        result = None
        try:
            for ev in stream_answer(loaded, question, settings, cancel, decode=args.decode, one_answer=True):
                if isinstance(ev, StreamChunk):
                    if not args.json and ev.text:
                        sys.stdout.write(ev.text)
                        sys.stdout.flush()
                elif isinstance(ev, StreamDone):
                    result = ev.result
        except KeyboardInterrupt:
            cancel.set()
            print("\n(stopped)", file=err)
            return 130
        loaded.unload()
        assert result is not None
        sections = find_sections(result.answer)
        if not args.json:
            marks = " ".join(("+" if n in sections.present else "-") + SECTION_LABELS[n] for n in SECTION_LABELS)
            print(f"\n-- {result.stats.summary()} · {loaded.describe()}\n-- sections: {marks}", file=err, flush=True)
        answers.append((side, src, loaded, result, sections))
    if args.save:
        from ..transcripts import Transcript, TranscriptEntry, save_transcript

        tr = Transcript.new()
        for side, src, _loaded, r, _s in answers:
            tr.add(TranscriptEntry(1, question, src.label, r.output, src.template, str(src.model_dir),
                                   str(src.adapter_dir) if src.adapter_dir else None, settings.as_dict(),
                                   r.stats.as_dict(), side))
        md, jl = save_transcript(tr, ctx.transcripts_dir)
        if not args.json:
            print(f"transcript: {md} (and {jl.name})", file=err)
    if args.json:
        print_json({
            "disclaimer": DISCLAIMER,
            "question": question,
            "sampling": settings.as_dict(),
            "answers": [{
                "side": side or None,
                "model": src.as_dict(),
                "backend": loaded.backend,
                "device": loaded.device,
                "dtype": loaded.dtype,
                "quantized": loaded.quantized,
                "load_s": loaded.load_s,
                "stop_ids": list(loaded.eos_ids),
                "notes": list(loaded.notes),
                "output": r.output,
                "think": r.think,
                "answer": r.answer,
                "sections_present": [n for n in SECTION_LABELS if n in s.present],
                "sections_missing": s.missing,
                "stats": r.stats.as_dict(),
            } for side, src, loaded, r, s in answers],
        })
    return 0
