"""One chat from queue to last token: admission, failover before the first token, relay.

The relay keeps no buffer: the lines that arrived from the backend
together are parsed and their text handed on as one Token event before the
next read. A backend that streams faster than the relay reads therefore
costs one event, and one write to the client, per read rather than per
token. Failover is possible until the first token arrives, because until
then the user has seen nothing; after it, a backend failure ends the chat
with Failed(partial=True).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass

from llmcloud.gateway.backend import BackendClient, BackendFailure, describe_http_error
from llmcloud.gateway.chat_metrics import ChatObserver
from llmcloud.gateway.dispatch import Dispatcher, Ticket
from llmcloud.gateway.errors import GatewayBusy
from llmcloud.gateway.events import ChatEvent, Done, Durations, Failed, Queued, Started, Token
from llmcloud.gateway.http import HTTPError, ReadTimeout, Response
from llmcloud.gateway.protocols import StreamParser, StreamResult, UpstreamError
from llmcloud.gateway.request import ChatRequest
from llmcloud.gateway.shared_queue import SharedQueue

logger = logging.getLogger("llmcloud.gateway")

# Maximum wait for the end of a response after its last line, so that the connection can be
# reused; past it the connection is closed instead.
_DRAIN_SECONDS = 0.5


@dataclass(slots=True)
class Upstream:
    """A backend's response whose first token (or end) has arrived."""

    backend: BackendClient
    response: Response
    rest: list[str]
    """Lines that arrived with the first token and follow it."""
    parser: StreamParser
    first_text: str | None
    sent_ns: int
    first_token_ns: int


@dataclass(slots=True)
class _Chat:
    """The state of one chat, shared by its steps."""

    request: ChatRequest
    ticket: Ticket
    """The current claim on a slot; failover replaces it."""
    arrived_ns: int
    upstream: Upstream | None = None


class ChatRelay:
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        keep_alive: str | int | float,
        first_token_timeout: float,
        check_model: Callable[[str], None],
        release: Callable[[BackendClient], None],
        shared: SharedQueue | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.shared = shared
        self.keep_alive = keep_alive
        self.first_token_timeout = first_token_timeout
        self.check_model = check_model
        self.release = release

    async def chat(
        self, model: str, build: Callable[[], ChatRequest]
    ) -> AsyncGenerator[ChatEvent, None]:
        """Run one chat; `build` returns its request, or raises InvalidChatRequest.

        `build` is called at the first step, so that its error, like every
        other, comes from the first `anext()`.
        """
        observer = ChatObserver(model)
        chat: _Chat | None = None
        try:
            request = build()
            self.check_model(request.model)
            chat = _Chat(request, await self._submit(request.model), time.perf_counter_ns())
            async with aclosing(self._connect(chat)) as early_events:
                async for event in early_events:
                    if isinstance(event, Queued):
                        observer.queued()
                    else:
                        observer.finished(event)
                    yield event
            upstream = chat.upstream
            if upstream is None:
                return

            # The per-token path: one read, its lines parsed, one event for their text.
            try:
                # The metrics of each event are recorded when the consumer requests the next
                # one, that is once it has passed the event on, so that they do not delay it.
                yield Started(upstream.backend.name)
                if upstream.first_text:
                    yield Token(upstream.first_text)
                    observer.token()
                observer.running()
                parser = upstream.parser
                response = upstream.response
                lines = upstream.rest
                final: Done | Failed
                try:
                    while True:
                        texts, error = _parse_lines(parser, lines)
                        if texts:
                            yield Token(texts[0] if len(texts) == 1 else "".join(texts))
                            observer.token()
                        if error is not None:
                            raise error
                        if parser.result is not None:
                            break
                        lines = await response.read_lines()
                        if not lines:
                            break
                    result = parser.finish()
                except (HTTPError, UpstreamError) as exc:
                    final = _failed_midway(upstream.backend, describe_http_error(exc))
                else:
                    final = _answer_end(upstream, result, chat.arrived_ns)
                # The slot is free before the last event, so a consumer that stops there keeps
                # no slot.
                self._finish(chat.ticket)
                observer.finished(final)
                try:
                    yield final
                finally:
                    # The rest of the response (its chunked end, say) is read only after the last
                    # event went out, so the client does not wait for it. A response that ends in
                    # time gives its connection back for reuse.
                    if isinstance(final, Done):
                        await upstream.response.drain(_DRAIN_SECONDS)
            finally:
                upstream.response.close()
        except GatewayBusy:
            observer.rejected()
            raise
        finally:
            if chat is not None:
                self._finish(chat.ticket)
            observer.closed()

    async def _connect(self, chat: _Chat) -> AsyncGenerator[Queued | Failed, None]:
        """Wait for a slot and open a backend's stream, failing over until a first token comes.

        Sets `chat.upstream` on success; otherwise the last event is a Failed.
        """
        failures: dict[str, BackendFailure] = {}
        while True:
            if not chat.ticket.settled:
                async with aclosing(self._positions(chat.ticket)) as positions:
                    async for position in positions:
                        yield Queued(position)
            if not chat.ticket.settled:
                # The shared queue failed while the request waited: wait on this instance.
                chat.ticket = self.dispatcher.submit(
                    chat.request.model, chat.ticket.exclude, retry_of=chat.ticket
                )
                continue
            backend = chat.ticket.backend
            if backend is None:
                yield _failed_everywhere(chat.request.model, failures)
                return

            try:
                chat.upstream = await self._open(backend, chat.request)
                return
            except BackendFailure as failure:
                self._finish(chat.ticket)
                failures[backend.name] = failure
                if not failure.retry:
                    yield Failed(failure.message, partial=False, status_code=failure.status_code)
                    return
                logger.warning(
                    "chat on backend %s failed before the first token, failing over: %s",
                    backend.name,
                    failure.message,
                )
                exclude = frozenset(failures)
                chat.ticket = await self._submit(chat.request.model, exclude, chat.ticket)

    async def _submit(
        self, model: str, exclude: frozenset[str] = frozenset(), retry_of: Ticket | None = None
    ) -> Ticket:
        """Claim a slot or a place in the queue, deployment-wide when Redis is configured."""
        if self.shared is not None:
            return await self.shared.submit(model, exclude, retry_of=retry_of)
        return self.dispatcher.submit(model, exclude, retry_of=retry_of)

    def _positions(self, ticket: Ticket) -> AsyncGenerator[int, None]:
        if self.shared is not None and ticket.shared_id is not None:
            return self.shared.positions(ticket)
        return self._queue_positions(ticket)

    async def _queue_positions(self, ticket: Ticket) -> AsyncGenerator[int, None]:
        """Yield the ticket's queue position each time it changes, until it is settled."""
        reported = 0
        while True:
            ticket.changed.clear()
            if ticket.settled:
                return
            if ticket.position != reported:
                reported = ticket.position
                yield reported
            else:
                await ticket.changed.wait()

    async def _open(self, backend: BackendClient, request: ChatRequest) -> Upstream:
        """Send the request and read up to its first token, within first_token_timeout.

        Each wait for the backend's head or a line is limited by the connection's read
        timeout, which is first_token_timeout too, so the whole wait is checked only
        after each read. That check catches a backend that sends lines without a token
        for longer; it costs less than an asyncio timeout around the whole.
        """
        body = backend.protocol.chat_body(request, self.keep_alive)
        parser = backend.protocol.parser()
        sent_ns = time.perf_counter_ns()
        deadline = sent_ns + int(self.first_token_timeout * 1e9)
        response: Response | None = None
        try:
            response = await backend.open_chat(body)
            while lines := await response.read_lines():
                for index, line in enumerate(lines):
                    text = parser.feed(line)
                    if text or parser.result is not None:
                        first_ns = time.perf_counter_ns()
                        rest = lines[index + 1 :]
                        return Upstream(backend, response, rest, parser, text, sent_ns, first_ns)
                if time.perf_counter_ns() > deadline:
                    raise TimeoutError
            if parser.finish() is not None:
                first_ns = time.perf_counter_ns()
                return Upstream(backend, response, [], parser, None, sent_ns, first_ns)
            error = "the stream ended before the first token"
        except (TimeoutError, ReadTimeout):
            error = f"no first token within {self.first_token_timeout:g} s"
        except (HTTPError, UpstreamError) as exc:
            error = describe_http_error(exc)
        except BaseException:
            if response is not None:
                response.close()
            raise

        if response is not None:
            response.close()
        backend.record_failure(error)
        raise BackendFailure(error, retry=True)

    def _finish(self, ticket: Ticket) -> None:
        """Free the ticket's slot, or take it out of its queue; safe to call more than once."""
        if ticket.finished:
            return
        ticket.finished = True
        if self.shared is not None and ticket.shared_id is not None:
            self.shared.finish(ticket)
        if ticket.backend is not None:
            self.release(ticket.backend)
        elif ticket.shared_id is None:
            self.dispatcher.leave(ticket)


