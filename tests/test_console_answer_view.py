"""The answer view reads an answer clinically: think apart with its token count, sections marked,
missing ones flagged only once the answer is complete. Plus the import rules the console relies on."""

from __future__ import annotations

import subprocess
import sys

from textual.app import App, ComposeResult
from textual.widgets import Collapsible, Markdown, Static

from medtui.widgets.answer import AnswerView, mark_sections

ANSWER = (
    "患者老年男性，进行性吞咽困难。</think>\n### 回答:\n"
    "**疑似诊断**：食管癌（中段）\n"
    "诊断依据：\n1. 进行性吞咽困难2月\n2. 体重下降8kg\n3. 胃镜示溃疡型肿物\n"
    "鉴别诊断：\n1. 食管良性狭窄\n2. 贲门失弛缓症\n"
)


class ViewApp(App[None]):
    def compose(self) -> ComposeResult:
        yield AnswerView("tuned", id="v")


async def test_sections_marked_and_missing_flagged() -> None:
    app = ViewApp()
    async with app.run_test(size=(80, 30)) as pilot:
        view = app.query_one(AnswerView)
        view.set_model("run-1 on demo (random weights, demo only)")
        view.begin("seed")
        view.stream(ANSWER, output_tokens=60, think_tokens=9, elapsed_s=1.5)
        await pilot.pause()
        assert view.think_text == "患者老年男性，进行性吞咽困难。"
        assert view.sections.present == {"diagnosis", "basis", "differential"}
        line = str(view.query_one(".answer-sections", Static).render())
        assert "✓疑似诊断" in line and "✓鉴别诊断" in line and "✗" not in line  # still streaming: not flagged yet
        box = view.query_one(Collapsible)
        assert box.collapsed and "9 tokens" in box.title
        view.finish(ANSWER, {"ttft_s": 0.05, "decode_tokens_per_s": 48.2, "total_s": 1.6, "output_tokens": 60,
                             "finish_reason": "length", "think_tokens": 9})
        await pilot.pause()
        line = str(view.query_one(".answer-sections", Static).render())
        assert "✗治疗方案" in line and "✗随访建议" in line and "(2 missing)" in line
        stats = str(view.query_one(".answer-stats", Static).render())
        assert "first token 50 ms" in stats and "48.2 tok/s" in stats and "CUT OFF" in stats
        md = view.query_one(Markdown).source
        assert "#### ▍ 疑似诊断" in md and "#### ▍ 鉴别诊断" in md and "1. 食管良性狭窄" in md


def test_mark_sections_keeps_the_words_used() -> None:
    md = mark_sections("初步诊断：胆总管结石\n治疗原则：ERCP取石")
    assert "#### ▍ 初步诊断 (疑似诊断)" in md and "#### ▍ 治疗原则 (治疗方案)" in md and "ERCP取石" in md
    assert mark_sections("no sections here") == "no sections here"


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_console_imports_no_ml_library() -> None:
    p = _fresh_python(
        "import sys\n"
        "import medtui.screens.console, medtui.widgets.answer\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'unsloth') if m in sys.modules]\n"
        "assert not heavy, heavy\n")
    assert p.returncode == 0, p.stderr


def test_engine_side_never_imports_textual() -> None:
    p = _fresh_python(
        "import sys\n"
        "import medtui_engine.infer, medtui_engine.transcripts, medtui_engine.commands.ask\n"
        "assert 'textual' not in sys.modules\n"
        "assert not [m for m in ('torch', 'transformers') if m in sys.modules]\n")
    assert p.returncode == 0, p.stderr
