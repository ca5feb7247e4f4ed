"""Markdown for the results, and the "Gateway" section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gatewaybench.measure import ConcurrencyResult, OverheadResult, median, percentile

SECTION_TITLE = "## Gateway"
PAGE_HEADER = """# Benchmarks

Measured numbers, with the machine and the command behind each table. Rerun
the command to refresh a section; each script rewrites only its own section.
"""
# Targets, in seconds.
ADDED_MEDIAN_TARGET = 0.001
ADDED_P99_TARGET = 0.005
STREAMS_TARGET = 1000
ADDED_GAP_P99_TARGET = 0.050


@dataclass(frozen=True)
class Environment:
    cpu_model: str
    cores: int
    python_version: str
    load_before: str
    load_after: str
    command: str
    commit: str
    date: str


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def git_commit(repository: Path) -> str:
    """Return the short commit id, marked when the working tree has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repository,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repository,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} with uncommitted changes" if status.strip() else commit


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def microseconds(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e6:.0f} µs"


def verdict(met: bool) -> str:
    return "yes" if met else "**no**"


def overhead_table(results: list[OverheadResult]) -> str:
    """Tabulate each chat's end-to-end times, and how much the proxy added to them."""
    lines = [
        "| Backend | Rounds | Tokens | TTFT direct p50 / p99 | TTFT through the proxy p50 / p99 "
        "| Added TTFT p50 / p99 | Added total p50 / p99 | Noise floor TTFT / total p99 "
        "| Web CPU per request | Errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for result in results:
        if not _measured(result):
            lines.append(f"| {result.label} | 0 | | | | | | | | {len(result.errors)} |")
            continue
        lines.append(
            f"| {result.label} | {len(result.gateway.ttft)} | {result.max_tokens} "
            f"| {_p50_p99(result.direct.ttft)} | {_p50_p99(result.gateway.ttft)} "
            f"| {_added(result.added, 'ttft')} | {_added(result.added, 'total')} "
            f"| {ms(result.noise('ttft', 0.99))} / {ms(result.noise('total', 0.99))} "
            f"| {microseconds(result.web_cpu_per_request)} | {len(result.errors)} |"
        )
    return "\n".join(lines)


def beyond_backend_table(results: list[OverheadResult]) -> str:
    """Tabulate the added latency with each chat's own time at the backend removed."""
    lines = [
        "| Backend | Added TTFT p50 / p99 | Added total p50 / p99 "
        "| Noise floor TTFT / total p99 | Target met |",
        "|---|--:|--:|--:|---|",
    ]
    for result in results:
        if not _measured(result) or not result.tapped:
            lines.append(f"| {result.label} | | | | **no** |")
            continue
        added = result.added_beyond_backend
        met = (
            max(added("ttft", 0.5), added("total", 0.5)) <= ADDED_MEDIAN_TARGET
            and max(added("ttft", 0.99), added("total", 0.99)) <= ADDED_P99_TARGET
            and not result.errors
        )
        noise = result.noise_beyond_backend
        lines.append(
            f"| {result.label} | {_added(added, 'ttft')} | {_added(added, 'total')} "
            f"| {ms(noise('ttft', 0.99))} / {ms(noise('total', 0.99))} "
            f"| {'(reference)' if result.reference else verdict(met)} |"
        )
    return "\n".join(lines)


def _measured(result: OverheadResult) -> bool:
    return len(result.gateway.ttft) >= 2 and len(result.direct.ttft) >= 2


def _added(added: Callable[[str, float], float], metric: str) -> str:
    return f"{ms(added(metric, 0.5))} / {ms(added(metric, 0.99))}"


def _p50_p99(values: list[float]) -> str:
    return f"{ms(percentile(values, 0.5))} / {ms(percentile(values, 0.99))}"


def concurrency_table(results: list[ConcurrencyResult]) -> str:
    lines = [
        "| Path | Streams | Completed | Errors | Most open at backend | TTFT p50 / p99 "
        "| Added inter-token delay p50 / p99 / max | Relay delay p50 / p99 "
        "| Web CPU per token | Target met |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for result in results:
        if not result.added_gaps:
            lines.append(
                f"| {result.path} | {result.streams} | {result.completed} "
                f"| {len(result.errors)} | {result.peak_open} | | | | | **no** |"
            )
            continue
        gaps = result.added_gaps
        met = not result.errors and percentile(gaps, 0.99) <= ADDED_GAP_P99_TARGET
        if result.path != "via /v1":
            target = "(baseline)"
        elif result.streams < STREAMS_TARGET:
            # A step on the way up, which the target's count does not apply to.
            target = "(fewer streams)" if met else "**no**"
        else:
            target = verdict(met)
        lines.append(
            f"| {result.path} | {result.streams} | {result.completed} | {len(result.errors)} "
            f"| {result.peak_open} "
            f"| {ms(median(result.ttft))} / {ms(percentile(result.ttft, 0.99))} "
            f"| {ms(median(gaps))} / {ms(percentile(gaps, 0.99))} / {ms(max(gaps))} "
            f"| {ms(median(result.relay_delays))} / {ms(percentile(result.relay_delays, 0.99))} "
            f"| {microseconds(result.web_cpu_per_token)} | {target} |"
        )
    return "\n".join(lines)


def error_samples(overheads: list[OverheadResult], streams: list[ConcurrencyResult]) -> str:
    """List the distinct errors, cut to 200 characters, each with how often it occurred."""
    errors = [error for result in overheads for error in result.errors]
    errors += [error for result in streams for error in result.errors]
    if not errors:
        return ""
    counts = Counter(error[:200] for error in errors)
    shown = "\n".join(f"- {count} times: `{error}`" for error, count in counts.most_common(5))
    return f"\nErrors seen:\n\n{shown}\n"


def gateway_section(
    environment: Environment,
    overheads: list[OverheadResult],
    streams: list[ConcurrencyResult],
    token_interval: float,
    *,
    tokens_per_stream: int,
) -> str:
    """Render the whole "Gateway" section, from its heading to its last table."""
    return f"""{SECTION_TITLE}

How much the web app's `/v1` API and its gateway add to a streamed chat,
measured by `benchmarks/gateway_bench.py`. The servers run as separate
processes on loopback: two instances of the benchmark backend
(`benchmarks/gatewaybench/backend.py`, an OpenAI-API server that sends
stamped tokens and reads no prompt), one sending tokens as fast as it can
and one every {token_interval * 1000:.0f} ms; `llmcloud engine` with the bundled
SmolLM2-135M model; and `llmcloud web` with all three as gateway backends.
The client and the servers share the machine's cores, and so does any
other work on the machine, which the load average shows. Every number
includes that contention.

Machine: {environment.cpu_model}, {environment.cores} cores, Python {environment.python_version}.
Load average (1 / 5 / 15 min): {environment.load_before} before the run, {environment.load_after}
after it. Code: commit {environment.commit}. Date: {environment.date}. Command:
`{environment.command}`

"Web CPU" is the user and system time of the `llmcloud web` process during a
test, read from /proc, divided by the requests or tokens relayed. It depends
less than the times on other work on the machine. It includes the web
app's health checks, and per token it includes each stream's own request.

### Added latency of one stream

One client, one stream at a time, alternating between the backend's own
`/v1/chat/completions` and the web app's, with an API key. Both paths
reach the backend through a timing relay
(`benchmarks/gatewaybench/tap.py`): a lean TCP forwarder in a process of
its own that notes when each chat's request, first token and `data: [DONE]`
pass it. The client and the relay stand for users and a network on other
machines. So they run at real-time priority (SCHED_FIFO, where the system
allows it: as root or with CAP_SYS_NICE), and run the moment they wake,
without waiting for the engine or the web app on their core. Times in
milliseconds, for the time to first token (TTFT) and the time to
`data: [DONE]` (total).

The real model runs twice. With "cores shared", the engine runs as
`llmcloud up` runs it: it decodes on as many threads as there are cores,
in Linux's idle scheduling class (setting engine_background), and the web
app and the client take CPU time from it. With "web app on its own core", a
web app and a one-thread engine of their own run before the other servers
start. The web app is pinned to the first core, and the engine and the
relay to the last, as when the web app and the engine run on machines of
their own. The client, which stands for users on other machines, shares the
engine's core. It takes the same CPU time from the engine on both paths,
and keeps its own work out of the web app's core and caches.
The rows "through nginx (reference)" put nginx in place of the web app, as
a reverse proxy that streams (`proxy_buffering off`) and keeps its
connections to the backend open, on the same cores. They show what one
more process and one more hop on loopback add on this machine, however
little the proxy itself does. They have no target.

End to end, as the client sees each chat. "Added" is the percentile of the
per-round differences: the time through the proxy minus the direct time of
the same round. "Noise floor" is the p99 of the differences between
consecutive direct rounds, which is what the added p99 would show if the
proxy added nothing. With the real model it is above the p99 target: the
model's own time varies from one chat to the next by more than that. "Web
CPU per request" includes the relay of every token of the response.

{overhead_table(overheads)}

With each chat's time at the backend removed. For each chat, its time at
the relay, from its request to its first token or to its end, is
subtracted from its time at the client. What is left is the path between
the client and the relay, and "added" is the percentile of its per-round
differences. The model's variation drops out, and so does any slowing of the
engine itself. With cores shared, the web app's CPU time per request comes
out of the engine's decoding threads. The end-to-end table above shows
that share, and its nginx rows show how much of it any proxy on the same
cores costs. Target: added median at most {ms(ADDED_MEDIAN_TARGET)} ms and
added p99 at most {ms(ADDED_P99_TARGET)} ms, for both.

{beyond_backend_table(overheads)}

### Concurrent streams

N streaming chats at once through one web process, from a backend that
sends one token every {token_interval * 1000:.0f} ms, {tokens_per_stream} tokens per stream
({tokens_per_stream * token_interval:.0f} s). Streams that end before the last one has started are
never all open at once, so a stream lasts longer than the web app takes to open all of them;
"Most open at backend" shows how many were. Added inter-token delay: the gap between
two tokens' arrivals at the client minus the gap between their send times
at the backend. Tokens that the web app read together arrive together,
and each later one of them counts a negative added delay. Relay delay: a
token's arrival minus its send time. The rows "direct" are the same test
straight to the backend, which shows the client's own share. Times in
milliseconds. Target: {STREAMS_TARGET} streams or more with no errors and an
added inter-token delay p99 of at most {ms(ADDED_GAP_P99_TARGET)} ms.

{concurrency_table(streams)}
{error_samples(overheads, streams)}"""


def update_page(page: Path, section: str) -> None:
    """Replace the "Gateway" section of a Markdown page, keeping every other section."""
    text = page.read_text() if page.exists() else PAGE_HEADER
    page.write_text(replace_section(text, section))


def replace_section(text: str, section: str) -> str:
    """Swap the text from the "## Gateway" heading to the next "## " heading (or the end)."""
    section = section.rstrip("\n") + "\n"
    match = re.search(rf"^{re.escape(SECTION_TITLE)}\s*$", text, re.MULTILINE)
    if match is None:
        return text.rstrip("\n") + "\n\n" + section
    start = match.start()
    next_heading = re.compile(r"^## ", re.MULTILINE).search(text, match.end())
    rest = text[next_heading.start() :] if next_heading else ""
    return text[:start] + section + ("\n" + rest if rest else "")
