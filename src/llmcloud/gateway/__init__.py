"""The gateway to the model backends; the web app asks it, never llama.cpp, for completions."""

from __future__ import annotations

from llmcloud.gateway.config import Backend, BackendKind
from llmcloud.gateway.errors import (
    GatewayBusy,
    GatewayError,
    InvalidBackends,
    InvalidChatRequest,
    NoBackendAvailable,
    ServiceUnavailable,
    UnknownModel,
)
from llmcloud.gateway.events import ChatEvent, Done, Durations, Failed, Queued, Started, Token
from llmcloud.gateway.gateway import Gateway, default_backends
from llmcloud.gateway.request import ChatRequest, check_model_name
from llmcloud.gateway.status import BackendStatus, GatewayStatus, ModelInfo

__all__ = [
    "Backend",
    "BackendKind",
    "BackendStatus",
    "ChatEvent",
    "ChatRequest",
    "Done",
    "Durations",
    "Failed",
    "Gateway",
    "GatewayBusy",
    "GatewayError",
    "GatewayStatus",
    "InvalidBackends",
    "InvalidChatRequest",
    "ModelInfo",
    "NoBackendAvailable",
    "Queued",
    "ServiceUnavailable",
    "Started",
    "Token",
    "UnknownModel",
    "check_model_name",
    "default_backends",
]
