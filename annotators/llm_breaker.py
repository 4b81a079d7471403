"""A circuit breaker for an LLM annotation run: one pause for the whole run when the endpoint is
down, instead of every pending row spending its own retries.

Closed: requests pass. A refused connection (after the endpoint once answered), or
:data:`BURST` first attempts in a row answered with a server error (5xx), open it (retries of a
row that already failed are not counted: a row whose text makes the server fail must not pause
the run): requests wait; after a backoff that starts at
:data:`FIRST_WAIT` and doubles up to :data:`MAX_WAIT` one request goes through as a probe; any
answer that is not a 5xx closes the circuit and releases everyone, a failed probe doubles the wait.
When the circuit has been open for :data:`GIVE_UP_AFTER` seconds the breaker stops holding
requests: they fail with the endpoint's last error and the rows end retryable, for a later run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

BURST = 5
FIRST_WAIT = 0.5
MAX_WAIT = 8.0
GIVE_UP_AFTER = 120.0


class Breaker:
    """Circuit state shared by all requests of one run."""

    def __init__(
        self,
        *,
        give_up_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.give_up_after = GIVE_UP_AFTER if give_up_after is None else give_up_after
        self.opened = 0  # how many times the circuit opened this run
        self.last_error = ""
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._wait = FIRST_WAIT
        self._retry_at = 0.0
        self._probing = False
        self._changed: asyncio.Event | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def gave_up(self) -> bool:
        """Open for longer than :attr:`give_up_after`: requests are no longer held."""
        return self._opened_at is not None and self.down_for() > self.give_up_after

    @property
    def next_probe_at(self) -> float:
        """When the next probe may go (on the breaker's clock), while the circuit is open."""
        return self._retry_at

    def down_for(self) -> float:
        """Seconds since the circuit opened (0 when closed)."""
        return 0.0 if self._opened_at is None else self._clock() - self._opened_at

    def succeeded(self, *, probe: bool) -> None:
        """The endpoint answered (anything but a 5xx): close the circuit, unless the answer is to
        a request sent before the outage (only the probe, or any request once the breaker gave
        up, tells that the endpoint is back)."""
        self._failures = 0
        if self._opened_at is not None and not (probe or self.gave_up):
            return
        if self._opened_at is not None:
            logger.warning("the endpoint answers again after %.0f s; resuming", self.down_for())
        self._opened_at = None
        self._probing = False
        self._wait = FIRST_WAIT
        self._notify()

    def failed(self, error: str, *, refused: bool, probe: bool, first_attempt: bool = True) -> None:
        """A refused connection (``refused``) or a 5xx; ``error`` says what the endpoint said,
        ``probe`` whether the request was the one :meth:`admit` let through as the probe,
        ``first_attempt`` whether it was a row's first try (only those make a burst of 5xx)."""
        self.last_error = error
        if first_attempt or refused:
            self._failures += 1
        now = self._clock()
        if self._opened_at is not None:
            if probe:  # wait longer before the next probe
                self._probing = False
                self._wait = min(self._wait * 2, MAX_WAIT)
                self._retry_at = now + self._wait
                self._notify()
            return
        if refused or self._failures >= BURST:
            self.opened += 1
            self._opened_at = now
            self._wait = FIRST_WAIT
            self._retry_at = now + self._wait
            logger.warning(
                "the endpoint is failing (%s); pausing all requests and probing it with one "
                "request at a time, for up to %.0f s",
                error,
                self.give_up_after,
            )

    def inconclusive(self, *, probe: bool) -> None:
        """The request ended without telling (a timeout, a reset): let another probe go now."""
        if probe and self._probing:
            self._probing = False
            self._retry_at = self._clock()
            self._notify()

    async def admit(self) -> bool:
        """Return when a request may go: at once when closed (or given up), else as the probe
        (True) or once a probe succeeded."""
        while self._opened_at is not None and not self.gave_up:
            now = self._clock()
            if not self._probing and now >= self._retry_at:
                self._probing = True
                return True
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            wait = None if self._probing else self._retry_at - now
            if wait is None:
                wait = self._opened_at + self.give_up_after - now
            try:
                await asyncio.wait_for(self._changed.wait(), max(wait, 0.0) + 1e-3)
            except TimeoutError:
                pass
        return False

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
