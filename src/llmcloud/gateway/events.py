"""The events of one chat, in the order a consumer receives them.

    Queued(position)*  Started(backend)  Token(text)*  Done | Failed

Queued comes only while the request waits for a free backend, again each time
its place changes. Started comes with the first token, once the gateway can no
longer fail over, so a backend that fails after Started ends the chat with
Failed(partial=True). Failed(partial=False) means no token was sent: every
backend that could answer failed, or one rejected the request.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Queued:
    position: int
    """1 for the next request to start."""


@dataclass(frozen=True, slots=True)
class Started:
    backend: str


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    """The text of the backend's tokens that arrived together, one or more."""


@dataclass(frozen=True, slots=True)
class Durations:
    """Durations in nanoseconds; None where the backend reports none (OpenAI's API has none)."""

    queued_ns: int
    """Time in the gateway's queue and on failed attempts, before the answering backend."""
    total_ns: int
    """From sending the request to the answering backend until its last line."""
    first_token_ns: int
    """From sending the request to the answering backend until its first token."""
    load_ns: int | None = None
    prompt_eval_ns: int | None = None
    eval_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Done:
    done_reason: str
    """Why the answer ended, such as "stop" or "length"."""
    prompt_tokens: int | None
    completion_tokens: int | None
    durations: Durations


@dataclass(frozen=True, slots=True)
class Failed:
    message: str
    partial: bool
    """True when tokens were sent before the failure, so the answer is cut short."""
    status_code: int = 502
    """The HTTP status that matches the failure, for callers that relay it."""


ChatEvent = Queued | Started | Token | Done | Failed
