"""A model backend's refusal of a chat, put in terms that the web app's users can act on.

The gateway passes a backend's error status on as `HTTP 400 from /api/chat:
<detail>`, which suits operators' logs. The chat page and the `/v1` API show
the detail without that prefix, and a prompt longer than the model's context,
as llmcloud's engine words it (engine/service.py), gets advice that fits the
reader: a chat user shortens the message, and an API client shortens the
messages or picks a model with a longer context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Statuses of a backend's answer to a request that it would refuse however often it is sent.
REJECTED_STATUSES = frozenset({400, 404, 413, 422})

_HTTP_STATUS_PREFIX = re.compile(r"^HTTP \d{3} from \S+: ")
_CONTEXT_OVERFLOW = re.compile(
    r"the prompt is (?P<size>\d+) tokens(?: even without the oldest \d+ messages)?, "
    r"which does not fit the context of (?P<context>\d+) tokens"
)


@dataclass(frozen=True)
class ContextOverflow:
    """A prompt of `size` tokens for a model that reads `context` tokens at most."""

    size: int
    context: int


def rejection_detail(message: str) -> str:
    """Return the backend's own words from a gateway failure message."""
    return _HTTP_STATUS_PREFIX.sub("", message, count=1)


def context_overflow(message: str) -> ContextOverflow | None:
    """Return the sizes when the message reports a prompt longer than the context."""
    match = _CONTEXT_OVERFLOW.search(message)
    if match is None:
        return None
    return ContextOverflow(int(match["size"]), int(match["context"]))
