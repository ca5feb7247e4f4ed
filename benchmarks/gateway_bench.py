"""Benchmark the latency that the web app's /v1 API and gateway add, and how many streams it holds.

Usage: .venv/bin/python benchmarks/gateway_bench.py [--quick] [--streams N ...] [--no-write]

Starts, each as its own process on loopback: two benchmark backends
(benchmarks/gatewaybench/backend.py), one sending tokens as fast as it can
and one sending a token every 50 ms; `llmcloud engine` with the bundled
model; and `llmcloud web` with all three as gateway backends and an
account with an API key. Then it measures:

- added latency: time to first token and total time of a streamed chat
  through the web app's /v1 API against straight to the backend, with the
  fast backend and with the real model (median and p99). The real model
  runs once on the shared cores, and once with a web app of its own pinned
  to a core of its own, and a one-thread engine and the client on another.
  Each of the three is measured through nginx as well, where nginx is
  installed, as a reference for what any proxy adds on the same path;
- concurrent streams: errors and added inter-token delay at each number of
  simultaneous streams, through the web app and, as a baseline, straight to
  the 50 ms backend.

It prints the results as Markdown and rewrites the "Gateway" section of
docs/benchmarks.md unless --no-write is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvloop

from gatewaybench import measure, report, servers
from gatewaybench.client import Connection

DOCS_PAGE = servers.REPOSITORY / "docs" / "benchmarks.md"
FAST_MODEL = "bench-fast"
PACED_MODEL = "bench-paced"
ENGINE_MODEL = "smollm2:135m"
TOKEN_INTERVAL = 0.05
HOST = "127.0.0.1"


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and streams, a check")
    parser.add_argument("--rounds", type=int, help="timed rounds with the fast backend (500)")
    parser.add_argument("--model-rounds", type=int, help="timed rounds with the real model (300)")
    parser.add_argument(
        "--streams", type=int, nargs="+", help="concurrent stream counts (250 500 1000 1500)"
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=200,
        help="tokens per concurrent stream (200: 10 s, longer than opening 1,000 streams takes)",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the engine")
    parser.add_argument("--no-model", action="store_true", help="skip the real model")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the docs")
    arguments = parser.parse_args(argv)
    if arguments.rounds is None:
        arguments.rounds = 100 if arguments.quick else 500
    if arguments.model_rounds is None:
        arguments.model_rounds = 5 if arguments.quick else 300
    if arguments.streams is None:
        arguments.streams = [100, 250] if arguments.quick else [250, 500, 1000, 1500]
    return arguments


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Tapped:
    """A backend behind the timing relay: the relay's process and its report."""

    tap: servers.ServerProcess
    report: measure.TapReport

    def stop(self) -> None:
        self.report.close()
        self.tap.stop()


def start_tapped(backend: servers.ServerProcess, data_dir: Path) -> Tapped:
    report = data_dir / f"tap-{backend.port}.txt"
    tap = servers.start_tap(backend, report)
    servers.set_realtime(tap.process.pid, True)
    return Tapped(tap, measure.TapReport(report))


@contextlib.contextmanager
def realtime_client() -> Iterator[None]:
    """Run the client at real-time priority, as the timing relay runs, while the block runs.

    The two stand for users and a network on machines of their own, so their
    work should not wait for the engine's or the web app's. On the path
    through the web app, the client is woken from the other core. At normal
    priority it then waited for the engine's thread on its own core, up to
    5 ms and in about one chat in five in one run. The direct path has no
    such wait.
    """
    if not servers.set_realtime(os.getpid(), True):
        progress("real-time priority is not allowed here: the client runs at normal priority")
    try:
        yield
    finally:
        servers.set_realtime(os.getpid(), False)


async def measure_overheads(
    arguments: argparse.Namespace,
    data_dir: Path,
    web: servers.ServerProcess,
    api_key: str,
    fast: Tapped,
    engine: Tapped | None,
) -> list[measure.OverheadResult]:
    through = Connection(HOST, web.port, "/v1/chat/completions", api_key)
    results = []
    try:
        progress(f"added latency, fast backend: {arguments.rounds} rounds")
        label = "fast fake backend"
        results.extend(
            await with_reference(
                data_dir / "nginx-fast", label, fast, FAST_MODEL, arguments.rounds, 8
            )
        )
        results.append(
            await overhead_with_cpu(web, label, fast, through, FAST_MODEL, arguments.rounds, 8)
        )
        if engine is not None:
            progress(f"added latency, real model: {arguments.model_rounds} rounds")
            label = f"real model ({ENGINE_MODEL}), cores shared"
            rounds = arguments.model_rounds
            results.extend(
                await with_reference(data_dir / "nginx", label, engine, ENGINE_MODEL, rounds, 16)
            )
            results.append(
                await overhead_with_cpu(web, label, engine, through, ENGINE_MODEL, rounds, 16)
            )
    finally:
        through.close()
    return results


