"""The two measurements: one stream against llama-cpp-python, many streams against llama-server.

Both interleave the sides round by round, so that load from other processes on
the machine falls on every side alike, and report medians over the rounds. A
side never runs at the same time as another one.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import llama_cpp

from enginebench import clients
from enginebench.clients import Generation, Sampling
from enginebench.wire import Endpoint

StreamFunction = Callable[[Endpoint, str, Sampling], Awaitable[Generation]]

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TOPICS = [
    "a lighthouse keeper who finds a message in a bottle",
    "the history of the printing press",
    "how a city water system works, step by step",
    "a journey across a desert on a camel",
    "the life cycle of a star",
    "a chef who opens a restaurant on a mountain",
    "how bees build a hive and make honey",
    "a robot that learns to paint",
]


def chat_prompt(topic: str) -> str:
    """Return a prompt in SmolLM2's ChatML chat template that requests a long text."""
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\nWrite a long, detailed text about {topic}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


PROMPTS = [chat_prompt(topic) for topic in TOPICS]


@dataclass
class SingleStreamResult:
    """Per-round generations of each side, keyed by side name."""

    rounds: dict[str, list[Generation]] = field(default_factory=dict)
    # Generations whose text differs from llama_cpp.Llama's greedy text, as "side round N".
    mismatches: list[str] = field(default_factory=list)

    def add(self, side: str, generation: Generation) -> None:
        self.rounds.setdefault(side, []).append(generation)

    def median(self, side: str, metric: Callable[[Generation], float | None]) -> float | None:
        values = [value for value in map(metric, self.rounds.get(side, [])) if value is not None]
        return statistics.median(values) if values else None

    def best(self, side: str, metric: Callable[[Generation], float]) -> float | None:
        """Return the highest value over the rounds: the round that other work slowed least."""
        values = list(map(metric, self.rounds.get(side, [])))
        return max(values) if values else None

    def median_ratio(
        self, side: str, reference: str, metric: Callable[[Generation], float]
    ) -> float | None:
        """Return the median over rounds of side / reference, each pair from the same round.

        Load from other processes drifts over minutes, so a ratio within a round
        varies less than the ratio of two medians over the whole run.
        """
        pairs = zip(self.rounds.get(side, []), self.rounds.get(reference, []), strict=False)
        ratios = [metric(a) / metric(b) for a, b in pairs if metric(b) > 0]
        return statistics.median(ratios) if ratios else None


@dataclass(frozen=True)
class ConcurrentRound:
    """One round of `streams` requests started together on one server."""

    streams: int
    generations: list[Generation]
    started: float
    ended: float

    @property
    def aggregate_rate(self) -> float:
        """All generated tokens divided by the wall time from the first request to the last end."""
        return sum(g.tokens for g in self.generations) / (self.ended - self.started)

    @property
    def median_ttft_s(self) -> float:
        return statistics.median(g.time_to_first_token_s for g in self.generations)


@dataclass
class ConcurrentResult:
    """Rounds per server name and stream count."""

    rounds: dict[tuple[str, int], list[ConcurrentRound]] = field(default_factory=dict)

    def add(self, server: str, result: ConcurrentRound) -> None:
        self.rounds.setdefault((server, result.streams), []).append(result)

    def median(
        self, server: str, streams: int, metric: Callable[[ConcurrentRound], float]
    ) -> float | None:
        rounds = self.rounds.get((server, streams), [])
        return statistics.median(map(metric, rounds)) if rounds else None

    def best(
        self, server: str, streams: int, metric: Callable[[ConcurrentRound], float]
    ) -> float | None:
        """Return the highest value over the rounds: the round that other work slowed least."""
        rounds = self.rounds.get((server, streams), [])
        return max(map(metric, rounds)) if rounds else None

    def median_ratio(
        self, server: str, reference: str, streams: int, metric: Callable[[ConcurrentRound], float]
    ) -> float | None:
        """Return the median over rounds of server / reference at one stream count."""
        pairs = zip(
            self.rounds.get((server, streams), []),
            self.rounds.get((reference, streams), []),
            strict=False,
        )
        ratios = [metric(a) / metric(b) for a, b in pairs if metric(b) > 0]
        return statistics.median(ratios) if ratios else None


async def single_stream(
    llm: llama_cpp.Llama,
    engine: Endpoint,
    sampling: Sampling,
    rounds: int,
    report: Callable[[str], None],
) -> SingleStreamResult:
    """Compare one stream through the engine's HTTP API with llama_cpp.Llama in this process."""
    prompt = PROMPTS[0]
    reference = clients.direct_whole(llm, prompt, sampling)
    await clients.engine_stream(engine, prompt, sampling)

    async def direct_streamed() -> Generation:
        return clients.direct_stream(llm, prompt, sampling, tokens=reference.tokens)

    async def direct_whole() -> Generation:
        return clients.direct_whole(llm, prompt, sampling)

    sides: dict[str, Callable[[], Awaitable[Generation]]] = {
        "direct_stream": direct_streamed,
        "engine_stream": lambda: clients.engine_stream(engine, prompt, sampling),
        "direct_whole": direct_whole,
        "engine_whole": lambda: clients.engine_whole(engine, prompt, sampling),
    }
    result = SingleStreamResult()
    names = list(sides)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            generation = await sides[name]()
            if generation.text != reference.text:
                result.mismatches.append(
                    f"{name} round {index + 1}: {generation.tokens} tokens of different text"
                )
            result.add(name, generation)
        rates = ", ".join(
            f"{name} {_side_rate(name, result.rounds[name][-1]):.1f}" for name in names
        )
        report(f"single stream round {index + 1}/{rounds}: tokens/s {rates}")
    return result


def _side_rate(side: str, generation: Generation) -> float:
    """Return the rate that the one-stream table compares for this side."""
    return generation.decode_rate if side.endswith("stream") else generation.end_to_end_rate


async def concurrent_round(
    stream: StreamFunction, client: Endpoint, streams: int, sampling: Sampling
) -> ConcurrentRound:
    """Start `streams` requests at once, each with its own prompt, and wait for all of them."""
    started = time.perf_counter()
    requests = [stream(client, PROMPTS[i % len(PROMPTS)], sampling) for i in range(streams)]
    generations = await asyncio.gather(*requests)
    ended = max(g.ended for g in generations)
    return ConcurrentRound(streams, list(generations), started, ended)


async def many_streams(
    servers: dict[str, tuple[StreamFunction, Endpoint]],
    stream_counts: list[int],
    sampling: Sampling,
    rounds: int,
    report: Callable[[str], None],
) -> ConcurrentResult:
    """Run each stream count on each server in turn, `rounds` times."""
    for stream, client in servers.values():
        await concurrent_round(stream, client, max(stream_counts), sampling)

    result = ConcurrentResult()
    names = list(servers)
    for index in range(rounds):
        for streams in stream_counts:
            shift = (index + streams) % len(names)
            for name in names[shift:] + names[:shift]:
                stream, client = servers[name]
                result.add(name, await concurrent_round(stream, client, streams, sampling))
        rates = ", ".join(
            f"{name} x{streams} {result.rounds[(name, streams)][-1].aggregate_rate:.1f}"
            for streams in stream_counts
            for name in names
        )
        report(f"many streams round {index + 1}/{rounds}: tokens/s {rates}")
    return result
