"""Timed generations: through the engine's Ollama API, llama-server's API, or llama_cpp.Llama.

Every function returns a `Generation` with client-side timestamps from
`time.perf_counter()`: when the request started, when the first and the last
piece of text arrived, and when the response ended. The decode rate is the
tokens after the first divided by the time from the first to the last token,
so prompt evaluation and connection set-up are left out of it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import llama_cpp

from enginebench.wire import Endpoint, post_json, post_lines

# The engine registers the bundled model under this name.
ENGINE_MODEL = "smollm2:135m"


@dataclass(frozen=True)
class Sampling:
    """The generation settings that every side gets: greedy decoding, no stop strings."""

    max_tokens: int
    temperature: float = 0.0
    repeat_penalty: float = 1.0


@dataclass
class Generation:
    """One timed generation; `server_*` fields are the server's own count, when it reports one."""

    tokens: int
    started: float
    first_token: float
    last_token: float
    ended: float
    text: str = ""
    server_tokens: int | None = None
    server_eval_s: float | None = None

    @property
    def time_to_first_token_s(self) -> float:
        return self.first_token - self.started

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first token, measured on the client."""
        span = self.last_token - self.first_token
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0

    @property
    def end_to_end_rate(self) -> float:
        """Tokens per second over the whole request, prompt evaluation included."""
        span = self.ended - self.started
        return self.tokens / span if span > 0 else 0.0

    @property
    def server_rate(self) -> float | None:
        if self.server_tokens is None or not self.server_eval_s:
            return None
        return self.server_tokens / self.server_eval_s


class TimedText:
    """Collects pieces of streamed text with the time each one arrived."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        if not text:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.parts.append(text)

    def finish(self, tokens: int, **server: Any) -> Generation:
        ended = time.perf_counter()
        if self.first is None or self.last is None:
            raise RuntimeError("the generation returned no text; pick a prompt that makes text")
        return Generation(
            tokens=tokens,
            started=self.started,
            first_token=self.first,
            last_token=self.last,
            ended=ended,
            text="".join(self.parts),
            **server,
        )


async def engine_stream(endpoint: Endpoint, prompt: str, sampling: Sampling) -> Generation:
    """Stream /api/generate as NDJSON and time every line that carries text."""
    timed = TimedText()
    body = _engine_body(prompt, sampling, stream=True)
    async for line in post_lines(endpoint, "/api/generate", body):
        if not line:
            continue
        data = json.loads(line)
        if "error" in data:
            raise RuntimeError(f"engine error: {data['error']}")
        timed.add(data.get("response", ""))
        if data.get("done"):
            return timed.finish(
                data["eval_count"],
                server_tokens=data["eval_count"],
                server_eval_s=data["eval_duration"] / 1e9,
            )
    raise RuntimeError("the engine's stream ended without a final done line")


async def engine_whole(endpoint: Endpoint, prompt: str, sampling: Sampling) -> Generation:
    """Ask /api/generate for the whole answer at once ("stream": false)."""
    started = time.perf_counter()
    data = await post_json(endpoint, "/api/generate", _engine_body(prompt, sampling, stream=False))
    ended = time.perf_counter()
    return Generation(
        tokens=data["eval_count"],
        started=started,
        first_token=started,
        last_token=ended,
        ended=ended,
        text=data["response"],
        server_tokens=data["eval_count"],
        server_eval_s=data["eval_duration"] / 1e9,
    )


def _engine_body(prompt: str, sampling: Sampling, *, stream: bool) -> dict[str, Any]:
    return {
        "model": ENGINE_MODEL,
        "prompt": prompt,
        "raw": True,
        "stream": stream,
        "keep_alive": -1,
        "options": {
            "temperature": sampling.temperature,
            "repeat_penalty": sampling.repeat_penalty,
            "num_predict": sampling.max_tokens,
            "stop": [],
        },
    }


async def llama_server_stream(endpoint: Endpoint, prompt: str, sampling: Sampling) -> Generation:
    """Stream llama-server's native /completion endpoint (SSE) and time every text event."""
    timed = TimedText()
    body = {
        "prompt": prompt,
        "stream": True,
        "n_predict": sampling.max_tokens,
        "temperature": sampling.temperature,
        "repeat_penalty": sampling.repeat_penalty,
        "cache_prompt": True,
    }
    async for line in post_lines(endpoint, "/completion", body):
        if not line.startswith(b"data: "):
            continue
        data = json.loads(line[6:])
        timed.add(data.get("content", ""))
        if data.get("stop"):
            timings = data["timings"]
            return timed.finish(
                timings["predicted_n"],
                server_tokens=timings["predicted_n"],
                server_eval_s=timings["predicted_ms"] / 1000,
            )
    raise RuntimeError("llama-server's stream ended without a final stop event")


def direct_stream(
    llm: llama_cpp.Llama, prompt: str, sampling: Sampling, *, tokens: int
) -> Generation:
    """Stream `Llama.create_completion` in this process.

    Streamed chunks do not carry token counts, so `tokens` comes from a
    non-streamed run of the same greedy generation (`direct_whole`), and the
    two texts must match.
    """
    timed = TimedText()
    chunks = llm.create_completion(
        prompt,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        repeat_penalty=sampling.repeat_penalty,
        stream=True,
    )
    for chunk in chunks:
        timed.add(chunk["choices"][0]["text"])
    return timed.finish(tokens)


def direct_whole(llm: llama_cpp.Llama, prompt: str, sampling: Sampling) -> Generation:
    """Run `Llama.create_completion` without streaming in this process."""
    started = time.perf_counter()
    result = llm.create_completion(
        prompt,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        repeat_penalty=sampling.repeat_penalty,
    )
    ended = time.perf_counter()
    return Generation(
        tokens=result["usage"]["completion_tokens"],
        started=started,
        first_token=started,
        last_token=ended,
        ended=ended,
        text=result["choices"][0]["text"],
    )