async def with_reference(
    data_dir: Path,
    label: str,
    backend: Tapped,
    model: str,
    rounds: int,
    max_tokens: int,
    cores: set[int] | None = None,
) -> list[measure.OverheadResult]:
    """Measure nginx in front of `backend`, on `cores` when given; no row without nginx."""
    if not servers.nginx_available():
        progress("nginx is not installed (scripts/install-test-packages): no reference row")
        return []
    nginx = servers.start_nginx(data_dir, backend.tap)
    if cores is not None:
        servers.pin(nginx.process.pid, cores)
    direct = Connection(HOST, backend.tap.port, "/v1/chat/completions", None)
    through = Connection(HOST, nginx.port, "/v1/chat/completions", None)
    try:
        with realtime_client():
            result = await measure.overhead(
                f"{label}, through nginx (reference)",
                direct,
                through,
                model,
                rounds=rounds,
                warmup=20 if max_tokens <= 8 else 3,
                max_tokens=max_tokens,
                progress=progress,
                tap=backend.report,
            )
    finally:
        direct.close()
        through.close()
        nginx.stop()
    result.reference = True
    return [result]


async def measure_isolated(
    arguments: argparse.Namespace, data_dir: Path, cores: list[int]
) -> list[measure.OverheadResult]:
    """Measure with a web app on the first core, and a one-thread engine and the client on the last.

    This separates the gateway's own latency from the engine and the web app
    competing for the same cores, as on two machines. The engine and the web
    app are processes of their own, so that nothing else routes to them. The
    client stands for users elsewhere: on the engine's core it takes the same
    CPU time from the engine on both paths.
    """
    progress(f"added latency, real model, web app on its own core: {arguments.model_rounds} rounds")
    started: list[servers.ServerProcess] = []
    web_cores, engine_cores = set(cores[:-1]), {cores[-1]}
    tapped: Tapped | None = None
    try:
        engine = servers.start_engine(data_dir / "engine-alone", 1)
        started.append(engine)
        tapped = start_tapped(engine, data_dir)
        web_dir = data_dir / "web-alone"
        api_key = servers.prepare_web_data(web_dir)
        web = servers.start_web(web_dir, {"engine": tapped.tap.url}, 10)
        started.append(web)
        servers.pin(engine.process.pid, engine_cores)
        servers.pin(tapped.tap.process.pid, engine_cores)
        servers.pin(web.process.pid, web_cores)
        os.sched_setaffinity(0, engine_cores)
        label = f"real model ({ENGINE_MODEL}), web app on its own core"
        rounds = arguments.model_rounds
        results = await with_reference(
            data_dir / "nginx-alone", label, tapped, ENGINE_MODEL, rounds, 16, web_cores
        )
        through = Connection(HOST, web.port, "/v1/chat/completions", api_key)
        try:
            results.append(
                await overhead_with_cpu(web, label, tapped, through, ENGINE_MODEL, rounds, 16)
            )
        finally:
            through.close()
        return results
    finally:
        os.sched_setaffinity(0, set(cores))
        if tapped is not None:
            tapped.stop()
        for server in reversed(started):
            server.stop()


async def overhead_with_cpu(
    web: servers.ServerProcess,
    label: str,
    backend: Tapped,
    through: Connection,
    model: str,
    rounds: int,
    max_tokens: int,
) -> measure.OverheadResult:
    """Run measure.overhead() against `backend`, and add the web process's CPU per request."""
    warmup = 20 if max_tokens <= 8 else 3
    direct = Connection(HOST, backend.tap.port, "/v1/chat/completions", None)
    cpu_before = measure.process_cpu_seconds(web.process.pid)
    try:
        with realtime_client():
            result = await measure.overhead(
                label,
                direct,
                through,
                model,
                rounds=rounds,
                warmup=warmup,
                max_tokens=max_tokens,
                progress=progress,
                tap=backend.report,
            )
    finally:
        direct.close()
    cpu = measure.process_cpu_seconds(web.process.pid) - cpu_before
    result.web_cpu_per_request = cpu / (warmup + rounds)
    return result


