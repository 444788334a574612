"""The answer view: one model's answer to one case, as a clinician reads it.

The think block stands apart (dimmed, collapsed, with its token count); the answer is Markdown with
each recognised section (疑似诊断, 诊断依据, 鉴别诊断, 治疗方案, 随访建议) turned into a marked heading,
and the sections it lacks flagged once the answer is complete. The timing line says time to first
token, tokens/s, total time and whether the answer was cut off at max_new_tokens.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Collapsible, Markdown, Static

from medtui_engine.sections import SECTION_LABELS, SECTIONS, AnswerSections, find_sections, split_think

SECTION_MARK = "▍"


def mark_sections(answer: str, sections: AnswerSections | None = None) -> str:
    """The answer as Markdown, each recognised section heading made a marked heading of its own."""
    sections = sections or find_sections(answer)
    if not sections.spans:
        return answer
    spans = sorted(sections.spans.values(), key=lambda s: s.start)
    out = [answer[:spans[0].start].rstrip()]
    for span in spans:
        heading = answer[span.start:span.body_start].strip().strip("#*>-: \t：").strip("*").strip()
        label = SECTION_LABELS[span.name]
        title = heading if heading == label else f"{heading} ({label})"
        out.append(f"\n\n#### {SECTION_MARK} {title}\n\n{span.body(answer)}")
    return "".join(out).strip()


def sections_line(sections: AnswerSections, complete: bool) -> Text:
    """✓ for each section present; ✗ (flagged) for the missing ones once the answer is complete."""
    line = Text("sections: ", style="dim")
    for name in SECTIONS:
        label = SECTION_LABELS[name]
        if name in sections.present:
            line.append(f"✓{label}", style="bold green")
        elif complete:
            line.append(f"✗{label}", style="bold red")
        else:
            line.append(f"·{label}", style="dim")
        line.append(" ")
    if complete and sections.missing:
        line.append(f"({len(sections.missing)} missing)", style="red")
    return line


class AnswerView(VerticalScroll):
    """One model's answer; ``side`` is "" (single), "tuned" or "base" in compare mode."""

    DEFAULT_CSS = """
    AnswerView {
        height: 1fr;
        border: round $primary 40%;
        padding: 0 1;
    }
    AnswerView .answer-title { text-style: bold; text-wrap: nowrap; text-overflow: ellipsis; }
    AnswerView .answer-stats { color: $text-muted; }
    AnswerView .answer-think { color: $text-muted; text-style: italic; }
    AnswerView Collapsible { padding: 0; border: none; }
    AnswerView Markdown { margin: 0; padding: 0; }
    AnswerView .answer-error { color: $error; text-style: bold; }
    """

    def __init__(self, side: str = "", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.side = side
        self.show_side = False      # the screen turns this on in compare mode
        self.template = "seed"
        self.output = ""
        self.model_label = ""
        self.model_detail = ""
        self.complete = False
        self.stats = None           # GenerationStats of the last finished answer
        self.think_tokens: int | None = None
        self.output_tokens = 0
        self._shown_answer: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("no model", classes="answer-title")
        yield Static("", classes="answer-stats")
        with Collapsible(title="think", collapsed=True, classes="answer-think-box"):
            yield Static("", classes="answer-think", markup=False)
        yield Static("", classes="answer-sections")
        yield Markdown("", classes="answer-md")
        yield Static("", classes="answer-error")

    # ---- what tests and the screen read
    @property
    def split(self):
        return split_think(self.output, prompt_opened_think=self.template == "seed")

    @property
    def think_text(self) -> str:
        return self.split.think

    @property
    def answer_text(self) -> str:
        return self.split.answer

    @property
    def sections(self) -> AnswerSections:
        return find_sections(self.answer_text)

    # ---- updates (UI thread only)
    def set_model(self, label: str, detail: str = "") -> None:
        self.model_label = label
        self.model_detail = detail
        side = f"[{self.side}] " if self.side and self.show_side else ""
        title = Text(side + label, style="bold")
        if detail:
            title.append(f"  {detail}", style="dim")
        self.query_one(".answer-title", Static).update(title)

    def begin(self, template: str) -> None:
        self.template = template
        self.output = ""
        self.complete = False
        self.stats = None
        self.think_tokens = None
        self.output_tokens = 0
        self._shown_answer = None
        self.query_one(".answer-error", Static).update("")
        self.query_one(".answer-stats", Static).update(Text("waiting for the first token...", style="dim"))
        self._redraw()

    def stream(self, output: str, output_tokens: int, think_tokens: int | None, elapsed_s: float) -> None:
        self.output = output
        self.output_tokens = output_tokens
        self.think_tokens = think_tokens
        rate = f" · {output_tokens / elapsed_s:.1f} tok/s so far" if elapsed_s > 0 else ""
        self.query_one(".answer-stats", Static).update(
            Text(f"streaming · {output_tokens} tokens · {elapsed_s:.1f} s{rate}", style="dim"))
        self._redraw()

    def finish(self, output: str, stats) -> None:
        """``stats``: the engine's GenerationStats (or a dict of it, from a transcript)."""
        self.output = output
        self.complete = True
        self.stats = stats
        d = stats if isinstance(stats, dict) else stats.as_dict()
        self.output_tokens = d.get("output_tokens") or 0
        self.think_tokens = d.get("think_tokens")
        self.query_one(".answer-stats", Static).update(self._stats_text(d))
        self._redraw()

    def fail(self, message: str) -> None:
        self.complete = True
        self.query_one(".answer-error", Static).update(message)

    def set_think_collapsed(self, collapsed: bool) -> None:
        self.query_one(Collapsible).collapsed = collapsed

    def _stats_text(self, d: dict) -> Text:
        t = Text()
        ttft = d.get("ttft_s")
        t.append(f"first token {ttft * 1000:.0f} ms" if ttft is not None else "no tokens")
        if d.get("decode_tokens_per_s"):
            t.append(f" · {d['decode_tokens_per_s']:.1f} tok/s")
        t.append(f" · {d.get('total_s', 0):.1f} s · {d.get('output_tokens', 0)} tokens")
        reason = d.get("finish_reason")
        if reason == "length":
            t.append(" · CUT OFF (max_new_tokens)", style="bold yellow")
        elif reason == "cancelled":
            t.append(" · stopped", style="bold yellow")
        else:
            t.append(" · complete", style="green")
        return t

    def _redraw(self) -> None:
        split = self.split
        box = self.query_one(Collapsible)
        if self.think_tokens is not None:
            count = f"{self.think_tokens} tokens"
        elif split.opened and not split.closed and self.output_tokens:
            count = f"{self.output_tokens} tokens, still thinking" if not self.complete else f"{self.output_tokens} tokens, never closed"
        else:
            count = "empty" if not split.think else "?"
        box.title = f"思考过程 think · {count}"
        self.query_one(".answer-think", Static).update(split.think)
        sections = find_sections(split.answer)
        self.query_one(".answer-sections", Static).update(sections_line(sections, self.complete))
        md = mark_sections(split.answer, sections)
        if self.complete and not split.answer.strip():
            md = "*(no answer after the think block)*"
        if md != self._shown_answer:
            self._shown_answer = md
            self.query_one(Markdown).update(md)
