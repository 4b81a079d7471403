"""The HTTP transport under the openai SDK for one LLM annotation run.

It sits below the SDK's retries, so it sees every single attempt:

- each chat request reports its latency, timeout or 429, with the number of requests in flight
  when it was sent, to the run's adaptive limit
  (:class:`~cattune.annotators.llm_limit.ConcurrencyLimit`; a row takes its place under the
  limit before it calls the SDK, so rows waiting for a place cost nothing and the request
  timeout covers only time in flight);
- refused connections and bursts of 5xx open the run's circuit
  (:class:`~cattune.annotators.llm_breaker.Breaker`); the request that met the outage waits with
  all others and is sent again when a probe got through, spending none of the SDK's retries;
- a chat call that timed out once is not sent a third time: the second timeout raises
  :class:`TimedOutAgain`, an SDK error, which the SDK passes on without retrying (at temperature
  0 the same request would most likely ramble past the timeout again).

The openai SDK (3.x) talks through ``httpx2``, so this transport is an ``httpx2`` one.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

import httpx2
import openai

from cattune.annotators.llm_breaker import Breaker
from cattune.annotators.llm_limit import ConcurrencyLimit, Slot

TIMEOUTS_PER_CALL = 2  # a chat call is sent again once after a timeout, not more


@dataclass
class CallCounts:
    """What one chat call (its SDK retries included) sent; bound to the calling task."""

    requests: int = 0
    timeouts: int = 0


CALL: ContextVar[CallCounts] = ContextVar("cattune_llm_call")


class TimedOutAgain(openai.APITimeoutError):
    """The same chat request timed out :data:`TIMEOUTS_PER_CALL` times."""


class OutageError(openai.APIConnectionError):
    """The circuit stayed open longer than the breaker waits; ``message`` has the last error."""


class RunTransport(httpx2.AsyncBaseTransport):
    """Adaptive concurrency and the circuit breaker for every chat request of a run."""

    def __init__(self, limit: ConcurrencyLimit, breaker: Breaker) -> None:
        self.limit = limit
        self.breaker = breaker
        self.reached = False  # the endpoint answered at least once this run
        self.in_flight = 0  # chat requests sent and not yet answered
        # No pool limit of its own: the adaptive limit is the limit (the pool's wait would count
        # against the request timeout).
        self._inner = httpx2.AsyncHTTPTransport(
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=limit.ceiling)
        )

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not request.url.path.endswith("/chat/completions"):
            response = await self._inner.handle_async_request(request)
            self.reached = True
            return response
        while True:
            probe = await self.breaker.admit()
            self.in_flight += 1  # this request and those already at the server, ahead of it
            slot = Slot(self.in_flight, time.monotonic())
            try:
                response = await self._inner.handle_async_request(request)
            except httpx2.ReadTimeout:
                self.limit.timed_out(slot)
                self.breaker.inconclusive(probe=probe)
                self._count_timeout(request)
                raise
            except httpx2.ConnectError as error:
                if not self.reached:
                    raise  # refused before any answer: the caller's one-line EndpointError
                what = f"{type(error).__name__}: {error}"
                self.breaker.failed(what, refused=True, probe=probe)
                if self.breaker.gave_up:
                    raise self._outage(request) from error
                continue  # never reached the server: wait for the circuit, then send again
            except BaseException:
                self.breaker.inconclusive(probe=probe)
                raise
            finally:
                self.in_flight -= 1
            self.reached = True
            status = response.status_code
            if status < 500:
                self.breaker.succeeded(probe=probe)
                if status == 429:
                    self.limit.throttled(slot)
                else:
                    self.limit.replied(slot, time.monotonic() - slot.sent_at)
                return response
            response = await _read(response, request)
            if "response_format" in response.text:  # about the request, not an outage
                self.breaker.succeeded(probe=probe)
                return response
            what = f"HTTP {status}: {_short(response.text)}"
            call = CALL.get(None)
            first = call is None or call.requests <= 1
            self.breaker.failed(what, refused=False, probe=probe, first_attempt=first)
            if not self.breaker.is_open or self.breaker.gave_up:
                return response  # a lone 5xx: the SDK retries it with its backoff
            # else the circuit is open: wait with everyone else, then send this again

    def _count_timeout(self, request: httpx2.Request) -> None:
        call = CALL.get(None)
        if call is None:
            return
        call.timeouts += 1
        if call.timeouts >= TIMEOUTS_PER_CALL:
            raise TimedOutAgain(request) from None

    def _outage(self, request: httpx2.Request) -> OutageError:
        return OutageError(
            message=(
                f"the endpoint failed for {self.breaker.down_for():.0f} s, longer than the "
                f"{self.breaker.give_up_after:.0f} s a run waits (last error: "
                f"{self.breaker.last_error})"
            ),
            request=request,
        )


async def _read(response: httpx2.Response, request: httpx2.Request) -> httpx2.Response:
    """The same response with its (small, error) body read, so it can be inspected here."""
    body = await response.aread()
    return httpx2.Response(
        response.status_code,
        headers=response.headers,
        content=body,
        request=request,
        extensions=response.extensions,
    )


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split()) or "no explanation given"
    return text if len(text) <= limit else text[: limit - 3] + "..."
