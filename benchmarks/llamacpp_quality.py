"""SmolLM2-135M through a real llama.cpp server as a causal annotator, scored against STG gold.

Starts ``python -m llama_cpp.server`` (scripts/setup_llamacpp.sh's environment, the embedded
SmolLM2-135M-Instruct GGUF, one thread) on 127.0.0.1, runs ``cattune annotate --annotator llm``
over the first ROWS rows of the CAT authors' STG training file as the README gives the command,
and scores the annotated rows against the authors' labels aligned by the GoldAnnotator (pair-level
precision / recall, exact and word-overlap, :mod:`cattune.annotators.quality`). The rule-based
PriorAnnotator on the same rows is the reference point. Prints a Markdown table; exits 1 if a
source row is missing from both outputs.

    python benchmarks/llamacpp_quality.py [--rows 60] [--pack key-value-records]
        [--concurrency N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from llamacpp_helpers import MODEL, running_llamacpp  # noqa: E402 - after the path

from cattune.annotators.given import GoldAnnotator  # noqa: E402
from cattune.annotators.prior import PriorAnnotator  # noqa: E402
from cattune.annotators.quality import QualityReport, evaluate  # noqa: E402
from cattune.schemas import AnnotatedExample, QuarantinedExample, from_table  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cat-reference"
STG_FILE = Path("STG") / "spurious_token_game_train3.jsonl"


def _row(name: str, report: QualityReport, annotated: int, quarantined: int) -> str:
    return (
        f"| {name} | {annotated} | {quarantined} | {report.exact.precision:.2f} | "
        f"{report.exact.recall:.2f} | {report.overlap.precision:.2f} | "
        f"{report.overlap.recall:.2f} |"
    )


def measure(
    data: Path, rows: int, pack: str, workdir: Path, concurrency: int | None
) -> dict[str, Any]:
    """Annotate, score, and collect the figures."""
    from cattune.pipeline.convert import convert_source

    lines = (data / STG_FILE).read_text(encoding="utf-8").splitlines()[:rows]
    source = workdir / "stg.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples = convert_source(source).records
    gold = [r for r in GoldAnnotator().annotate(examples) if isinstance(r, AnnotatedExample)]
    out = workdir / "llm.parquet"
    cattune = Path(sys.executable).with_name("cattune")
    with running_llamacpp(workdir) as server:
        command = [str(cattune), "annotate", str(source), "--annotator", "llm", "--pack", pack]
        command += ["--base-url", server.base_url, "--model", MODEL, "--max-tokens", "512"]
        command += ["--out", str(out), "--no-cache"]
        if concurrency is not None:
            command += ["--concurrency", str(concurrency)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        statuses = server.completion_statuses()
    if done.returncode not in (0, 1):
        raise SystemExit(f"cattune annotate failed ({done.returncode}): {done.stderr[-2000:]}")
    good = from_table(pq.read_table(out), AnnotatedExample)
    bad = from_table(pq.read_table(workdir / "llm.quarantine.parquet"), QuarantinedExample)
    prior = [r for r in PriorAnnotator(pack).annotate(examples) if isinstance(r, AnnotatedExample)]
    llm_report, prior_report = evaluate(good, gold), evaluate(prior, gold)
    return {
        "rows": len(examples),
        "gold_rows": len(gold),
        "pack": pack,
        "concurrency": concurrency,
        "llm": llm_report.model_dump(),
        "llm_annotated": len(good),
        "llm_quarantined": len(bad),
        "llm_reasons": Counter(r.error.split(":")[0] for r in bad).most_common(3),
        "prior": prior_report.model_dump(),
        "prior_annotated": len(prior),
        "seconds": seconds,
        "seconds_per_row": seconds / len(examples),
        "requests": len(statuses),
        "request_statuses": dict(Counter(statuses)),
        "complete": len(good) + len(bad) == len(examples),
        "cli_summary": done.stdout.strip().splitlines(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the CAT authors' data folder")
    parser.add_argument("--rows", type=int, default=60, help="STG rows to annotate (default 60)")
    parser.add_argument("--pack", default="key-value-records", help="prior pack name or file")
    parser.add_argument(
        "--concurrency", type=int, help="cattune's --concurrency (default: cattune's default)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llamacpp-quality-") as tmp:
        result = measure(args.data, args.rows, args.pack, Path(tmp), args.concurrency)
    llm, prior = QualityReport(**result["llm"]), QualityReport(**result["prior"])
    print(
        f"STG rows: {result['rows']} ({result['gold_rows']} with aligned gold); pack {args.pack}; "
        f"--concurrency {args.concurrency or 'default'}"
    )
    print("| annotator | annotated | quarantined | exact P | exact R | overlap P | overlap R |")
    print("|---|---|---|---|---|---|---|")
    annotated, quarantined = result["llm_annotated"], result["llm_quarantined"]
    print(_row("SmolLM2-135M via llama.cpp", llm, annotated, quarantined))
    quarantined_prior = result["rows"] - result["prior_annotated"]
    print(_row("PriorAnnotator (rules)", prior, result["prior_annotated"], quarantined_prior))
    print(
        f"llama.cpp: {result['seconds']:.0f} s, {result['seconds_per_row']:.2f} s per row, "
        f"{result['requests']} requests {result['request_statuses']}"
    )
    print("quarantine reasons:", result["llm_reasons"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