def _parse_lines(parser: StreamParser, lines: list[str]) -> tuple[list[str], UpstreamError | None]:
    """Parse lines until the stream's last one; return their texts and the error raised, if any.

    The error is returned rather than raised, so that the texts before it still reach the user.
    """
    texts: list[str] = []
    try:
        for line in lines:
            # Server-sent events end with an empty line, which carries no data.
            if not line:
                continue
            text = parser.feed(line)
            if text:
                texts.append(text)
            if parser.result is not None:
                break
    except UpstreamError as exc:
        return texts, exc
    return texts, None


def _answer_end(upstream: Upstream, result: StreamResult | None, arrived_ns: int) -> Done | Failed:
    if result is None:
        return _failed_midway(upstream.backend, "the stream ended before the answer was complete")
    upstream.backend.record_success()
    return _done(result, upstream, arrived_ns)


def _done(result: StreamResult, upstream: Upstream, arrived_ns: int) -> Done:
    durations = Durations(
        queued_ns=upstream.sent_ns - arrived_ns,
        total_ns=time.perf_counter_ns() - upstream.sent_ns,
        first_token_ns=upstream.first_token_ns - upstream.sent_ns,
        load_ns=result.load_ns,
        prompt_eval_ns=result.prompt_eval_ns,
        eval_ns=result.eval_ns,
    )
    return Done(result.done_reason, result.prompt_tokens, result.completion_tokens, durations)


def _failed_midway(backend: BackendClient, error: str) -> Failed:
    backend.record_failure(error)
    logger.warning("chat on backend %s failed after the first token: %s", backend.name, error)
    return Failed(f"backend {backend.name} failed during the answer: {error}", partial=True)


def _failed_everywhere(model: str, failures: Mapping[str, BackendFailure]) -> Failed:
    if not failures:
        return Failed(
            f"every backend that serves model '{model}' left rotation while the request "
            "waited; retry later",
            partial=False,
            status_code=503,
        )
    details = "; ".join(f"{name}: {failure.message}" for name, failure in failures.items())
    statuses = {failure.status_code for failure in failures.values()}
    if statuses == {404}:
        status = 404
    elif 503 in statuses:
        status = 503
    else:
        status = 502
    return Failed(
        f"no backend could answer for model '{model}' ({details})",
        partial=False,
        status_code=status,
    )
