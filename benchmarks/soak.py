"""Soak: 20,000 rows through the annotate flow while the LLM endpoint fails ~30% of requests.

Runs the real Prefect flow (ephemeral local server) with the LLM annotator against the scripted
chat server of the reliability suite (``tests/reliability_helpers.py``: 429 + Retry-After, 500,
connection reset, hang past the timeout, invalid JSON body, phrases not in the text, prose
instead of JSON, plus poison rows that never get a usable reply). Then re-runs the flow with the
faults off and checks it asked only for the rows quarantined as retryable. Prints rows/s, the
quarantine rate, RSS over time and the replies sent per fault class; exits 1 if counts do not add
up.

    python benchmarks/soak.py [--rows 20000] [--rate 0.3] [--shard-size 500]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from _rss import RssSampler, rss_mb  # noqa: E402
from reliability_helpers import (  # noqa: E402 - after the path and Prefect settings
    CANARY,
    PACK,
    FaultScript,
    files_containing,
    llm_options,
    request_text,
    source_rows,
    write_jsonl,
)


def serve(script: FaultScript, conn: Any) -> None:
    """Child process: run the scripted server until told to stop, then report what it saw.

    The server records every request body; in its own process that memory does not count
    against the flow's RSS.
    """
    from cattune.annotators.scripted_server import ScriptedChatServer

    with ScriptedChatServer(script) as server:
        conn.send(server.base_url)
        conn.recv()
        texts = [request_text(r.body) for r in server.requests]
        conn.send((len(texts), set(texts), dict(script.played)))


class ServerProcess:
    """A scripted server in a forked child; start it before any thread exists in this process."""

    def __init__(self, script: FaultScript) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(script, child), daemon=True)
        self.process.start()
        self.base_url: str = self.conn.recv()

    def finish(self) -> tuple[int, set[str], dict[str, int]]:
        self.conn.send("stop")
        result = self.conn.recv()
        self.process.join(30)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    from cattune.flows.annotate import annotate_flow
    from cattune.pipeline.store import DatasetStore

    os.environ["CATTUNE_REL_KEY"] = CANARY
    work = Path(tempfile.mkdtemp(prefix="cattune-soak-"))
    source = write_jsonl(work / "rows.jsonl", source_rows(args.rows))
    store_root = str(work / "store")
    script = FaultScript(seed=args.seed, rate=args.rate, hang=4.0)
    print(f"soak: {args.rows} rows, fault rate {args.rate}, work dir {work}", flush=True)
    faulty = ServerProcess(script)
    clean = ServerProcess(FaultScript(seed=args.seed + 1, rate=0.0))

    warm = time.monotonic()
    from prefect import flow

    flow(lambda: None, name="warm-up")()  # the ephemeral server's cold start is not the soak
    print(f"prefect ephemeral server ready in {time.monotonic() - warm:.1f} s", flush=True)

    sampler = RssSampler()
    rss_start = rss_mb()
    sampler.start()
    options = llm_options(faulty, work / "llm.sqlite", timeout=1.0, concurrency=32)
    started = time.monotonic()
    summary = annotate_flow(
        str(source), "soak", "llm", PACK, options, store=store_root, shard_size=args.shard_size
    )
    elapsed = time.monotonic() - started
    requests, _, played = faulty.finish()
    sampler.stop.set()
    sampler.join()

    store = DatasetStore(store_root)
    rows = store.read("soak")
    quarantine = store.quarantine("soak")
    retryable = [q for q in quarantine if q.retryable]
    problems = []
    if summary.rows_annotated + summary.rows_quarantined != args.rows:
        problems.append("annotated + quarantined != rows read")
    if len(rows) != len({r.id for r in rows}) or len(rows) != summary.rows_annotated:
        problems.append("dataset rows do not match the summary")
    if len(rows) + len(quarantine) != args.rows:
        problems.append("dataset + quarantine != rows read")

    options = llm_options(clean, work / "llm.sqlite", timeout=10.0, concurrency=32)
    again = annotate_flow(
        str(source), "soak", "llm", PACK, options, store=store_root, shard_size=args.shard_size
    )
    _, asked, _ = clean.finish()
    if asked != {q.text for q in retryable}:
        problems.append("the re-run did not ask for exactly the retryable rows")
    if again.rows_annotated != len(retryable):
        problems.append("the re-run did not annotate every retryable row")
    leaks = files_containing(work, CANARY)
    if leaks:
        problems.append(f"the API key appears in {leaks}")

    peak = max(mb for _, mb in sampler.samples)
    end = sampler.samples[-1][1]
    reasons: dict[str, int] = {}
    for q in quarantine:
        key = q.error.split(";")[0].split(":")[0][:60]
        reasons[key] = reasons.get(key, 0) + 1
    report = {
        "rows": args.rows,
        "fault_rate": args.rate,
        "seconds": round(elapsed, 1),
        "rows_per_second": round(args.rows / elapsed, 1),
        "requests": requests,
        "annotated": summary.rows_annotated,
        "quarantined": summary.rows_quarantined,
        "quarantine_rate": round(summary.rows_quarantined / args.rows, 4),
        "retryable": len(retryable),
        "final": len(quarantine) - len(retryable),
        "rerun_requests_for_rows": len(asked),
        "rerun_annotated": again.rows_annotated,
        "rss_mb": {"start": round(rss_start, 1), "peak": round(peak, 1), "end": round(end, 1)},
        "rss_timeline_mb": [
            round(mb) for _, mb in sampler.samples[:: max(1, len(sampler.samples) // 12)]
        ],
        "replies_by_fault_class": dict(sorted(played.items(), key=lambda kv: -kv[1])),
        "quarantine_reasons": reasons,
        "problems": problems,
    }
    print(json.dumps(report, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
