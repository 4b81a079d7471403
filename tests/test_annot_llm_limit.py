"""The adaptive concurrency limit and the circuit breaker, rule by rule (no server)."""

from __future__ import annotations

import asyncio

import pytest

from cattune.annotators.llm_breaker import BURST, FIRST_WAIT, MAX_WAIT, Breaker
from cattune.annotators.llm_limit import INITIAL, ConcurrencyLimit, Slot


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_starts_low_and_never_above_the_ceiling() -> None:
    assert ConcurrencyLimit(16, timeout=10).limit == INITIAL == 8
    assert ConcurrencyLimit(4, timeout=10).limit == 4
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyLimit(0, timeout=10)


def test_one_slot_server_settles_where_the_last_in_line_waits_half_the_timeout() -> None:
    limit = ConcurrencyLimit(16, timeout=10)
    # 1 s a reply, one at a time: the k-th in line waits k seconds.
    for n in (1, 2, 3, 5, 5, 5):
        limit.replied(Slot(n, 0.0), latency=n * 1.0)
        assert limit.limit == 5  # 5 in flight: the last one waits 5 s, half of the 10 s timeout
    assert limit.service == pytest.approx(1.0)


def test_fast_parallel_server_goes_to_the_ceiling_after_one_reply() -> None:
    limit = ConcurrencyLimit(64, timeout=30)
    limit.replied(Slot(8, 0.0), latency=0.2)  # 8 at once in 200 ms: 25 ms a request
    assert limit.limit == 64


def test_slower_replies_lower_the_limit_smoothly() -> None:
    limit = ConcurrencyLimit(16, timeout=10)
    limit.replied(Slot(1, 0.0), latency=1.0)
    limit.replied(Slot(5, 0.0), latency=10.0)  # service 2.0: estimate 1.0 + 0.3 x 1.0 = 1.3
    assert limit.service == pytest.approx(1.3)
    assert limit.limit == 3  # 5 / 1.3 = 3.8


def test_a_timeout_counts_as_a_reply_that_took_the_whole_timeout() -> None:
    limit = ConcurrencyLimit(16, timeout=10)
    limit.replied(Slot(1, 0.0), latency=1.0)
    limit.timed_out(Slot(5, 0.0))
    assert limit.service == pytest.approx(1.3)
    assert limit.limit == 3


def test_throttling_halves_once_per_round_trip_then_grows_back_by_one_per_window() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(16, timeout=10, clock=clock)
    limit.replied(Slot(8, 0.0), latency=0.01)
    assert limit.limit == 16
    clock.now = 1.0
    limit.throttled(Slot(16, 0.5))
    assert (limit.limit, limit.cap) == (8, 8.0)
    limit.throttled(Slot(16, 0.9))  # sent before the cut: the same congestion, no second cut
    assert limit.limit == 8
    clock.now = 2.0
    limit.throttled(Slot(8, 1.5))
    assert (limit.limit, limit.cap) == (4, 4.0)
    # Additive increase: cap += 1/cap a reply, so one more after about `cap` replies.
    for _ in range(4):
        limit.replied(Slot(4, 2.0), latency=0.01)
    assert limit.limit == 4  # cap 4.92
    limit.replied(Slot(4, 2.0), latency=0.01)
    assert limit.limit == 5  # cap 5.12
    assert limit.cap == pytest.approx(5.1238, abs=1e-4)


def test_gate_keeps_at_most_limit_in_flight_first_come_first_served() -> None:
    async def run() -> tuple[list[int], list[int]]:
        limit = ConcurrencyLimit(2, timeout=10)
        order: list[int] = []
        held: list[int] = []

        async def one(i: int) -> None:
            async with limit.slot():
                order.append(i)
                held.append(limit.in_flight)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one(i) for i in range(6)))
        assert limit.in_flight == 0
        return order, held

    order, held = asyncio.run(run())
    assert order == list(range(6))
    assert held == [1, 2, 2, 2, 2, 2]


