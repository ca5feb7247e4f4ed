"""From a validated request to a running generation: model, prompt, options, events.

Both the Ollama routes and the OpenAI routes come through here, so limits and
errors are the same on both. Everything that can fail with a 4xx (unknown
model, prompt longer than the context, invalid format schema, full queue)
fails in `start_generation`, before a streamed response has begun.

A chat that truncates its history drops its oldest messages until the prompt
leaves room for the answer (`answer_room`). The runner has no context shift, so
generation stops when the context is full. Ollama drops messages only until the
prompt fits the context, and shifts the context while it generates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from llama_cpp import llama_grammar

from llmcloud.engine.errors import InvalidRequest
from llmcloud.engine.names import parse_model_name
from llmcloud.engine.prompt import FittedPrompt, Message, fit_messages
from llmcloud.engine.runtime import Event, Finished, Job, Sampling
from llmcloud.engine.scheduler import LoadedModel, Scheduler
from llmcloud.engine.schemas import FormatSpec, Options
from llmcloud.engine.store import ModelEntry, ModelStore
from llmcloud.monitoring.llm_metrics import GenerationMetrics
from llmcloud.settings import Settings
from llmcloud.units import parse_duration

logger = logging.getLogger("llmcloud.engine")

# The advice that ends the error for a prompt that does not fit the context, on Ollama's API.
OLLAMA_CONTEXT_HINT = "shorten it or raise options.num_ctx"


class Generation:
    """A queued job on a loaded model, iterated for its events.

    `aclose` cancels the job if it is still running and gives the model's
    place back to the scheduler. It is idempotent, and routes call it both
    when their response ends and from a background task, so that a response
    cancelled before its first chunk still releases the model.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        model: LoadedModel,
        job: Job,
        load_duration_ns: int,
        started: float | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.model = model
        self.job = job
        self.load_duration_ns = load_duration_ns
        self.metrics = GenerationMetrics("engine", model.name, started)
        self._closed = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self._closed:
            raise StopAsyncIteration
        event = await self.job.events.get()
        if isinstance(event, Finished):
            self.metrics.finished(
                len(event.generated_tokens), event.prompt_tokens, failed=event.error is not None
            )
            await self.aclose()
        else:
            self.metrics.chunk()
        return event

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.model.runner.cancel(self.job)
        await self.scheduler.release(self.model)


def resolve_model(store: ModelStore, name: str) -> ModelEntry:
    return store.get(parse_model_name(name).display)


def parse_keep_alive(value: str | int | float | None) -> float | None:
    """Seconds to keep a model loaded; negative means forever, None means the default."""
    if value is None or value == "":
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidRequest(f"invalid keep_alive: {exc}") from None


def merged_options(entry: ModelEntry, options: Options | None) -> dict[str, Any]:
    """The model's own parameters, overridden by the request's options."""
    merged = {key: value for key, value in entry.parameters.items() if value is not None}
    if options is not None:
        merged.update(options.model_dump(exclude_none=True))
    return merged


def context_length(settings: Settings, options: dict[str, Any]) -> int:
    num_ctx = int(options.get("num_ctx", settings.engine_num_ctx))
    if num_ctx > settings.engine_max_num_ctx:
        raise InvalidRequest(
            f"options.num_ctx {num_ctx} is larger than the engine's limit of "
            f"{settings.engine_max_num_ctx} tokens (setting engine_max_num_ctx)"
        )
    return num_ctx


def sampling_from(options: dict[str, Any], grammar: str | None) -> Sampling:
    sampling = Sampling(grammar=grammar)
    for name in (
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
        "seed",
    ):
        if name in options:
            setattr(sampling, name, options[name])
    if sampling.seed is not None and sampling.seed < 0:
        sampling.seed = None
    return sampling


def stop_strings(options: dict[str, Any]) -> list[str]:
    stop = options.get("stop") or []
    values = [stop] if isinstance(stop, str) else list(stop)
    return [value for value in values if value]


def grammar_for(format_spec: FormatSpec) -> str | None:
    """GBNF grammar for Ollama's `format`: "json" or a JSON schema object."""
    if format_spec in (None, ""):
        return None
    if format_spec == "json":
        return str(llama_grammar.JSON_GBNF)
    try:
        return str(llama_grammar.json_schema_to_gbnf(json.dumps(format_spec)))
    except Exception as exc:  # the converter raises many types for unsupported schemas
        raise InvalidRequest(f"invalid format: unsupported JSON schema ({exc})") from None


