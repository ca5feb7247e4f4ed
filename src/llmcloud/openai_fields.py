"""Request bodies of OpenAI's API, as both the engine's /v1 and the web app's /v1 read them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator


class NullMeansDefault(BaseModel):
    """A body whose optional fields take null as absent, so that their defaults apply.

    OpenAI's API takes null for its optional request fields, which the `openai`
    client (3.60) types as Optional: `n`, `stream`, `temperature` and the others.
    """

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # Required fields keep their null, so that its error names the field.
        required = {name for name, field in cls.model_fields.items() if field.is_required()}
        return {key: value for key, value in data.items() if value is not None or key in required}
