"""Request bodies of the generation APIs, validated before anything reaches llama.cpp.

Field names, types and defaults follow Ollama's docs/api.md and OpenAI's API
reference. Unknown fields are ignored, as both servers do, but every known
field is type-checked and range-checked, so a bad value gets a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmcloud.openai_fields import NullMeansDefault

KeepAlive = StrictStr | StrictInt | float | None
FormatSpec = Literal["json", ""] | dict[str, Any] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Options(_Body):
    """Ollama's model options; llama.cpp-only knobs that Ollama also accepts are ignored."""

    temperature: float | None = Field(None, ge=0, le=10)
    top_k: StrictInt | None = Field(None, ge=0, le=1_000_000)
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, ge=0, le=1)
    seed: StrictInt | None = None
    num_predict: StrictInt | None = Field(None, ge=-2, le=10_000_000)
    num_ctx: StrictInt | None = Field(None, ge=1)
    stop: list[StrictStr] | StrictStr | None = None
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    repeat_last_n: StrictInt | None = Field(None, ge=-1, le=1_000_000)
    presence_penalty: float | None = Field(None, ge=-10, le=10)
    frequency_penalty: float | None = Field(None, ge=-10, le=10)


def _check_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    # Both APIs describe a tool as {"type": "function", "function": {"name": ..., ...}}, and
    # the name is what a call in the output is matched against.
    for index, tool in enumerate(tools or []):
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(
                f"tool {index} has no function name: give each tool "
                '{"type": "function", "function": {"name": "...", "parameters": {...}}}'
            )
    return tools


Tools = Annotated[list[dict[str, Any]] | None, AfterValidator(_check_tools)]


class ChatMessage(_Body):
    # tool_calls is declared before content because pydantic validates fields in declaration
    # order, and the content check needs tool_calls.
    role: Literal["system", "user", "assistant", "tool"]
    images: list[StrictStr] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: StrictStr | None = None
    content: StrictStr | None = Field(None, validate_default=True)

    @field_validator("content")
    @classmethod
    def _content_or_tool_calls(cls, content: str | None, info: ValidationInfo) -> str | None:
        # Ollama accepts an assistant message that has tool_calls and no content, and Open
        # WebUI forwards such messages as it received them.
        if content is None and not info.data.get("tool_calls"):
            raise ValueError("Field required: send the message text in 'content'")
        return content


class OllamaChatRequest(_Body):
    model: StrictStr
    messages: list[ChatMessage] = Field(default_factory=list)
    stream: StrictBool = True
    format: FormatSpec = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    tools: Tools = None
    think: StrictBool | None = None
    # Whether to drop the oldest messages of a prompt that does not fit the context. Absent
    # or null means true, as in Ollama's ChatRequest.
    truncate: StrictBool | None = None


class OllamaGenerateRequest(_Body):
    model: StrictStr
    prompt: StrictStr = ""
    suffix: StrictStr | None = None
    system: StrictStr | None = None
    template: StrictStr | None = None
    context: list[StrictInt] | None = None
    stream: StrictBool = True
    raw: StrictBool = False
    format: FormatSpec = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    images: list[StrictStr] | None = None
    think: StrictBool | None = None


class OllamaEmbedRequest(_Body):
    model: StrictStr
    input: StrictStr | list[StrictStr] = Field(default_factory=list)
    truncate: StrictBool = True
    options: Options | None = None
    keep_alive: KeepAlive = None
    dimensions: StrictInt | None = Field(None, ge=1)


class OllamaEmbeddingsRequest(_Body):
    model: StrictStr
    prompt: StrictStr = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class _NullableFields(_Body, NullMeansDefault):
    """A body of OpenAI's API, whose optional fields take null as absent."""


class OpenAIContentPart(_Body):
    """A part of a message's content: text, or in an assistant message also a refusal.

    `text` and `refusal` are typed as optional so that `_check_part` can tell a
    null value from a missing one.
    """

    type: StrictStr
    text: StrictStr | None = None
    refusal: StrictStr | None = None

    def text_field(self) -> str:
        """Return the name of the field that carries this part's text."""
        return "refusal" if self.type == "refusal" else "text"


_CONTENT_PARTS = TypeAdapter(list[OpenAIContentPart])


class OpenAIMessage(_Body):
    # role is declared before content because pydantic validates fields in declaration
    # order, and the check of content's parts needs the role.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[OpenAIContentPart] | None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _tool_calls_without_content(cls, data: Any) -> Any:
        # OpenAI's API lets an assistant message that has tool_calls leave out content, and
        # clients send the model's call back that way in the next request.
        if isinstance(data, dict) and data.get("tool_calls") and "content" not in data:
            return {**data, "content": None}
        return data

    @field_validator("content", mode="before")
    @classmethod
    def _parse_parts(cls, content: Any, info: ValidationInfo) -> Any:
        # Parsed here rather than as the union's list member, so that an error in a part is
        # reported under the part's own path, without an error for the string member too.
        if not isinstance(content, list):
            return content
        parts = _CONTENT_PARTS.validate_python(content)
        role = info.data.get("role")
        if role is None:
            return parts  # The role is invalid, and has an error of its own.
        for index, part in enumerate(parts):
            _check_part(part, index, role)
        return parts

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(getattr(part, part.text_field()) or "" for part in self.content)


def _check_part(part: OpenAIContentPart, index: int, role: str) -> None:
    """Reject a part of a type that `role` cannot have, or without its text as a string.

    The ValidationError raised here is reported under the content's path, so its
    location `(index, field)` becomes, for example, messages.0.content.1.text.
    """
    # OpenAI's assistant messages also take a refusal part, which contains the model's refusal.
    supported = ("text", "refusal") if role == "assistant" else ("text",)
    if part.type not in supported:
        names = " or ".join(repr(name) for name in supported)
        message = (
            f"part type {{type}} is not supported in {role} messages; send parts of type {names}"
        )
        raise _part_error((index, "type"), message, part.type, type=repr(part.type))
    field = part.text_field()
    if getattr(part, field) is not None:
        return
    if field in part.model_fields_set:
        raise _part_error((index, field), "Input should be a valid string, not null", None)
    raise _part_error((index, field), f"Field required in a {part.type!r} part", part)


def _part_error(
    location: tuple[int, str], template: str, value: Any, **context: str
) -> ValidationError:
    # The values in `context` fill the template's {name} fields, so that braces in a value
    # from the request are not read as fields.
    error = PydanticCustomError("content_part", template, context)
    return ValidationError.from_exception_data(
        "OpenAIMessage", [{"type": error, "loc": location, "input": value}]
    )


class StreamOptions(_NullableFields):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Body):
    name: StrictStr = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _OpenAISampling(_NullableFields):
    model: StrictStr
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    n: StrictInt = Field(1, ge=1, le=1)
    user: StrictStr | None = None


class OpenAIChatRequest(_OpenAISampling):
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: Tools = None


class OpenAICompletionRequest(_OpenAISampling):
    prompt: StrictStr | list[StrictStr]
    max_tokens: StrictInt | None = Field(16, ge=1)
    echo: StrictBool = False
    suffix: StrictStr | None = None


class OpenAIEmbeddingRequest(_Body):
    model: StrictStr
    input: StrictStr | list[StrictStr]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1)
    user: StrictStr | None = None
