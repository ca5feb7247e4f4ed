"""The two measurements: the latency the web app adds to one stream, and many streams at once.

Overhead: one client sends the same streamed chat request again and again,
alternately straight to a backend and through the web app's /v1 API (which
relays it to that backend through the gateway), on two keep-alive
connections. Alternating spreads any drift of the machine over both paths.
The added latency of a round is its time through the web app minus its
time straight to the backend, and the result reports percentiles of those
per-round differences. Their p99 carries the noise of both paths, so it
overstates the web app's own p99 rather than understating it.

Concurrency: N clients each open a connection and stream one chat through
the web app at once, with their starts spread evenly over a ramp. The
backend sends one token every 50 ms and stamps each token with its send
time. For
each token after the first, the added inter-token delay is the gap
between its arrival and the previous token's arrival, minus the gap
between their send times. The relay delay is the arrival time minus the
send time. Both include the client's own lag, which the same test straight
to the backend shows. The web app relays the tokens that it read from the
backend together as one event, so after a delay tokens can arrive at
once, and each later one of them counts a negative added delay.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gatewaybench.client import Connection, Stream

Progress = Callable[[str], None]
PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]


def process_cpu_seconds(pid: int) -> float:
    """Return the user and system CPU time that a process has used, from /proc (Linux)."""
    # The fields after the command name in parentheses start at the third, the state;
    # utime and stime are the 14th and 15th, in clock ticks.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    """Return the value below which `fraction` of the values lie (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True)
class TapTimes:
    """One chat's times at the timing relay (gatewaybench.tap), in seconds of time.monotonic()."""

    requested: float
    first_token: float
    done: float


class TapReport:
    """Reads the lines that the timing relay adds to its report file, one per chat."""

    def __init__(self, path: Path) -> None:
        path.touch()
        self.file = path.open()
        self.partial = ""
        self.times: list[TapTimes] = []

    def close(self) -> None:
        self.file.close()

    def times_of(self, stream: Stream) -> TapTimes | None:
        """Return the times of the chat that `stream` timed, or None if the relay saw none.

        That chat's request reached the relay after the client sent it, and its
        end before the client received it. Lines of earlier chats are dropped.
        """
        text = self.partial + self.file.read()
        *lines, self.partial = text.split("\n")
        for line in lines:
            requested, first_token, done = (float(value) for value in line.split())
            self.times.append(TapTimes(requested, first_token, done))
        if stream.done is None:
            return None
        found = None
        for times in self.times:
            if stream.sent <= times.requested and times.done <= stream.done:
                found = times
        self.times = [times for times in self.times if times.done > stream.done]
        return found


@dataclass
class Latencies:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    backend_ttft: list[float] = field(default_factory=list)
    """The same chats' times at the timing relay in front of the backend, when there is one."""
    backend_total: list[float] = field(default_factory=list)

    def add(self, stream: Stream, backend: TapTimes | None) -> None:
        self.ttft.append(stream.ttft)
        self.total.append(stream.total)
        if backend is not None:
            self.backend_ttft.append(backend.first_token - backend.requested)
            self.backend_total.append(backend.done - backend.requested)

    def beyond_backend(self, metric: str) -> list[float]:
        """Return each chat's time at the client minus its time at the timing relay."""
        times: list[float] = getattr(self, metric)
        backend: list[float] = getattr(self, f"backend_{metric}")
        return [time - at_backend for time, at_backend in zip(times, backend, strict=True)]


@dataclass
class OverheadResult:
    label: str
    model: str
    rounds: int
    max_tokens: int
    direct: Latencies = field(default_factory=Latencies)
    gateway: Latencies = field(default_factory=Latencies)
    errors: list[str] = field(default_factory=list)
    web_cpu_per_request: float | None = None
    """CPU seconds of the web process per request through it, warm-up included."""
    reference: bool = False
    """True for a path through nginx, which shows what any proxy adds; it has no target."""

    def added(self, metric: str, fraction: float) -> float:
        """Return a percentile of the per-round differences, gateway minus direct."""
        direct: list[float] = getattr(self.direct, metric)
        through: list[float] = getattr(self.gateway, metric)
        differences = [via - straight for via, straight in zip(through, direct, strict=True)]
        return percentile(differences, fraction)

    def noise(self, metric: str, fraction: float) -> float:
        """Return a percentile of the differences between consecutive direct rounds.

        Both paths of such a pair are the same, so this is what the per-round
        differences show for a gateway that adds nothing: their noise floor.
        """
        return _change_percentile(getattr(self.direct, metric), fraction)

    @property
    def tapped(self) -> bool:
        """True when every counted round has its times at the timing relay."""
        return bool(self.direct.backend_ttft) and len(self.direct.backend_ttft) == len(
            self.direct.ttft
        )

    def added_beyond_backend(self, metric: str, fraction: float) -> float:
        """Return a percentile of the per-round differences with each chat's backend time removed.

        For each chat, the time at the timing relay in front of the backend is
        subtracted from the time at the client. What is left is the path between
        the two, so the backend's variation from chat to chat drops out.
        """
        direct = self.direct.beyond_backend(metric)
        through = self.gateway.beyond_backend(metric)
        differences = [via - straight for via, straight in zip(through, direct, strict=True)]
        return percentile(differences, fraction)

    def noise_beyond_backend(self, metric: str, fraction: float) -> float:
        """Return noise() for the direct path's times with each chat's backend time removed."""
        return _change_percentile(self.direct.beyond_backend(metric), fraction)


