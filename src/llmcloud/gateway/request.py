"""Validation of a chat's model, messages and options before any backend sees them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from llmcloud.gateway.errors import InvalidChatRequest
from llmcloud.text import describe_surrogate

MAX_MODEL_NAME = 256

Model = TypeVar("Model", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr


ROLES = frozenset({"system", "user", "assistant", "tool"})


class ChatOptions(_Strict):
    """Ollama's model options, as its docs/api.md lists them; unknown names are rejected.

    Ollama backends receive all of them. OpenAI-compatible backends receive the
    ones OpenAI's API has: temperature, top_p, seed, stop, presence_penalty,
    frequency_penalty, and num_predict as max_tokens.
    """

    temperature: float | None = Field(None, ge=0, le=10)
    top_k: StrictInt | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, ge=0, le=1)
    seed: StrictInt | None = None
    num_predict: StrictInt | None = Field(None, ge=-2)
    num_ctx: StrictInt | None = Field(None, ge=1)
    num_keep: StrictInt | None = Field(None, ge=-1)
    stop: list[StrictStr] | StrictStr | None = None
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    repeat_last_n: StrictInt | None = Field(None, ge=-1)
    presence_penalty: float | None = Field(None, ge=-10, le=10)
    frequency_penalty: float | None = Field(None, ge=-10, le=10)
    penalize_newline: StrictBool | None = None
    num_batch: StrictInt | None = Field(None, ge=1)
    num_gpu: StrictInt | None = Field(None, ge=-1)
    main_gpu: StrictInt | None = Field(None, ge=0)
    num_thread: StrictInt | None = Field(None, ge=1)
    use_mmap: StrictBool | None = None
    numa: StrictBool | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    options: dict[str, Any]
    """Only the options that were given."""


def build_chat_request(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any] | None,
    system: str | None,
) -> ChatRequest:
    """Validate a chat's parts, raising InvalidChatRequest that names the bad field."""
    check_model_name(model)
    if system is not None and not isinstance(system, str):
        raise InvalidChatRequest(f"system must be a string, not {type(system).__name__}")
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidChatRequest(f"messages must be a list, not {type(messages).__name__}")
    if not messages:
        raise InvalidChatRequest("messages is empty; send at least one message")

    chat = [_message(message, index) for index, message in enumerate(messages)]
    for index, message in enumerate(chat):
        _check_text(message["content"], f"messages.{index}.content")
    if system:
        _check_text(system, "system")
        chat.insert(0, {"role": "system", "content": system})

    valid_options: dict[str, Any] = {}
    if options:
        valid_options = _validate(ChatOptions, options, "options").model_dump(exclude_none=True)
        stop = valid_options.get("stop")
        for index, text in enumerate([stop] if isinstance(stop, str) else stop or []):
            _check_text(text, f"options.stop.{index}")
    return ChatRequest(model=model, messages=chat, options=valid_options)


def _check_text(text: str, where: str) -> None:
    problem = describe_surrogate(text, where)
    if problem is not None:
        raise InvalidChatRequest(problem)


def _message(message: object, index: int) -> dict[str, str]:
    # A dict of exactly a known role and a string content, as the web app sends, is valid as
    # it is. Anything else gets the model's validation, for its error messages.
    if (
        type(message) is dict
        and len(message) == 2
        and message.get("role") in ROLES
        and type(message.get("content")) is str
    ):
        return {"role": message["role"], "content": message["content"]}
    return _validate(ChatMessage, message, f"messages.{index}").model_dump()


def check_model_name(model: object) -> None:
    """Raise InvalidChatRequest unless `model` is a name that a backend could list."""
    if not isinstance(model, str):
        raise InvalidChatRequest(f"model must be a string, not {type(model).__name__}")
    if not model.strip():
        raise InvalidChatRequest("model is empty; name the model to chat with")
    if len(model) > MAX_MODEL_NAME or not model.isprintable():
        raise InvalidChatRequest(
            f"invalid model name {model[:80]!r}; expected at most {MAX_MODEL_NAME} printable "
            "characters"
        )


def _validate(model: type[Model], value: object, where: str) -> Model:
    if not isinstance(value, Mapping):
        raise InvalidChatRequest(f"{where} must be an object, not {type(value).__name__}")
    try:
        return model.model_validate(dict(value))
    except ValidationError as exc:
        problems = [_describe(error, model, where) for error in exc.errors()[:5]]
        raise InvalidChatRequest("invalid chat request: " + "; ".join(problems)) from None


def _describe(error: Any, model: type[BaseModel], where: str) -> str:
    """Describe one validation error; a message's content is never echoed, since it is a prompt."""
    location = error["loc"]
    field = ".".join(str(part) for part in (where, *location))
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown field; expected one of: {', '.join(model.model_fields)}"
    if error["type"] == "missing" or (location and location[-1] == "content"):
        return f"{field}: {error['msg']}"
    return f"{field} = {repr(error.get('input'))[:80]}: {error['msg']}"
