"""LLM annotation throughput against a scripted OpenAI-compatible server with fixed latency.

Every request is answered after LATENCY seconds by a ScriptedChatServer running in its own
process, so the ideal rate at concurrency c is c / LATENCY rows a second; the table shows how
close LLMAnnotator gets (prompt building, the openai SDK, HTTP, reply parsing and alignment all
included; the reply cache is off).

    python benchmarks/annotation_throughput.py [--latency 0.2] [--rounds 30] [--levels 1 8 16 32 64]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
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


def _serve(latency: float, connection: Connection) -> None:
    with ScriptedChatServer(lambda request, attempt: Reply.completion(REPLY, delay=latency)) as s:
        connection.send(s.base_url)
        connection.recv()  # until the parent is done


@contextmanager
def endpoint(latency: float) -> Iterator[str]:
    """The scripted server in its own process, as a real endpoint would be (no shared GIL)."""
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_serve, args=(latency, child))
    process.start()
    try:
        yield parent.recv()
    finally:
        parent.send("stop")
        process.join(timeout=10)


def measure(concurrency: int, n_rows: int, latency: float) -> tuple[float, float]:
    """(rows a second, CPU milliseconds a row in this process) at this concurrency."""
    with endpoint(latency) as base_url:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="server latency (s)")
    parser.add_argument(
        "--rounds", type=int, default=30, help="rows per level = rounds x level (steady state)"
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16, 32, 64])
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


if __name__ == "__main__":
    main()
