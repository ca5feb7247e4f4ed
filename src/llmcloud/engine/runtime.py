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

A job's events reach its event loop through an asyncio queue, one Chunk per
token except where text waits for the next token (a possible start of a stop
string, or an incomplete UTF-8 character). The thread collects the events in
one mailbox per event loop and hands a mailbox over with one
`call_soon_threadsafe`: at once when it holds a job's first text or its end,
otherwise once it is `flush_interval` old. The loop so wakes at most once a
step, and once an interval while steps are shorter, instead of once per token
and stream, and a streaming route can write the events of one delivery in
one write. Cancelling a job frees its slot at the next step.
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
from typing import Any, Literal

import llama_cpp
from llama_cpp import _internals, _logger

from llmcloud.engine.errors import EngineError
from llmcloud.engine.sampler import Sampling as Sampling
from llmcloud.engine.sampler import build_sampler

logger = logging.getLogger("llmcloud.engine")

# llama.cpp prints every graph detail through llama-cpp-python's callback unless its logger is
# raised to ERROR.
_logger.set_verbose(False)

DoneReason = Literal["stop", "length", "cancel", "error"]

# How long new text may wait for the next delivery to its event loop, in seconds. Each delivery
# costs the loop a wake-up and an HTTP write, and on a machine with no core to spare these stall
# the decode threads. With 30 ms (three or four tokens of SmolLM2-135M on 2 cores), the streamed
# decode rate rose by about 4% in the setting of benchmarks/engine_bench.py.
STREAM_FLUSH_INTERVAL_S = 0.03


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
class _Mailbox:
    """Events that wait for one event loop, collected since `created` (time.monotonic).

    `urgent` marks a mailbox that goes out at the end of the step because it
    contains a job's first text or a Finished event. Events that arrive after the
    delivery is scheduled but before the loop runs it join the same delivery.
    """

    created: float
    urgent: bool = False
    scheduled: bool = False
    events: list[tuple[Job, Event]] = field(default_factory=list)


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
    sent_text: bool = False


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
        flush_interval: float = STREAM_FLUSH_INTERVAL_S,
    ) -> None:
        self.path = path
        self.slot_ctx = slot_ctx
        self.batch_size = batch_size
        self.flush_interval = flush_interval
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
        self._batch_arrays = _BatchArrays(self.batch.batch, max(batch_size, slots))
        self.n_vocab = self.model.n_vocab()
        self.metadata = self.model.metadata()
        self._vocab = self.model.vocab
        self._piece_buffer = ctypes.create_string_buffer(64)
        self._pieces: dict[int, bytes] = {}
        self._slots = [_Slot(seq_id=i) for i in range(slots)]
        self._pending: collections.deque[Job] = collections.deque()
        self._outbox: list[tuple[Job, Event, bool]] = []
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}
        self._mail_lock = threading.Lock()
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
        job.sampler = build_sampler(self.model, job.sampling)
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

    # The decode thread.

    def _run(self) -> None:
        while True:
            with self._cond:
                self._drop_cancelled()
                self._admit_pending()
                idle = all(slot.job is None for slot in self._slots)
            self._send_events()
            if idle:
                with self._cond:
                    if self._closing:
                        return
                    if not self._pending:
                        self._cond.wait()
                continue
            try:
                self._step()
            except Exception as exc:
                logger.exception("decode step failed on %s", self.path.name)
                self._fail_all(f"decode failed: {exc}")
            self._send_events()

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot.job is not None and (slot.job.cancelled or self._closing):
                reason: DoneReason = "cancel" if slot.job.cancelled else "error"
                self._finish(slot, reason, None if slot.job.cancelled else "the model was unloaded")

    def _post(self, job: Job, event: Event, *, urgent: bool) -> None:
        """Queue an event for the end of the step; `_send_events` hands it to the job's loop."""
        self._outbox.append((job, event, urgent))

    def _post_text(self, slot: _Slot, text: str) -> None:
        assert slot.job is not None
        self._post(slot.job, Chunk(text), urgent=not slot.sent_text)
        slot.sent_text = True

    def _send_events(self) -> None:
        """Schedule the delivery of each mailbox that is urgent or older than `flush_interval`."""
        events, self._outbox = self._outbox, []
        now = time.monotonic()
        due: list[asyncio.AbstractEventLoop] = []
        with self._mail_lock:
            for job, event, urgent in events:
                mailbox = self._mailboxes.get(job.loop)
                if mailbox is None:
                    mailbox = self._mailboxes[job.loop] = _Mailbox(now)
                mailbox.events.append((job, event))
                mailbox.urgent = mailbox.urgent or urgent
            for loop, mailbox in self._mailboxes.items():
                if mailbox.scheduled:
                    continue
                if mailbox.urgent or now - mailbox.created >= self.flush_interval:
                    mailbox.scheduled = True
                    due.append(loop)

        for loop in due:
            try:
                loop.call_soon_threadsafe(self._deliver, loop)
            except RuntimeError:
                # The loop has closed, so no consumer reads these jobs' events any more.
                with self._mail_lock:
                    orphaned = self._mailboxes.pop(loop)
                for job, _ in orphaned.events:
                    job.cancelled = True

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put a mailbox's events on their jobs' queues; runs on the mailbox's loop."""
        with self._mail_lock:
            mailbox = self._mailboxes.pop(loop)
        for job, event in mailbox.events:
            job.events.put_nowait(event)

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
        slot.sent_text = False
        job.admitted = True

    def _step(self) -> None:
        arrays = self._batch_arrays
        outputs: list[tuple[_Slot, int]] = []
        feeds: list[tuple[_Slot, int]] = []
        count = 0
        budget = self.batch_size

        # Generating slots first, one token each, then prompt chunks with what is left.
        active = [slot for slot in self._slots if slot.job is not None]
        active.sort(key=_is_prompting)
        for slot in active:
            if budget <= 0:
                break
            take = slot.pending_input[:budget]
            last_chunk = len(take) == len(slot.pending_input)
            arrays.put(count, take, len(slot.cached), slot.seq_id, output_last=last_chunk)
            count += len(take)
            if last_chunk:
                outputs.append((slot, count - 1))
            feeds.append((slot, len(take)))
            budget -= len(take)

        arrays.batch.n_tokens = count
        status = llama_cpp.llama_decode(self.context.ctx, arrays.batch)
        if status != 0:
            raise EngineError(f"llama_decode returned {status}")

        for slot, taken in feeds:
            slot.cached.extend(slot.pending_input[:taken])
            del slot.pending_input[:taken]
        for slot, index in outputs:
            self._sample(slot, index)

    def _sample(self, slot: _Slot, index: int) -> None:
        job = slot.job
        assert job is not None
        assert slot.sampler is not None
        token = llama_cpp.llama_sampler_sample(slot.sampler.sampler, self.context.ctx, index)
        if not slot.first_token_ns:
            slot.first_token_ns = time.perf_counter_ns()

        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._flush_text(slot, final=True)
            self._finish(slot, "stop")
            return

        slot.generated.append(token)
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
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
            self._vocab, token, self._piece_buffer, len(self._piece_buffer), 0, False
        )
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
            return buffer.raw[:size]
        return self._piece_buffer.raw[:size]

    def _emit_text(self, slot: _Slot, text: str) -> bool:
        """Send text that cannot be the start of a stop string; return True on a stop match."""
        job = slot.job
        assert job is not None
        if not job.stop:
            if text:
                self._post_text(slot, text)
            return False

        buffered = slot.held_text + text
        for stop in job.stop:
            position = buffered.find(stop)
            if position >= 0:
                if position:
                    self._post_text(slot, buffered[:position])
                slot.held_text = ""
                return True
        keep = max((_overlap(buffered, stop) for stop in job.stop), default=0)
        ready = buffered[: len(buffered) - keep]
        slot.held_text = buffered[len(buffered) - keep :]
        if ready:
            self._post_text(slot, ready)
        return False

    def _flush_text(self, slot: _Slot, *, final: bool) -> None:
        assert slot.job is not None
        rest = slot.held_text + (slot.decoder.decode(b"", final=True) if final else "")
        slot.held_text = ""
        if rest:
            self._post_text(slot, rest)

    def _finish(self, slot: _Slot, reason: DoneReason, error: str | None = None) -> None:
        job = slot.job
        assert job is not None
        now = time.perf_counter_ns()
        first = slot.first_token_ns or now
        prompt_ns = first - slot.started_ns
        finished = _finished(job, slot.generated, reason, prompt_ns, now - first, error)
        self._post(job, finished, urgent=True)
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