def _change_percentile(values: list[float], fraction: float) -> float:
    """Return a percentile of the differences between consecutive values."""
    return percentile([later - earlier for earlier, later in itertools.pairwise(values)], fraction)


async def overhead(
    label: str,
    direct: Connection,
    gateway: Connection,
    model: str,
    *,
    rounds: int,
    warmup: int,
    max_tokens: int,
    progress: Progress,
    tap: TapReport | None = None,
) -> OverheadResult:
    """Time `rounds` streams on each path after `warmup` untimed ones.

    With `tap`, the report of the timing relay that both paths pass in front of
    the backend, each round also records the backend's own time of both chats.
    """
    body = {
        "model": model,
        "messages": PROMPT,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 1,
    }
    requests = {direct: direct.request_bytes(body), gateway: gateway.request_bytes(body)}
    result = OverheadResult(label, model, rounds, max_tokens)
    sides = {direct: result.direct, gateway: result.gateway}
    for index in range(warmup + rounds):
        order = (direct, gateway) if index % 2 == 0 else (gateway, direct)
        streams = {connection: await connection.chat(requests[connection]) for connection in order}
        failed = [stream for stream in streams.values() if not _complete(stream)]
        for stream in failed:
            result.errors.append(stream.error or "the stream ended without [DONE]")
        backend = {
            connection: tap.times_of(stream) if tap and not failed else None
            for connection, stream in streams.items()
        }
        if tap and not failed and None in backend.values():
            failed.append(streams[direct])
            result.errors.append("the timing relay saw no complete chat for a stream")
        # A round counts only when both paths completed, so that the lists stay paired.
        if index >= warmup and not failed:
            for connection, stream in streams.items():
                sides[connection].add(stream, backend[connection])
        if (index + 1) % 100 == 0:
            progress(f"{label}: {index + 1} of {warmup + rounds} rounds")
    return result


def _complete(stream: Stream) -> bool:
    return not stream.error and stream.done is not None and stream.first_token is not None


@dataclass
class ConcurrencyResult:
    path: str
    streams: int
    tokens: int
    completed: int
    errors: list[str]
    peak_open: int
    ttft: list[float]
    added_gaps: list[float]
    relay_delays: list[float]
    seconds: float
    web_cpu_per_token: float | None = None
    """CPU seconds of the web process per relayed token, its streams' requests included."""


async def concurrency(
    path: str,
    host: str,
    port: int,
    api_key: str | None,
    model: str,
    backend_url: str,
    *,
    streams: int,
    tokens: int,
    ramp: float,
) -> ConcurrencyResult:
    """Stream `streams` chats at once, starts spread over `ramp` seconds."""
    body = {"model": model, "messages": PROMPT, "stream": True, "max_tokens": tokens}
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def one(index: int) -> Stream:
        await asyncio.sleep(ramp * index / streams)
        connection = Connection(host, port, "/v1/chat/completions", api_key)
        try:
            return await connection.chat(connection.request_bytes(body), stamped=True)
        finally:
            connection.close()

    peak = 0
    # A full collection walks every stream's objects and stops the client meanwhile, for
    # up to 65 ms at 1,000 streams, which would show as added delay. The run is short, so
    # its garbage can wait until the end.
    gc.collect()
    gc.disable()
    try:
        async with httpx.AsyncClient(base_url=backend_url, timeout=5) as stats_client:
            # The backend's peak count of open streams resets only with the process, so read
            # it as the most open during this run by sampling it while the run goes on.
            tasks = [asyncio.create_task(one(index)) for index in range(streams)]
            while not all(task.done() for task in tasks):
                stats = (await stats_client.get("/stats")).json()
                peak = max(peak, stats["open"])
                await asyncio.wait(tasks, timeout=0.25)
    finally:
        gc.enable()
    results = [task.result() for task in tasks]
    return _concurrency_result(path, streams, tokens, results, peak, loop.time() - started)


def _concurrency_result(
    path: str, streams: int, tokens: int, results: list[Stream], peak: int, seconds: float
) -> ConcurrencyResult:
    errors: list[str] = []
    ttft: list[float] = []
    added: list[float] = []
    delays: list[float] = []
    completed = 0
    for stream in results:
        if stream.error or stream.done is None or len(stream.arrivals) != tokens:
            errors.append(stream.error or f"{len(stream.arrivals)} of {tokens} tokens")
            continue
        completed += 1
        ttft.append(stream.ttft)
        pairs = list(zip(stream.arrivals, stream.stamps, strict=True))
        delays.extend(arrival - stamp for arrival, stamp in pairs)
        for (arrival, stamp), (previous_arrival, previous_stamp) in zip(
            pairs[1:], pairs[:-1], strict=True
        ):
            added.append((arrival - previous_arrival) - (stamp - previous_stamp))
    return ConcurrencyResult(
        path, streams, tokens, completed, errors, peak, ttft, added, delays, seconds
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
