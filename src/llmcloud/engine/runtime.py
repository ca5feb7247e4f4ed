"""Batched decoding of many requests on one loaded llama.cpp model.

A `ModelRunner` owns one llama.cpp model and one context whose KV cache is
split into `slots` sequences. A single decode thread admits waiting jobs into
free slots and, on every step, puts the next token of each generating slot and
chunks of new prompts into one `llama_decode` batch, so that N concurrent
streams cost about one forward pass per token instead of N. This is the same
scheme as llama.cpp's own llama-server.

A slot keeps the tokens that are in its KV cache after a job ends, and a new
job goes to the free slot whose cached tokens share the longest prefix with its
prompt, so a chat's next turn only evaluates the new tokens.

Jobs talk to the event loop through an asyncio queue that the thread fills with
`call_soon_threadsafe`; cancelling a job frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import llama_cpp
from llama_cpp import _internals, _logger

from llmcloud.engine.errors import EngineError, InvalidRequest

logger = logging.getLogger("llmcloud.engine")

# llama.cpp prints every graph detail through llama-cpp-python's callback unless its logger is
# raised to ERROR.
_logger.set_verbose(False)

DoneReason = Literal["stop", "length", "cancel", "error"]


@dataclass
class Sampling:
    """Sampling options of one job, with Ollama's defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None


@dataclass
class Chunk:
    text: str


@dataclass
class Finished:
    reason: DoneReason
    prompt_tokens: int
    generated_tokens: list[int]
    prompt_eval_ns: int
    eval_ns: int
    error: str | None = None


Event = Chunk | Finished


@dataclass(eq=False)
class Job:
    """One generation request: its prompt, limits and the queue its events go to."""

    prompt: list[int]
    sampling: Sampling
    max_tokens: int
    num_ctx: int
    stop: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    admitted: bool = False
    sampler: _internals.LlamaSampler | None = field(default=None, repr=False)

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass(eq=False)
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)
    job: Job | None = None
    sampler: _internals.LlamaSampler | None = None
    pending_input: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    held_text: str = ""
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    started_ns: int = 0
    first_token_ns: int = 0


