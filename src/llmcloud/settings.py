"""The table of every llmcloud setting.

Each field of `Settings` is one setting: its name, type, default and help text.
The same table gives the `LLMCLOUD_*` environment variables, the keys of the
TOML config file, `llmcloud config show` and docs/configuration.md (a test
compares that file with the table). Sources, strongest first: values passed in
code, environment variables, the TOML file, the defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from llmcloud.gateway.config import BackendList, KeepAlive
from llmcloud.units import parse_duration

ENV_PREFIX = "LLMCLOUD_"
CONFIG_ENV = "LLMCLOUD_CONFIG"


class ConfigError(Exception):
    """A setting has an invalid value, or the config file cannot be read."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llmcloud"


def default_config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmcloud" / "llmcloud.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    # General
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Folder that holds all state: database, secrets, certificates, models.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level of log records that are written."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log line format: `text` for people, `json` for log collectors."
    )

    # Engine server
    engine_host: str = Field(
        "127.0.0.1",
        description="Address the engine listens on. Any address but loopback needs engine_token.",
    )
    engine_port: int = Field(11434, ge=1, le=65535, description="TCP port of the engine.")
    engine_token: SecretStr | None = Field(
        None,
        description="Bearer token that clients of the engine API must send. Required when "
        "engine_host is not a loopback address.",
    )
    engine_url: str = Field(
        "http://127.0.0.1:11434",
        description="Engine URL that the client commands (`llmcloud run`, `list`, `pull`) use.",
    )
    engine_max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest accepted JSON request body, in bytes; larger bodies get 413.",
    )

    # Engine scheduling
    engine_keep_alive: str = Field(
        "5m",
        description="How long a model stays loaded after its last request when the request "
        "names no keep_alive: seconds or a duration such as `5m`; negative keeps it loaded.",
    )
    engine_num_parallel: int = Field(
        4,
        ge=1,
        le=64,
        description="Requests one loaded model decodes at once, in one batch (its slots).",
    )
    engine_max_queue: int = Field(
        64,
        ge=0,
        description="Requests that may wait for a slot per model; past that the engine "
        "answers 503 with Retry-After.",
    )
    engine_max_loaded_models: int = Field(
        2, ge=1, description="Models kept loaded at once; the least recently used one unloads."
    )
    engine_num_ctx: int = Field(
        2048,
        ge=64,
        description="Default context length in tokens per request when the request gives no "
        "num_ctx.",
    )
    engine_max_num_ctx: int = Field(
        32768, ge=64, description="Largest num_ctx that a request may ask for, in tokens."
    )
    engine_gpu_layers: int = Field(
        0,
        ge=-1,
        description="Model layers offloaded to the GPU; -1 offloads all. Needs llama-cpp-python "
        "built with GPU support.",
    )
    engine_threads: int | None = Field(
        None, ge=1, description="CPU threads for decoding; unset means the number of cores."
    )
    engine_registry: str = Field(
        "https://registry.ollama.ai",
        description="Model registry that `llmcloud pull NAME` downloads from.",
    )

    # Web app and accounts
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the database, for example "
        "`postgresql://USER:PASSWORD@HOST:5432/llmcloud`. Unset means SQLite in "
        "`<data_dir>/llmcloud.db`.",
    )
    signup_mode: Literal["open", "approval", "closed"] = Field(
        "approval",
        description="Who may sign up: `open` makes new accounts users at once, `approval` "
        "makes them pending until an admin approves them, `closed` rejects sign-ups, so that "
        "only admins create accounts. In every mode the first account becomes an admin.",
    )
    session_idle_timeout_seconds: int = Field(
        14 * 24 * 3600,
        ge=60,
        description="Seconds after its last request that a login session expires.",
    )
    session_max_age_seconds: int = Field(
        30 * 24 * 3600,
        ge=60,
        description="Seconds after log-in that a session expires however active it is.",
    )
    web_host: str = Field(
        "127.0.0.1",
        description="Address the web app listens on. Put it behind a TLS proxy, or use "
        "llmcloud's own TLS, before listening on anything but loopback.",
    )
    web_port: int = Field(8080, ge=1, le=65535, description="TCP port of the web app.")
    public_url: str | None = Field(
        None,
        description="URL at which users reach the web app, such as `https://chat.example.org`. "
        "Forms and WebSockets must come from its origin, and an https URL makes the session "
        "cookie Secure. Unset means the origin that each request's Host header names.",
    )
    web_default_model: str = Field(
        "smollm2:135m",
        description="Model that new chats preselect in the model picker when a backend lists it; "
        "otherwise the first listed model is preselected.",
    )
    web_max_prompt_length: int = Field(
        32_000,
        ge=1,
        le=1_000_000,
        description="Longest prompt that the chat page accepts, in characters.",
    )
    web_max_import_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1024,
        description="Largest chat export file that may be imported, in bytes.",
    )
    web_max_answer_tokens: int | None = Field(
        None,
        ge=1,
        description="Longest answer, in tokens, that the chat page asks a model for (sent as "
        "Ollama's num_predict, OpenAI's max_tokens). Unset leaves the limit to the backend.",
    )

    # Gateway
    gateway_backends: BackendList = Field(
        None,
        description="Model backends that the web app's gateway routes chats to: a TOML array "
        "of tables `[[gateway_backends]]`, or a JSON list in the environment. Each has `name`, "
        "`kind` (`ollama` for llmcloud engines and Ollama, `openai` for OpenAI-compatible "
        "servers such as vLLM), `base_url`, and optionally `api_key` (sent as a Bearer token), "
        "`weight` (share of the load, default 1), `max_parallel` (requests sent to it at once, "
        "default 4), `enabled` (default true) and `ca_bundle` (PEM file to verify its TLS "
        "certificate). Unset means one llmcloud engine at engine_url, with engine_token as its "
        "key and engine_num_parallel as its max_parallel.",
    )
    gateway_keep_alive: KeepAlive = Field(
        "5m",
        description="keep_alive that the gateway sends with every chat to Ollama-API backends: "
        "how long the backend keeps the model loaded after the request; seconds or a duration "
        "such as `5m`; negative keeps it loaded.",
    )
    gateway_health_interval: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="Seconds between two health checks of a backend (GET /api/tags or "
        "/v1/models). A backend that fails one leaves rotation; one that passes returns.",
    )
    gateway_max_queue_per_model: int = Field(
        32,
        ge=0,
        description="Chat requests per model that may wait in the gateway for a free backend; "
        "past that the gateway answers 503 with Retry-After at once.",
    )
    gateway_connect_timeout: float = Field(
        3.0,
        gt=0,
        description="Seconds to wait for a TCP and TLS connection to a backend before failing "
        "over to another.",
    )
    gateway_first_token_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds to wait for a backend's first token, model loading included, "
        "before failing over to another; also the longest pause between two tokens before the "
        "answer counts as failed.",
    )

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = urlsplit(value.strip())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"invalid public_url {value!r}; expected an http:// or https:// URL with a host, "
                "such as https://chat.example.org"
            )
        return value.strip().rstrip("/")

    @field_validator("engine_token", "database_url", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        # LLMCLOUD_ENGINE_TOKEN= (set but empty) must not count as a token.
        return None if value == "" else value

    @field_validator("engine_keep_alive")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file_path()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def keep_alive_seconds(self) -> float:
        return parse_duration(self.engine_keep_alive)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    # Deployment
    session_secret_key: SecretStr | None = Field(
        None,
        description="Key that signs session cookies, as 64 hex digits (32 bytes), for example "
        "from `openssl rand -hex 32`. Every web instance on one database must have the same "
        "key, and one whose key differs from the database's record refuses to start. Unset "
        "means the key file `<data_dir>/secrets/session_key`, created on first start.",
    )

    @field_validator("session_secret_key", mode="before")
    @classmethod
    def _check_session_secret_key(cls, value: object) -> object:
        if value is None or value == "":
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
            raise ValueError(
                f"invalid key of {len(text.strip())} characters; expected 64 hex digits, "
                "such as the output of `openssl rand -hex 32`"
            )
        return text.strip().lower()


def _config_file_path() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} from {CONFIG_ENV} not found")
        return path
    default = default_config_file()
    return default if default.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning validation errors into one readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc)) from None
    except SettingsError as exc:
        # Raised for a value that must be JSON in the environment, such as a list of backends.
        raise ConfigError(f"invalid settings: {exc}; complex values must be valid JSON") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the config file: {exc}") from None


