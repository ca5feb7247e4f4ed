"""Configuration of the gateway's backends, as the settings table and the admin pages give it."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
)

from llmcloud.units import parse_duration

BackendKind = Literal["ollama", "openai"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The parts of a URL that may carry a secret: the user info, which is everything after the
# scheme up to the last "@" however the slashes are written, and the query.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:(?://)?)?[^@]*@")
_QUERY = re.compile(r"\?[^#]*")
_PORT = re.compile(r"^[^:]*:(?P<port>[^:]*)$")


def hide_userinfo(url: str) -> str:
    """Return the URL with its user info and query replaced by ***, for messages and pages."""
    return _QUERY.sub("?***", _USERINFO.sub(r"\1***@", url, count=1), count=1)


def _port_text(url: str) -> str | None:
    """Return the port of a URL as written, or None when it names none."""
    authority = re.split(r"[/?#]", url.split("://", 1)[-1], maxsplit=1)[0].rsplit("@", 1)[-1]
    if authority.startswith("["):
        authority = authority.partition("]")[2]
    host_and_port = _PORT.match(authority)
    return host_and_port["port"] if host_and_port else None


class Backend(BaseModel):
    """One model server behind the gateway.

    `kind` is the API the server speaks: "ollama" for llmcloud engines and
    Ollama servers (POST /api/chat, GET /api/tags), "openai" for any
    OpenAI-compatible server such as vLLM (POST /v1/chat/completions, GET
    /v1/models). For "openai", a base_url that ends in /v1, as OpenAI's
    clients write it, is accepted and the /v1 is dropped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique name, shown on the admin page and in logs.")
    kind: BackendKind = "ollama"
    base_url: str = Field(description="http(s) URL of the server, without /api or /v1.")
    api_key: SecretStr | None = Field(None, description="Bearer key sent with every request.")
    weight: int = Field(1, ge=1, le=1000, description="Share of the load relative to others.")
    max_parallel: int = Field(
        4,
        ge=1,
        le=100_000,
        description="Requests sent to this backend at once; more wait in the gateway's queue. "
        "Match it to the server's parallel slots (engine_num_parallel, OLLAMA_NUM_PARALLEL, "
        "vLLM's max_num_seqs).",
    )
    enabled: bool = True
    ca_bundle: FilePath | None = Field(
        None, description="PEM file of CA certificates to verify the server's TLS certificate."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"invalid backend name {value!r}; expected 1 to 64 letters, digits, '.', '_' "
                "or '-', starting with a letter or digit"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        redacted = hide_userinfo(value)
        try:
            url = httpx.URL(value.strip())
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid base_url {redacted!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"invalid base_url {redacted!r}; expected an http:// or https:// URL with a host, "
                "such as http://127.0.0.1:11434"
            )
        if url.userinfo:
            raise ValueError(
                f"invalid base_url {redacted!r}; remove the user name and password from the URL. "
                "For a server that takes a Bearer key, put the key in api_key (the API key "
                "field on the Backends page)"
            )
        port = _port_text(value.strip())
        if port is not None and not (port.isascii() and port.isdigit()):
            raise ValueError(
                f"invalid base_url {redacted!r}; port {port!r} is not a number, "
                "expected digits 0-9 such as :11434"
            )
        if url.port is not None and not 1 <= url.port <= 65535:
            raise ValueError(
                f"invalid base_url {redacted!r}; port {url.port} is out of range, "
                "expected 1 to 65535"
            )
        if url.query or url.fragment:
            raise ValueError(f"invalid base_url {redacted!r}; remove the query or fragment")
        return str(url).rstrip("/")

    def api_base_url(self) -> str:
        """The URL that API paths are appended to."""
        if self.kind == "openai" and self.base_url.endswith("/v1"):
            return self.base_url.removesuffix("/v1")
        return self.base_url


def _hide_api_keys(value: Any) -> Any:
    """Wrap raw api_key strings in SecretStr, so that a validation error never prints a key."""
    if isinstance(value, dict):
        key = value.get("api_key")
        if isinstance(key, str):
            return {**value, "api_key": SecretStr(key)}
        return value
    if isinstance(value, list):
        return [_hide_api_keys(item) for item in value]
    return value


def _check_keep_alive(value: str) -> str:
    parse_duration(value)
    return value


# Types for the settings table: a list of backends (TOML array of tables, or JSON in the
# environment) and a keep_alive duration.
BackendList = Annotated[list[Backend] | None, BeforeValidator(_hide_api_keys)]
KeepAlive = Annotated[str, AfterValidator(_check_keep_alive)]


def keep_alive_wire_value(keep_alive: str) -> str | int | float:
    """Return keep_alive as Ollama's API accepts it.

    Ollama reads a JSON number as seconds and a string as a Go duration such as
    "5m"; a string without a unit, such as "-1", is an error there. So a plain
    number goes out as a number and anything else as the string it is.
    """
    text = keep_alive.strip()
    seconds = parse_duration(text)
    try:
        float(text)
    except ValueError:
        return text
    return int(seconds) if seconds.is_integer() else seconds