class _BatchArrays:
    """Writable views of a `llama_batch`'s token, position, output and sequence arrays.

    Reading an array field of the ctypes struct builds a new pointer object
    each time, and the decode loop writes several per token, so the views are
    made once. Every token belongs to one sequence, so `n_seq_id` is set once.
    """

    def __init__(self, batch: llama_cpp.llama_batch, capacity: int) -> None:
        self.batch = batch
        self.token = _array_view(batch.token, ctypes.c_int32, capacity)
        self.pos = _array_view(batch.pos, ctypes.c_int32, capacity)
        self.logits = _array_view(batch.logits, ctypes.c_int8, capacity)
        self.seq_ids = [batch.seq_id[index] for index in range(capacity)]
        for index in range(capacity):
            batch.n_seq_id[index] = 1

    def put(
        self, start: int, tokens: list[int], first_pos: int, seq_id: int, *, output_last: bool
    ) -> None:
        """Write `tokens` of one sequence from batch index `start`; only the last may output."""
        end = start + len(tokens)
        self.token[start:end] = tokens
        self.pos[start:end] = list(range(first_pos, first_pos + len(tokens)))
        self.logits[start:end] = [0] * len(tokens)
        self.logits[end - 1] = output_last
        for row in self.seq_ids[start:end]:
            row[0] = seq_id


def _array_view(pointer: Any, item_type: type[Any], length: int) -> ctypes.Array[Any]:
    """Return the `length` items that a ctypes pointer points to, as an array that slices."""
    view: ctypes.Array[Any] = (item_type * length).from_address(ctypes.addressof(pointer.contents))
    return view


def _is_prompting(slot: _Slot) -> bool:
    return len(slot.pending_input) > 1


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