class ModelRunner:
    """One loaded model that decodes up to `slots` jobs at once in shared batches."""

    def __init__(
        self,
        path: Path,
        *,
        slots: int,
        slot_ctx: int,
        threads: int | None = None,
        gpu_layers: int = 0,
        batch_size: int = 512,
    ) -> None:
        self.path = path
        self.slot_ctx = slot_ctx
        self.batch_size = batch_size
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0x7FFFFFFF if gpu_layers < 0 else gpu_layers
        self.model = _internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = slots * slot_ctx
        context_params.n_batch = batch_size
        context_params.n_ubatch = batch_size
        context_params.n_seq_max = slots
        context_params.kv_unified = False
        context_params.n_threads = threads or os.cpu_count() or 1
        context_params.n_threads_batch = threads or os.cpu_count() or 1
        try:
            self.context = _internals.LlamaContext(
                model=self.model, params=context_params, verbose=False
            )
        except ValueError as exc:
            self.model.close()
            raise EngineError(
                f"cannot create a context of {slots} x {slot_ctx} tokens for {path.name}: {exc}"
            ) from None
        self.batch = _internals.LlamaBatch(
            n_tokens=max(batch_size, slots), embd=0, n_seq_max=1, verbose=False
        )
        self.n_vocab = self.model.n_vocab()
        self.metadata = self.model.metadata()
        self._piece_buffer = ctypes.create_string_buffer(64)
        self._slots = [_Slot(seq_id=i) for i in range(slots)]
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"decode-{path.name}", daemon=True)
        self._thread.start()

    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def active_jobs(self) -> int:
        return sum(1 for slot in self._slots if slot.job is not None)

    @property
    def pending_jobs(self) -> int:
        return len(self._pending)

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        tokens: list[int] = self.model.tokenize(
            text.encode("utf-8"), add_bos=add_special, special=True
        )
        return tokens

    def detokenize(self, tokens: list[int]) -> str:
        data: bytes = self.model.detokenize(tokens, special=False)
        return data.decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        text: str = self.model.token_get_text(token)
        return text

    def submit(self, job: Job) -> None:
        """Queue a job; its events arrive on `job.events`."""
        job.sampler = self._build_sampler(job.sampling)
        with self._cond:
            if self._closing:
                raise EngineError("the model is unloading; retry the request")
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: it leaves the queue, or its slot frees at the next step."""
        with self._cond:
            job.cancelled = True
            if job in self._pending:
                self._pending.remove(job)
                if job.sampler is not None:
                    job.sampler.close()
                    job.sampler = None

    def close(self) -> None:
        with self._cond:
            self._closing = True
            for job in self._pending:
                job.emit(_finished(job, [], "error", 0, 0, "the model was unloaded"))
            self._pending.clear()
            self._cond.notify()
        self._thread.join()
        self.batch.close()
        self.context.close()
        self.model.close()

    def _build_sampler(self, sampling: Sampling) -> _internals.LlamaSampler:
        sampler = _internals.LlamaSampler()
        if sampling.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(
                self.model.vocab, sampling.grammar.encode("utf-8"), b"root"
            )
            if not grammar:
                sampler.close()
                raise InvalidRequest("invalid format: the JSON schema could not be compiled")
            llama_cpp.llama_sampler_chain_add(sampler.sampler, grammar)
        sampler.add_penalties(
            self.n_vocab,
            sampling.repeat_last_n,
            sampling.repeat_penalty,
            sampling.frequency_penalty,
            sampling.presence_penalty,
        )
        if sampling.temperature <= 0:
            sampler.add_greedy()
            return sampler
        sampler.add_top_k(sampling.top_k)
        if sampling.typical_p < 1.0:
            sampler.add_typical(sampling.typical_p, 1)
        sampler.add_top_p(sampling.top_p, 1)
        sampler.add_min_p(sampling.min_p, 1)
        sampler.add_temp(sampling.temperature)
        seed = llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed
        sampler.add_dist(seed & 0xFFFFFFFF)
        return sampler

    # The decode thread.

    def _run(self) -> None:
        while True:
            with self._cond:
                self._drop_cancelled()
                self._admit_pending()
                if not any(slot.job for slot in self._slots):
                    if self._closing:
                        return
                    self._cond.wait()
                    continue
            try:
                self._step()
            except Exception as exc:
                logger.exception("decode step failed on %s", self.path.name)
                self._fail_all(f"decode failed: {exc}")

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot.job is not None and (slot.job.cancelled or self._closing):
                reason: DoneReason = "cancel" if slot.job.cancelled else "error"
                self._finish(slot, reason, None if slot.job.cancelled else "the model was unloaded")

    def _admit_pending(self) -> None:
        while self._pending:
            free = [slot for slot in self._slots if slot.job is None]
            if not free:
                return
            job = self._pending.popleft()
            slot = max(free, key=lambda s: _common_prefix(s.cached, job.prompt))
            self._start(slot, job)

    def _start(self, slot: _Slot, job: Job) -> None:
        keep = min(_common_prefix(slot.cached, job.prompt), len(job.prompt) - 1)
        memory = self.context.memory
        if not llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
            keep = 0
        slot.cached = job.prompt[:keep]
        slot.pending_input = job.prompt[keep:]
        slot.job = job
        slot.sampler, job.sampler = job.sampler, None
        slot.generated = []
        slot.held_text = ""
        slot.decoder.reset()
        slot.started_ns = time.perf_counter_ns()
        slot.first_token_ns = 0
        job.admitted = True

    def _step(self) -> None:
        batch = self.batch.batch
        batch.n_tokens = 0
        outputs: list[tuple[_Slot, int]] = []
        feeds: list[tuple[_Slot, int]] = []
        budget = self.batch_size

        # Generating slots first, one token each, then prompt chunks with what is left.
        ordered = sorted(
            (slot for slot in self._slots if slot.job is not None),
            key=lambda slot: len(slot.pending_input) > 1,
        )
        for slot in ordered:
            if budget <= 0:
                break
            take = slot.pending_input[:budget]
            last_chunk = len(take) == len(slot.pending_input)
            for offset, token in enumerate(take):
                index = batch.n_tokens
                batch.token[index] = token
                batch.pos[index] = len(slot.cached) + offset
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = slot.seq_id
                batch.logits[index] = last_chunk and offset == len(take) - 1
                batch.n_tokens += 1
            if last_chunk:
                outputs.append((slot, batch.n_tokens - 1))
            feeds.append((slot, len(take)))
            budget -= len(take)

        status = llama_cpp.llama_decode(self.context.ctx, batch)
        if status != 0:
            raise EngineError(f"llama_decode returned {status}")

        for slot, count in feeds:
            slot.cached.extend(slot.pending_input[:count])
            del slot.pending_input[:count]
        for slot, index in outputs:
            self._sample(slot, index)

    def _sample(self, slot: _Slot, index: int) -> None:
        job = slot.job
        assert job is not None
        assert slot.sampler is not None
        token = llama_cpp.llama_sampler_sample(slot.sampler.sampler, self.context.ctx, index)
        if not slot.first_token_ns:
            slot.first_token_ns = time.perf_counter_ns()

        if llama_cpp.llama_vocab_is_eog(self.model.vocab, token):
            self._flush_text(slot, final=True)
            self._finish(slot, "stop")
            return

        slot.generated.append(token)
        piece = self._piece(token)
        if self._emit_text(slot, slot.decoder.decode(piece)):
            self._finish(slot, "stop")
            return

        total = len(job.prompt) + len(slot.generated)
        if len(slot.generated) >= job.max_tokens >= 0 or total >= min(job.num_ctx, self.slot_ctx):
            self._flush_text(slot, final=True)
            self._finish(slot, "length")
            return
        slot.pending_input = [token]

    def _piece(self, token: int) -> bytes:
        size = llama_cpp.llama_token_to_piece(
            self.model.vocab, token, self._piece_buffer, len(self._piece_buffer), 0, False
        )
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.model.vocab, token, buffer, -size, 0, False)
            return buffer.raw[:size]
        return self._piece_buffer.raw[:size]

    def _emit_text(self, slot: _Slot, text: str) -> bool:
        """Send text that cannot be the start of a stop string; return True on a stop match."""
        job = slot.job
        assert job is not None
        buffered = slot.held_text + text
        for stop in job.stop:
            position = buffered.find(stop)
            if position >= 0:
                if position:
                    job.emit(Chunk(buffered[:position]))
                slot.held_text = ""
                return True
        keep = max((_overlap(buffered, stop) for stop in job.stop), default=0)
        ready = buffered[: len(buffered) - keep]
        slot.held_text = buffered[len(buffered) - keep :]
        if ready:
            job.emit(Chunk(ready))
        return False

    def _flush_text(self, slot: _Slot, *, final: bool) -> None:
        assert slot.job is not None
        rest = slot.held_text + (slot.decoder.decode(b"", final=True) if final else "")
        slot.held_text = ""
        if rest:
            slot.job.emit(Chunk(rest))

    def _finish(self, slot: _Slot, reason: DoneReason, error: str | None = None) -> None:
        job = slot.job
        assert job is not None
        now = time.perf_counter_ns()
        first = slot.first_token_ns or now
        job.emit(
            _finished(job, slot.generated, reason, first - slot.started_ns, now - first, error)
        )
        if slot.sampler is not None:
            slot.sampler.close()
        slot.job = None
        slot.sampler = None
        slot.pending_input = []

    def _fail_all(self, message: str) -> None:
        with self._cond:
            for slot in self._slots:
                if slot.job is not None:
                    self._finish(slot, "error", message)
                llama_cpp.llama_memory_seq_rm(self.context.memory, slot.seq_id, -1, -1)
                slot.cached = []


def _finished(
    job: Job,
    generated: list[int],
    reason: DoneReason,
    prompt_eval_ns: int,
    eval_ns: int,
    error: str | None,
) -> Finished:
    return Finished(
        reason=reason,
        prompt_tokens=len(job.prompt),
        generated_tokens=list(generated),
        prompt_eval_ns=prompt_eval_ns,
        eval_ns=eval_ns,
        error=error,
    )


def _common_prefix(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper start of `stop`."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-length:]):
            return length
    return 0
