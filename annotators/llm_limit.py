"""How many chat requests an LLM annotation run keeps in flight: an adaptive limit below a ceiling.

The scheme is a latency gradient towards a *target latency* (half the request timeout), plus a
multiplicative decrease when the server throttles:

- Every reply is a sample ``(n, latency)``, ``n`` being the requests in flight when it was sent
  (itself included). By Little's law a server that queues requests answers one in about
  ``latency / n`` seconds, so about ``target / (latency / n)`` requests can wait at once without
  the last one waiting longer than ``target``. The limit follows that figure, smoothed
  (:data:`SMOOTHING`) over the per-request service time ``latency / n``. A 1-slot server at 1 s a
  reply with a 10 s timeout settles at 5 in flight; a server that answers 64 requests at once in
  200 ms has a service time of 3 ms and stays at the ceiling. A timeout is a sample whose latency
  is at least the timeout, so it halves the estimate.
- A 429 halves a separate cap (at most once per round trip: only requests sent after the last cut
  can cut again), which grows back by one per ``cap`` replies (additive increase), as in TCP.

Why not plain AIMD or a minimum-RTT gradient (Netflix's Gradient, TCP Vegas)? AIMD only learns
from losses, and here a loss is a timeout: the requests behind it already waited too long, and a
local server keeps computing the replies nobody waits for. Minimum-RTT schemes read any latency
above the fastest reply as queueing, but an LLM's reply time varies several-fold with the length
of what it writes, so they would throttle a healthy batching server. The target comes from the
one bound that matters, the timeout.

The run starts at :data:`INITIAL` (or the ceiling if lower) rather than the ceiling, so a server
that takes one request at a time never sees more than it can answer within the timeout; the first
replies move the limit to where it belongs within one round trip.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

INITIAL = 8
TARGET_SHARE = 0.5  # the target latency as a share of the request timeout
SMOOTHING = 0.3  # weight of the newest sample in the per-request service time estimate


@dataclass(frozen=True)
class Slot:
    """One request sent: how many were in flight when it was sent (itself included), and when."""

    n: int
    sent_at: float


class ConcurrencyLimit:
    """The adaptive limit; the rules are plain methods, :meth:`slot` is the asyncio gate."""

    def __init__(
        self,
        ceiling: int,
        *,
        timeout: float,
        initial: int = INITIAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ceiling < 1:
            raise ValueError(f"the ceiling must be at least 1, got {ceiling}")
        self.ceiling = ceiling
        self.timeout = timeout
        self.target = timeout * TARGET_SHARE
        self.cap = float(ceiling)
        self.service: float | None = None  # seconds per request of concurrency, smoothed
        self._limit = float(min(initial, ceiling))
        self._last_cut = -math.inf
        self._clock = clock
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """Requests allowed in flight now (at least 1, at most the ceiling)."""
        return max(1, min(int(self._limit), self.ceiling))

    def replied(self, slot: Slot, latency: float) -> None:
        """A reply (any status but 429 and 5xx) came ``latency`` seconds after it was sent."""
        self.cap = min(float(self.ceiling), self.cap + 1 / self.cap)
        self._sample(slot.n, latency)

    def timed_out(self, slot: Slot) -> None:
        """No reply within the timeout: the reply would have taken at least that long."""
        self._sample(slot.n, self.timeout)

    def throttled(self, slot: Slot) -> None:
        """A 429: halve the cap, once for all the requests that were already in flight."""
        if slot.sent_at < self._last_cut:
            return
        self._last_cut = self._clock()
        self.cap = max(1.0, min(self.cap, self._limit) / 2)
        self._limit = min(self._limit, self.cap)

    def _sample(self, n: int, latency: float) -> None:
        service = max(latency, 1e-6) / max(n, 1)
        if self.service is None:
            self.service = service
        else:
            self.service += SMOOTHING * (service - self.service)
        self._limit = min(self.cap, self.target / self.service)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait (first come, first served) until fewer than :attr:`limit` places are held, then
        hold one until the block ends (a row holds it for one request and its SDK retries)."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
        else:
            place = asyncio.get_running_loop().create_future()
            self._waiters.append(place)
            try:
                await place
            except asyncio.CancelledError:
                if place.done() and not place.cancelled():  # woken and cancelled at once
                    self._release()
                elif place in self._waiters:
                    self._waiters.remove(place)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < self.limit:
            place = self._waiters.popleft()
            if not place.done():  # a cancelled waiter is skipped
                self.in_flight += 1
                place.set_result(None)