async def measure_streams(
    arguments: argparse.Namespace,
    web: servers.ServerProcess,
    api_key: str,
    paced: servers.ServerProcess,
) -> list[measure.ConcurrencyResult]:
    results = []
    for count in arguments.streams:
        ramp = min(3.0, count / 500)
        for path, port, key in (("direct", paced.port, None), ("via /v1", web.port, api_key)):
            progress(f"{count} concurrent streams, {path}")
            cpu_before = measure.process_cpu_seconds(web.process.pid)
            result = await measure.concurrency(
                path,
                HOST,
                port,
                key,
                PACED_MODEL,
                paced.url,
                streams=count,
                tokens=arguments.tokens,
                ramp=ramp,
            )
            relayed = result.completed * arguments.tokens
            if key is not None and relayed:
                cpu = measure.process_cpu_seconds(web.process.pid) - cpu_before
                result.web_cpu_per_token = cpu / relayed
            progress(
                f"  completed {result.completed}, errors {len(result.errors)}, "
                f"most open {result.peak_open}, {result.seconds:.1f} s"
            )
            results.append(result)
            await asyncio.sleep(1)
    return results


async def run(arguments: argparse.Namespace) -> str:
    load_before = report.load_average()
    started: list[servers.ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as data_dir:
        cores = sorted(os.sched_getaffinity(0))
        isolated: list[measure.OverheadResult] = []
        if not arguments.no_model and len(cores) > 1:
            # First, while no other server of the benchmark runs to take the web app's core.
            isolated = await measure_isolated(arguments, Path(data_dir), cores)
        tapped: list[Tapped] = []
        try:
            fast_server = servers.start_backend(FAST_MODEL, 0.0)
            started.append(fast_server)
            fast = start_tapped(fast_server, Path(data_dir))
            tapped.append(fast)
            paced = servers.start_backend(PACED_MODEL, TOKEN_INTERVAL)
            started.append(paced)
            backend_urls = {"fast": fast.tap.url, "paced": paced.url}
            engine = None
            if not arguments.no_model:
                progress("starting the engine with the bundled model")
                engine_server = servers.start_engine(
                    Path(data_dir) / "engine", arguments.threads, background=True
                )
                started.append(engine_server)
                engine = start_tapped(engine_server, Path(data_dir))
                tapped.append(engine)
                backend_urls["engine"] = engine.tap.url
            web_dir = Path(data_dir) / "web"
            api_key = servers.prepare_web_data(web_dir)
            web = servers.start_web(web_dir, backend_urls, max(arguments.streams) + 100)
            started.append(web)

            overheads = await measure_overheads(
                arguments, Path(data_dir), web, api_key, fast, engine
            )
            overheads.extend(isolated)
            streams = await measure_streams(arguments, web, api_key, paced)
        finally:
            for backend in tapped:
                backend.stop()
            for server in reversed(started):
                server.stop()

    environment = report.Environment(
        cpu_model=report.cpu_model(),
        cores=len(os.sched_getaffinity(0)),
        python_version=platform.python_version(),
        load_before=load_before,
        load_after=report.load_average(),
        command=reproduce_command(arguments),
        commit=report.git_commit(servers.REPOSITORY),
        date=time.strftime("%Y-%m-%d"),
    )
    return report.gateway_section(
        environment, overheads, streams, TOKEN_INTERVAL, tokens_per_stream=arguments.tokens
    )


def reproduce_command(arguments: argparse.Namespace) -> str:
    command = ".venv/bin/python benchmarks/gateway_bench.py"
    if arguments.quick:
        command += " --quick"
    defaults = parse_arguments(["--quick"] if arguments.quick else [])
    for name in ("rounds", "model_rounds", "tokens", "threads"):
        if getattr(arguments, name) != getattr(defaults, name):
            command += f" --{name.replace('_', '-')} {getattr(arguments, name)}"
    if arguments.streams != defaults.streams:
        command += " --streams " + " ".join(str(count) for count in arguments.streams)
    if arguments.no_model:
        command += " --no-model"
    return command


def main(argv: list[str]) -> None:
    arguments = parse_arguments(argv)
    section = uvloop.run(run(arguments))
    print(section)
    if not arguments.no_write:
        report.update_page(DOCS_PAGE, section)
        progress(f"wrote the Gateway section of {DOCS_PAGE}")


if __name__ == "__main__":
    main(sys.argv[1:])