def test_a_cancelled_waiter_gives_its_place_on() -> None:
    async def run() -> list[str]:
        limit = ConcurrencyLimit(1, timeout=10)
        log: list[str] = []

        async def one(name: str, hold: float) -> None:
            async with limit.slot():
                log.append(name)
                await asyncio.sleep(hold)

        first = asyncio.create_task(one("first", 0.05))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(one("doomed", 0))
        last = asyncio.create_task(one("last", 0))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.gather(first, last)
        assert limit.in_flight == 0
        return log

    assert asyncio.run(run()) == ["first", "last"]


def test_breaker_opens_after_a_burst_of_server_errors_or_one_refusal() -> None:
    breaker = Breaker()
    for _ in range(BURST - 1):
        breaker.failed("HTTP 503: busy", refused=False, probe=False)
    assert not breaker.is_open
    breaker.succeeded(probe=False)  # a success in between: not a burst
    for _ in range(BURST - 1):
        breaker.failed("HTTP 503: busy", refused=False, probe=False)
    assert not breaker.is_open
    breaker.failed("HTTP 503: busy", refused=False, probe=False)
    assert breaker.is_open and breaker.opened == 1
    refused = Breaker()
    refused.failed("ConnectError: refused", refused=True, probe=False)
    assert refused.is_open and refused.opened == 1 and refused.last_error == "ConnectError: refused"


def test_breaker_probes_with_one_request_backs_off_and_releases_all_on_success() -> None:
    async def run() -> None:
        clock = Clock()
        breaker = Breaker(clock=clock)
        breaker.failed("ConnectError: refused", refused=True, probe=False)
        waiter = asyncio.create_task(breaker.admit())
        await asyncio.sleep(0.01)
        assert not waiter.done()  # before the first wait is over nobody goes
        clock.now = FIRST_WAIT
        assert await breaker.admit() is True  # the probe
        second = asyncio.create_task(breaker.admit())
        await asyncio.sleep(0.01)
        assert not second.done()  # one probe at a time
        breaker.failed("ConnectError: refused", refused=True, probe=True)
        assert breaker.next_probe_at == FIRST_WAIT + 2 * FIRST_WAIT  # backoff doubles
        assert breaker.opened == 1  # still the same outage
        breaker.succeeded(probe=False)  # a reply to a request sent before the outage
        assert breaker.is_open and not second.done()
        breaker.succeeded(probe=True)
        assert await asyncio.wait_for(waiter, 1) is False
        assert await asyncio.wait_for(second, 1) is False
        assert not breaker.is_open

    asyncio.run(run())


def test_breaker_backoff_is_capped_and_it_gives_up_after_the_bound() -> None:
    async def run() -> None:
        clock = Clock()
        breaker = Breaker(give_up_after=60.0, clock=clock)
        breaker.failed("HTTP 502: bad gateway", refused=True, probe=False)
        for _ in range(8):
            clock.now = breaker.next_probe_at
            assert await breaker.admit() is True
            breaker.failed("HTTP 502: bad gateway", refused=True, probe=True)
        assert breaker.next_probe_at - clock.now == MAX_WAIT
        clock.now = 59.5
        assert not breaker.gave_up
        clock.now = 60.5
        assert breaker.gave_up
        assert await asyncio.wait_for(breaker.admit(), 1) is False  # no longer held

    asyncio.run(run())


def test_an_inconclusive_probe_lets_the_next_one_go() -> None:
    async def run() -> None:
        clock = Clock()
        breaker = Breaker(clock=clock)
        breaker.failed("ConnectError: refused", refused=True, probe=False)
        clock.now = 1.0
        assert await breaker.admit() is True
        waiting = asyncio.create_task(breaker.admit())
        await asyncio.sleep(0.01)
        breaker.inconclusive(probe=True)  # the probe timed out
        assert await asyncio.wait_for(waiting, 1) is True

    asyncio.run(run())


def test_retries_of_rows_that_already_failed_do_not_make_a_burst() -> None:
    """Rows whose text makes the server fail (retried at the end of a run) must not pause it."""
    breaker = Breaker()
    for _ in range(3 * BURST):
        breaker.failed("HTTP 500: boom", refused=False, probe=False, first_attempt=False)
    assert not breaker.is_open and breaker.last_error == "HTTP 500: boom"
    for _ in range(BURST):
        breaker.failed("HTTP 500: boom", refused=False, probe=False, first_attempt=True)
    assert breaker.is_open
