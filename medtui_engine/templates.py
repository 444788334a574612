"""The two prompt formats a run can use, and how one case is rendered for training and inference.

``seed``: the seed document's Chinese template, with the reasoning inside ``<think>`` tags and the
tokenizer's EOS token at the end. ``chat``: the model's own chat template (a user turn holding the
instruction and the case; an assistant turn ``<think>\\n{cot}\\n</think>\\n\\n{response}``).

A rendered case is split into ``prompt`` (what the user supplies; masked from the loss when the run
asks for it) and ``completion`` (think + answer + EOS: what the model is trained to produce). The
console and the evaluation render only the prompt, so training and asking always match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TEMPLATES = ("seed", "chat")

SEED_HEADER = (
    "请遵循指令回答用户问题。\n"
    "在回答之前，请仔细思考问题，并创建一个逻辑连贯的思考过程，以确保回答准确无误。\n"
)
SEED_INSTRUCTION = "请根据提供的信息，做出符合医学知识的疑似诊断、相应的诊断依据和具体的治疗方案，同时列出相关鉴别诊断。"
SEED_PROMPT = SEED_HEADER + "### 指令:\n" + SEED_INSTRUCTION + "\n### 问题:\n{question}\n### 思考过程:\n<think>"
SEED_COMPLETION = "{cot}</think>\n### 回答:\n{response}"
SEED_ANSWER_MARKER = "### 回答:"

CHAT_SYSTEM = "你是一名严谨的临床医生助手。" + SEED_INSTRUCTION
CHAT_COMPLETION = "<think>\n{cot}\n</think>\n\n{response}"

# Text that, inside a field, would corrupt the rendered template.
TEMPLATE_MARKERS = ("<think>", "</think>", "### 指令:", "### 问题:", "### 思考过程:", "### 回答:",
                    "<|im_start|>", "<|im_end|>", "<|endoftext|>")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class RenderedCase:
    template: str
    prompt: str       # masked from the loss when prompt masking is on
    completion: str   # think + answer + EOS: what the model learns to write

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise TemplateError(f"unknown template '{name}': choose one of {', '.join(TEMPLATES)}")
    return name


def eos_text(tokenizer: Any, template: str) -> str:
    """The end-of-answer text: the chat template's end-of-turn, or the tokenizer's EOS for seed."""
    if template == "chat":
        return "<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() else (tokenizer.eos_token or "")
    if not tokenizer.eos_token:
        raise TemplateError("the tokenizer has no EOS token: the model would never learn to stop")
    return tokenizer.eos_token


def render_prompt(template: str, question: str, tokenizer: Any | None = None) -> str:
    """The prompt the model sees (training and inference alike)."""
    check_template(template)
    if template == "seed":
        return SEED_PROMPT.format(question=question)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TemplateError("the 'chat' template needs a tokenizer with a chat template; use 'seed' for this model")
    messages = [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_case(template: str, question: str, cot: str | None, response: str, tokenizer: Any) -> RenderedCase:
    """One training case, split into prompt and completion (with EOS)."""
    prompt = render_prompt(template, question, tokenizer)
    cot = cot or ""
    body = (SEED_COMPLETION if template == "seed" else CHAT_COMPLETION).format(cot=cot, response=response)
    return RenderedCase(template, prompt, body + eos_text(tokenizer, template))


def generation_prefix(template: str) -> str:
    """What the prompt already opened: the seed prompt ends inside ``<think>``."""
    return "<think>" if template == "seed" else ""
