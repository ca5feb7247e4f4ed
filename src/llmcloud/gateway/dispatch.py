"""Routing of requests to backends, and the per-model queues of requests that wait for one.

A request goes to the least busy backend that is healthy, lists its model and
has a free slot (fewer outstanding requests than its max_parallel). "Least
busy" is the lowest (outstanding + 1) / weight, so a backend of weight 2 takes
twice the requests of one of weight 1; ties go to the backend with fewer recent
failures, then to the one picked least recently.

When every such backend is full, the request waits in its model's queue, in
order of arrival, and takes the next slot that frees up on any backend that
serves its model. A request that fails over keeps its place in that order. Past
max_queue_per_model waiting requests, a new one is rejected at once.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections import deque
from dataclasses import dataclass, field

from llmcloud.gateway.backend import BackendClient
from llmcloud.gateway.errors import GatewayBusy


@dataclass(eq=False)
class Ticket:
    """One request's claim on a backend slot."""

    model: str
    exclude: frozenset[str]
    """Names of backends that already failed this request."""
    order: int
    backend: BackendClient | None = None
    """The backend whose slot this request holds, once assigned."""
    stranded: bool = False
    """Set when no backend that may serve the request is left."""
    position: int = 0
    """Place in the model's queue, 1 for the next; 0 when not waiting."""
    finished: bool = False
    """Set once the request gave back its slot or left the queue."""
    shared_id: str | None = None
    """Id of the ticket in the deployment-wide queue in Redis; None when it waits here only."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def settled(self) -> bool:
        return self.backend is not None or self.stranded or self.finished


class Dispatcher:
    def __init__(self, max_queue_per_model: int, busy_retry_after: int) -> None:
        self.max_queue_per_model = max_queue_per_model
        self.busy_retry_after = busy_retry_after
        self.backends: list[BackendClient] = []
        self._queues: dict[str, deque[Ticket]] = {}
        self._orders = itertools.count(1)
        self._picks = itertools.count(1)

    def queued(self) -> dict[str, int]:
        """Return the number of waiting requests per model."""
        return {model: len(queue) for model, queue in self._queues.items() if queue}

    def submit(
        self, model: str, exclude: frozenset[str] = frozenset(), *, retry_of: Ticket | None = None
    ) -> Ticket:
        """Assign a backend slot now or queue the request; raise GatewayBusy if the queue is full.

        A retry (`retry_of`, a ticket that failed over) keeps its place in the
        order of arrival and is never rejected for a full queue.
        """
        order = retry_of.order if retry_of is not None else next(self._orders)
        ticket = Ticket(model=model, exclude=exclude, order=order)
        if self._assign(ticket):
            return ticket
        if not self._has_candidate(ticket):
            ticket.stranded = True
            return ticket

        queue = self._queues.setdefault(model, deque())
        if retry_of is not None:
            bisect.insort(queue, ticket, key=_order)
        elif len(queue) >= self.max_queue_per_model:
            raise GatewayBusy(
                f"model '{model}' is busy: {len(queue)} requests are already waiting, the most "
                f"allowed (gateway_max_queue_per_model); retry in {self.busy_retry_after} s",
                retry_after=self.busy_retry_after,
            )
        else:
            queue.append(ticket)
        self._renumber(queue)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Take a request that stopped waiting out of its queue."""
        queue = self._queues.get(ticket.model)
        if queue is None or ticket not in queue:
            return
        queue.remove(ticket)
        self._renumber(queue)
        if not queue:
            del self._queues[ticket.model]

    def release(self, backend: BackendClient) -> None:
        """Free a slot on a backend and hand it to the next waiting request."""
        backend.state.outstanding -= 1
        self.dispatch()

    def dispatch(self) -> None:
        """Assign free slots to waiting requests in order of arrival; strand hopeless ones.

        Called when a slot frees up and when a backend's health or models change.
        """
        waiting = sorted(itertools.chain.from_iterable(self._queues.values()), key=_order)
        for ticket in waiting:
            if not self._assign(ticket) and not self._has_candidate(ticket):
                ticket.stranded = True
                ticket.changed.set()

        for model, queue in list(self._queues.items()):
            remaining = deque(ticket for ticket in queue if not ticket.settled)
            if len(remaining) != len(queue):
                self._queues[model] = remaining
                self._renumber(remaining)
            if not remaining:
                del self._queues[model]

    def take_slot(self, ticket: Ticket, backend: BackendClient) -> None:
        """Count a slot on `backend` as the ticket's and wake the request that waits for it."""
        backend.state.outstanding += 1
        backend.state.last_picked = next(self._picks)
        ticket.backend = backend
        ticket.position = 0
        ticket.changed.set()

    def candidates(self, ticket: Ticket) -> list[BackendClient]:
        """Return the backends that may serve the ticket, the preferred ones first on a tie.

        Of two backends equally busy, the one with fewer recent failures comes first, then
        the one picked least recently.
        """
        return sorted(
            self._candidates(ticket),
            key=lambda backend: (backend.state.consecutive_failures, backend.state.last_picked),
        )

    def _assign(self, ticket: Ticket) -> bool:
        backend = self._pick(ticket)
        if backend is None:
            return False
        self.take_slot(ticket, backend)
        return True

    def _pick(self, ticket: Ticket) -> BackendClient | None:
        best: BackendClient | None = None
        best_key: tuple[float, int, int] | None = None
        for backend in self._candidates(ticket):
            state = backend.state
            if state.outstanding >= backend.config.max_parallel:
                continue
            key = (
                (state.outstanding + 1) / backend.config.weight,
                state.consecutive_failures,
                state.last_picked,
            )
            if best_key is None or key < best_key:
                best, best_key = backend, key
        return best

    def _has_candidate(self, ticket: Ticket) -> bool:
        return any(True for _ in self._candidates(ticket))

    def _candidates(self, ticket: Ticket) -> list[BackendClient]:
        return [
            backend
            for backend in self.backends
            if backend.routable
            and backend.name not in ticket.exclude
            and backend.serves(ticket.model)
        ]

    @staticmethod
    def _renumber(queue: deque[Ticket]) -> None:
        for index, ticket in enumerate(queue, start=1):
            if ticket.position != index:
                ticket.position = index
                ticket.changed.set()


def _order(ticket: Ticket) -> int:
    return ticket.order
