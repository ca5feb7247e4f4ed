"""Chat prompts rendered with the Jinja chat template stored in the GGUF file.

GGUF files carry the model's Hugging Face chat template under
`tokenizer.chat_template`. It is rendered in a sandboxed Jinja environment
with the variables such templates expect (`messages`, `bos_token`,
`eos_token`, `add_generation_prompt`, `tools`, `raise_exception`). A model
without a template gets ChatML, which many small instruct models use.

A chat history that does not fit the context loses its oldest messages
(`fit_messages`), as Ollama's chat API does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmcloud.engine.errors import InvalidRequest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Message = dict[str, Any]


class TemplateError(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML_TEMPLATE
        self.bos_token = bos_token
        self.eos_token = eos_token
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols],
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = environment.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the model's chat template is invalid: {exc}") from None

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Render messages into the prompt text that the model continues."""
        try:
            return self._template.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise InvalidRequest(f"messages do not fit the model's chat template: {exc}") from None
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"rendering the model's chat template failed: {exc}") from None


@dataclass
class FittedPrompt:
    """Prompt tokens, the chat messages they were rendered from, and the count of dropped ones.

    `messages` is empty for a prompt that was not rendered from messages.
    """

    tokens: list[int]
    messages: list[Message]
    dropped: int = 0


def fit_messages(
    messages: list[Message], tokenize: Callable[[list[Message]], list[int]], limit: int
) -> FittedPrompt:
    """Drop the oldest messages until the rendered prompt is at most `limit` tokens.

    As in Ollama's `chatPrompt` (server/prompt.go), the last message and every
    system message stay, and system messages from the dropped part move to the
    front. A cut never separates `tool` messages from the assistant message
    before them, which made the calls. When even the shortest prompt (the
    system messages and the last message) is longer than `limit`, that prompt
    is returned and the caller decides whether it fits the context.

    The cut is found by bisection, so a history of n messages is tokenized
    about log2(n) + 2 times. Bisection assumes that a later cut never gives a
    longer prompt. A system message that moves to the front can change the
    size by a few tokens and break that assumption. Then one more message than
    needed may be dropped, but the prompt returned still fits.
    """
    whole = FittedPrompt(tokenize(messages), messages)
    if len(whole.tokens) <= limit:
        return whole
    cuts = _cut_points(messages)
    if not cuts:
        return whole

    best = _drop_before(messages, cuts[-1], tokenize)
    if len(best.tokens) > limit:
        return best
    # Invariant: the cut at cuts[high] fits, and the one at cuts[low] does not (-1 is no cut).
    low, high = -1, len(cuts) - 1
    while high - low > 1:
        middle = (low + high) // 2
        candidate = _drop_before(messages, cuts[middle], tokenize)
        if len(candidate.tokens) <= limit:
            high, best = middle, candidate
        else:
            low = middle
    return best


def _cut_points(messages: list[Message]) -> list[int]:
    """Indices where the kept part of a history may start, in increasing order."""
    return [index for index in range(1, len(messages)) if messages[index]["role"] != "tool"]


def _drop_before(
    messages: list[Message], start: int, tokenize: Callable[[list[Message]], list[int]]
) -> FittedPrompt:
    system = [message for message in messages[:start] if message["role"] == "system"]
    kept = system + messages[start:]
    return FittedPrompt(tokenize(kept), kept, dropped=start - len(system))
