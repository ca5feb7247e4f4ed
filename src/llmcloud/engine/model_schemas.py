"""Request bodies of the model-management routes, with the fields of Ollama's API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmcloud.engine.errors import InvalidRequest


class _Body(BaseModel):
    # Unknown fields are ignored, as Ollama does, so newer clients keep working.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ModelReference(_Body):
    """A body naming one model in `model`, or in `name` as older clients send it."""

    model: str | None = None
    name: str | None = None

    def model_name(self) -> str:
        value = self.model or self.name
        if not value:
            raise InvalidRequest("model is required: name the model, for example 'smollm2:135m'")
        return value


class ShowRequest(ModelReference):
    verbose: bool = False


class DeleteRequest(ModelReference):
    pass


class CopyRequest(_Body):
    source: str
    destination: str


class PullRequest(ModelReference):
    insecure: bool = False
    stream: bool = True
    # llmcloud's extension: a GGUF URL or local path to pull under the name in `model`.
    from_: str | None = Field(None, alias="from")


class CreateRequest(ModelReference):
    from_: str | None = Field(None, alias="from")
    files: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    license: str | list[str] | None = None
    stream: bool = True
    quantize: str | None = None
    adapters: dict[str, str] | None = None
    messages: list[Any] | None = None
    modelfile: str | None = None

    def check_supported(self) -> None:
        """Raise InvalidRequest for the parts of Ollama's create that llmcloud does not do."""
        if self.quantize:
            raise InvalidRequest(
                f"quantize {self.quantize!r} is not supported: llmcloud does not quantize models; "
                "quantize the GGUF file with llama.cpp's llama-quantize and create from the result"
            )
        if self.adapters:
            raise InvalidRequest("adapters are not supported; merge the LoRA into the GGUF first")
        if self.messages:
            raise InvalidRequest("messages are not supported in create; send them with each chat")
        if self.modelfile is not None:
            raise InvalidRequest(
                "the modelfile field is not supported; send 'from' or 'files' with 'template', "
                "'system', 'parameters' and 'license' as separate fields"
            )