def _describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        setting = str(error["loc"][0]) if error["loc"] else "?"
        path = setting + "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"][1:]
        )
        value = error.get("input")
        secret = setting in SECRET_SETTINGS or any("key" in str(part) for part in error["loc"])
        if secret:
            shown = "***"
        elif isinstance(value, dict | list):
            # A whole table may contain an API key, so only scalar values are shown.
            shown = f"({type(value).__name__})"
        else:
            shown = repr(value)
        env = f"{ENV_PREFIX}{setting.upper()}"
        lines.append(f"setting {path} (env {env}) = {shown}: {error['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


SECRET_SETTINGS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)


def describe_settings() -> list[dict[str, str]]:
    """List every setting with its env var, type, default and help, for docs and `config show`."""
    rows = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "see help"
            if name == "data_dir":
                default = "`$XDG_DATA_HOME/llmcloud` (`~/.local/share/llmcloud`)"
        elif field.default is None:
            default = "unset"
        else:
            default = f"`{field.default}`"
        rows.append(
            {
                "name": name,
                "env": f"{ENV_PREFIX}{name.upper()}",
                "type": _type_name(field.annotation),
                "default": default,
                "help": field.description or "",
            }
        )
    return rows


def _type_name(annotation: Any) -> str:
    text = str(annotation)
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    text = re.sub(r"\b(?:[a-z_]+\.)+([A-Za-z_]\w*)", r"\1", text)
    return text.replace("NoneType", "None")
