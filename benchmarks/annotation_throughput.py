"""LLM annotation throughput against a scripted OpenAI-compatible server with fixed latency.

Every request is answered after LATENCY seconds by a ScriptedChatServer running in its own
process, so the ideal rate at concurrency c is c / LATENCY rows a second; the table shows how
close LLMAnnotator gets (prompt building, the openai SDK, HTTP, reply parsing and alignment all
included; the reply cache is off). The concurrency is the ceiling of the adaptive limit
(:mod:`cattune.annotators.llm_limit`), which starts below it.

The restart scenario stops the server after RESTART_AFTER requests and starts another on the same
port RESTART_DOWN seconds later, with default settings and ``--timeout 10``: how many of
RESTART_ROWS rows end annotated (all of them: the run pauses instead of spending retries).

The 1-slot scenario answers one request at a time (ONE_SLOT_LATENCY s each, the others queue in
the server) and runs the annotator with ``--timeout 10`` and otherwise default settings: how long
40 rows take and how many end annotated (the ideal is 40 rows in 40 s).

    python benchmarks/annotation_throughput.py [--latency 0.2] [--rounds 30] [--levels 1 8 16 32 64]
        [--skip-one-slot] [--skip-restart]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection

from cattune.annotators.llm import LLMAnnotator
from cattune.annotators.pack import load_pack
from cattune.annotators.scripted_server import Reply, ScriptedChatServer
from cattune.schemas import AnnotatedExample, Example

REPLY = json.dumps({"relations": [{"effect": "High Risk", "causes": ["Smoking: 8", "Weight: 4"]}]})


def rows(n: int, tag: str) -> list[Example]:
    return [
        Example.create(
            f"Run {tag} row {i}. Smoking: 8, Room size: 3, Weight: 4, Gene: 2. Answer: ",
            "High Risk",
        )
        for i in range(n)
    ]


ONE_SLOT_ROWS = 40
ONE_SLOT_LATENCY = 1.0
ONE_SLOT_TIMEOUT = 10.0


def _serve(latency: float, slots: int | None, connection: Connection) -> None:
    with ScriptedChatServer(
        lambda request, attempt: Reply.completion(REPLY, delay=latency), slots=slots
    ) as server:
        connection.send(server.base_url)
        connection.recv()  # until the parent is done
        connection.send(server.request_count)


@contextmanager
def endpoint(latency: float, slots: int | None = None) -> Iterator[tuple[str, list[int]]]:
    """The scripted server in its own process, as a real endpoint would be (no shared GIL);
    yields its URL and a list that holds the number of requests it received once it stopped."""
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(
        target=_serve, args=(latency, slots, child)
    )
    process.start()
    received: list[int] = []
    try:
        yield parent.recv(), received
    finally:
        parent.send("stop")
        received.append(parent.recv())
        process.join(timeout=10)


def measure(concurrency: int, n_rows: int, latency: float) -> tuple[float, float]:
    """(rows a second, CPU milliseconds a row in this process) at this concurrency."""
    with endpoint(latency) as (base_url, _):
        annotator = LLMAnnotator(
            load_pack("key-value-records"),
            model="scripted",
            base_url=base_url,
            api_key="benchmark",
            concurrency=concurrency,
            timeout=30,
            cache=False,
            progress=False,
        )
        batch = rows(n_rows, f"c{concurrency}")
        start, cpu = time.perf_counter(), time.process_time()
        results = annotator.annotate(batch)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if not all(isinstance(r, AnnotatedExample) for r in results):
        raise SystemExit("benchmark replies were not all annotated: the setup is broken")
    return n_rows / elapsed, cpu / n_rows * 1000


def scripted_annotator(base_url: str) -> LLMAnnotator:
    """The LLM annotator as a user would start it, with ``--timeout`` ONE_SLOT_TIMEOUT."""
    return LLMAnnotator(
        load_pack("key-value-records"),
        model="scripted",
        base_url=base_url,
        api_key="benchmark",
        timeout=ONE_SLOT_TIMEOUT,
        cache=False,
        progress=False,
    )


def one_slot() -> tuple[float, int, int]:
    """(seconds, rows annotated, requests the server received) for the 1-slot scenario."""
    with endpoint(ONE_SLOT_LATENCY, slots=1) as (base_url, received):
        annotator = scripted_annotator(base_url)
        start = time.perf_counter()
        results = annotator.annotate(rows(ONE_SLOT_ROWS, "one-slot"))
        elapsed = time.perf_counter() - start
    return elapsed, sum(isinstance(r, AnnotatedExample) for r in results), received[0]


RESTART_ROWS = 60
RESTART_AFTER = 15
RESTART_DOWN = 30.0


def restart() -> tuple[float, int, int]:
    """(seconds, rows annotated, outages) when the server is down RESTART_DOWN s mid-run."""
    script = lambda request, attempt: Reply.completion(REPLY, delay=0.2)  # noqa: E731
    first = ScriptedChatServer(script)
    first.start()
    later: list[ScriptedChatServer] = []

    def outage() -> None:
        while first.request_count < RESTART_AFTER:
            time.sleep(0.01)
        first.stop()
        time.sleep(RESTART_DOWN)
        later.append(ScriptedChatServer(script, port=first.port))
        later[0].start()

    thread = threading.Thread(target=outage)
    thread.start()
    try:
        annotator = scripted_annotator(first.base_url)
        start = time.perf_counter()
        results = annotator.annotate(rows(RESTART_ROWS, "restart"))
        elapsed = time.perf_counter() - start
    finally:
        thread.join()
        for server in later:
            server.stop()
    annotated = sum(isinstance(r, AnnotatedExample) for r in results)
    return elapsed, annotated, annotator.last_run.outages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="server latency (s)")
    parser.add_argument(
        "--rounds", type=int, default=30, help="rows per level = rounds x level (steady state)"
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--skip-one-slot", action="store_true", help="no 1-slot scenario")
    parser.add_argument("--skip-restart", action="store_true", help="no restart scenario")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"latency {args.latency * 1000:.0f} ms per request, {args.rounds} rounds per level, "
        f"{os.cpu_count()} CPUs, load average {load}\n"
    )
    measure(4, 8, 0.0)  # warm-up: imports the SDK and builds its models outside the timings
    print("| concurrency | rows | rows/s | ideal rows/s | ratio to ideal | client CPU ms/row |")
    print("|---:|---:|---:|---:|---:|---:|")
    for level in args.levels:
        n_rows = max(level * args.rounds, 20)
        rate, cpu_ms = measure(level, n_rows, args.latency)
        ideal = level / args.latency
        print(
            f"| {level} | {n_rows} | {rate:.1f} | {ideal:.1f} | {rate / ideal:.0%} | {cpu_ms:.2f} |"
        )
    if not args.skip_one_slot:
        print_one_slot()
    if not args.skip_restart:
        seconds, annotated, outages = restart()
        print(
            f"\nServer stopped after {RESTART_AFTER} requests and restarted on the same port "
            f"{RESTART_DOWN:g} s later (200 ms a request, --timeout {ONE_SLOT_TIMEOUT:g}, "
            "default concurrency):\n"
        )
        print("| rows | annotated | seconds | outages |")
        print("|---:|---:|---:|---:|")
        print(f"| {RESTART_ROWS} | {annotated} | {seconds:.1f} | {outages} |")


def print_one_slot() -> None:
    seconds, annotated, received = one_slot()
    print(
        f"\n1-slot server ({ONE_SLOT_LATENCY:g} s a request, one at a time), "
        f"--timeout {ONE_SLOT_TIMEOUT:g}, default concurrency (ceiling 16):\n"
    )
    print("| rows | annotated | seconds | ideal seconds | requests received |")
    print("|---:|---:|---:|---:|---:|")
    ideal = ONE_SLOT_ROWS * ONE_SLOT_LATENCY
    print(f"| {ONE_SLOT_ROWS} | {annotated} | {seconds:.1f} | {ideal:.0f} | {received} |")


if __name__ == "__main__":
    main()
