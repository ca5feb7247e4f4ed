"""The gateway's metrics of each chat, recorded as its events pass."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

from prometheus_client import Gauge

from llmcloud.gateway.errors import GatewayBusy
from llmcloud.gateway.events import ChatEvent, Done, Failed, Queued, Started, Token
from llmcloud.monitoring.llm_metrics import GenerationMetrics, record_queue_rejection, series_for


async def observe_gateway_chat(
    model: str, events: AsyncGenerator[ChatEvent, None]
) -> AsyncGenerator[ChatEvent, None]:
    """Pass a gateway chat's events through, recording its metrics under `gateway`.

    The labelled series are bound at the first event, which comes only after
    the gateway found a backend that lists the model, so requests for unknown
    model names add no series.
    """
    started = time.perf_counter()
    recorder: GenerationMetrics | None = None
    gauges: dict[str, Gauge] = {}
    state = "new"

    def move(to: str) -> None:
        nonlocal state
        if to == state:
            return
        for name, gauge in gauges.items():
            if state == name:
                gauge.dec()
            if to == name:
                gauge.inc()
        state = to

    try:
        async with aclosing(events):
            async for event in events:
                # Tokens are nearly all of the events, so they take the shortest path.
                if type(event) is Token and recorder is not None:
                    recorder.chunk()
                    yield event
                    continue
                if recorder is None:
                    recorder = GenerationMetrics("gateway", model, started)
                    series = series_for("gateway", model)
                    gauges["running"] = series.running
                    gauges["waiting"] = series.waiting
                if isinstance(event, Queued) and state != "waiting":
                    move("waiting")
                elif isinstance(event, Started):
                    move("running")
                elif isinstance(event, Token):
                    recorder.chunk()
                elif isinstance(event, Done):
                    recorder.finished(event.completion_tokens, event.prompt_tokens, failed=False)
                elif isinstance(event, Failed):
                    recorder.finished(None, None, failed=True)
                yield event
    except GatewayBusy:
        record_queue_rejection("gateway", model)
        raise
    finally:
        move("done")
