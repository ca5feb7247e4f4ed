"""The gateway's metrics of each chat, recorded by the relay at each step of the chat."""

from __future__ import annotations

import time

from prometheus_client import Gauge

from llmcloud.gateway.events import Done, Failed
from llmcloud.monitoring.llm_metrics import GenerationMetrics, record_queue_rejection, series_for


class ChatObserver:
    """Record one gateway chat's metrics under `gateway`: its queue wait, tokens and end.

    The labelled series are bound at the first step after the gateway found a
    backend that lists the model, so requests for unknown model names add no
    series. The relay calls these methods where it yields the matching event,
    rather than through a generator of its own around the relay's, which would
    add a step to every token. It calls token() and running() after the
    consumer has passed the event on, so a token's time is when it was sent.
    """

    __slots__ = ("_gauge", "_recorder", "model", "started")

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = time.perf_counter()
        self._recorder: GenerationMetrics | None = None
        self._gauge: Gauge | None = None
        """The gauge that counts the chat now: waiting, then running, then none."""

    def queued(self) -> None:
        recorder = self._bind()
        waiting = series_for("gateway", recorder.model).waiting
        if self._gauge is not waiting:
            self._move(waiting)

    def running(self) -> None:
        recorder = self._bind()
        self._move(series_for("gateway", recorder.model).running)

    def token(self) -> None:
        recorder = self._recorder
        if recorder is None:
            recorder = self._bind()
        recorder.chunk()

    def finished(self, final: Done | Failed) -> None:
        recorder = self._bind()
        if isinstance(final, Done):
            recorder.finished(final.completion_tokens, final.prompt_tokens, failed=False)
        else:
            recorder.finished(None, None, failed=True)

    def rejected(self) -> None:
        """Count a chat that the full queue rejected (GatewayBusy)."""
        record_queue_rejection("gateway", self.model)

    def closed(self) -> None:
        """Take the chat off the waiting or running gauge; call it once, at the end."""
        self._move(None)

    def _bind(self) -> GenerationMetrics:
        if self._recorder is None:
            self._recorder = GenerationMetrics("gateway", self.model, self.started)
        return self._recorder

    def _move(self, gauge: Gauge | None) -> None:
        if self._gauge is not None:
            self._gauge.dec()
        if gauge is not None:
            gauge.inc()
        self._gauge = gauge