def max_tokens(options: dict[str, Any], num_ctx: int) -> int:
    """Tokens to generate at most; -1 and -2 both mean until the context is full."""
    num_predict = int(options.get("num_predict", -1))
    return num_ctx if num_predict < 0 else num_predict


def answer_room(max_new_tokens: int, num_ctx: int) -> int:
    """Tokens that a truncated chat keeps free for the answer.

    The request's maximum of new tokens, but at most a quarter of the context
    and at least one token.
    """
    return max(1, min(max_new_tokens, num_ctx // 4))


async def start_generation(
    scheduler: Scheduler,
    entry: ModelEntry,
    *,
    options: dict[str, Any],
    keep_alive: float | None,
    render: PromptRenderer,
    grammar: str | None,
    max_new_tokens: int | None = None,
    context_hint: str = OLLAMA_CONTEXT_HINT,
) -> Generation:
    """Load the model, build and check the prompt, and queue the job.

    `context_hint` ends the error for a prompt that does not fit the context,
    saying what the client can do in the terms of its API.
    """
    started = time.perf_counter()
    num_ctx = context_length(scheduler.settings, options)
    if max_new_tokens is None:
        max_new_tokens = max_tokens(options, num_ctx)
    model, load_ns = await scheduler.acquire(entry, num_ctx=num_ctx, keep_alive=keep_alive)
    try:
        prompt = render(model, limit=num_ctx - answer_room(max_new_tokens, num_ctx))
        if prompt.dropped:
            _log_dropped(model.name, prompt, num_ctx)
        _check_prompt_length(prompt, num_ctx, context_hint)
        job = Job(
            prompt=prompt.tokens,
            sampling=sampling_from(options, grammar),
            max_tokens=max_new_tokens,
            num_ctx=num_ctx,
            stop=stop_strings(options),
            loop=asyncio.get_running_loop(),
        )
        model.runner.submit(job)
    except BaseException:
        await scheduler.release(model)
        raise
    return Generation(scheduler, model, job, load_ns, started)


class PromptRenderer:
    """Turns a request into prompt tokens once the model (and so its tokenizer) is loaded.

    With `truncate`, a chat whose prompt is longer than the limit given at render
    time loses its oldest messages (see `fit_messages`).
    """

    def __init__(
        self,
        *,
        messages: list[Message] | None = None,
        raw_prompt: str | None = None,
        context: list[int] | None = None,
        tools: list[dict[str, Any]] | None = None,
        truncate: bool = False,
    ) -> None:
        self.messages = messages
        self.raw_prompt = raw_prompt
        self.context = context or []
        self.tools = tools
        self.truncate = truncate

    def __call__(self, model: LoadedModel, *, limit: int) -> FittedPrompt:
        runner = model.runner
        for token in self.context:
            if not 0 <= token < runner.n_vocab:
                raise InvalidRequest(
                    f"invalid context: token {token} is outside the vocabulary of "
                    f"{runner.n_vocab} tokens; send the context returned by this model"
                )
        if self.raw_prompt is not None:
            tokens = runner.tokenize(self.raw_prompt, add_special=not self.context)
            return FittedPrompt(self.context + tokens, [])

        messages = self.messages or []
        if self.truncate:
            return fit_messages(messages, lambda kept: self._chat_tokens(model, kept), limit)
        return FittedPrompt(self._chat_tokens(model, messages), messages)

    def _chat_tokens(self, model: LoadedModel, messages: list[Message]) -> list[int]:
        text = model.template.render(messages, tools=self.tools)
        bos = model.template.bos_token
        add_special = not (bos and text.startswith(bos)) and not self.context
        return self.context + model.runner.tokenize(text, add_special=add_special)


def _log_dropped(model: str, prompt: FittedPrompt, num_ctx: int) -> None:
    logger.info(
        "dropped the oldest %d of %d chat messages for model %s: the prompt is now %d tokens "
        "with num_ctx %d",
        prompt.dropped,
        prompt.dropped + len(prompt.messages),
        model,
        len(prompt.tokens),
        num_ctx,
    )


def _check_prompt_length(prompt: FittedPrompt, num_ctx: int, hint: str) -> None:
    size = len(prompt.tokens)
    if size < num_ctx:
        return
    dropped = f" even without the oldest {prompt.dropped} messages" if prompt.dropped else ""
    raise InvalidRequest(
        f"the prompt is {size} tokens{dropped}, which does not fit the context of {num_ctx} "
        f"tokens; {hint}"
    )
