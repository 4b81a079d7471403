"""Run every benchmark and write benchmarks/RESULTS.md, which the README includes.

Each benchmark is a script in this folder that prints a Markdown table whose ratios are measured
against a baseline in the same run; this runner only collects their output, one section each.
The README's section between the ``<!-- benchmarks:begin -->`` / ``<!-- benchmarks:end -->``
markers is replaced by the same text.

    python benchmarks/run_all.py [--only loss_speed,step_cost] [--no-readme]

With --only, the other benchmarks' sections of the last RESULTS.md are kept.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"

# (script, arguments, what the ratio compares)
BENCHMARKS: dict[str, tuple[list[str], str]] = {
    "loss_speed": ([], "Re-Attention loss: vectorised vs a per-row Python loop (B=8, T=256)"),
    "step_cost": (
        ["--seq-len", "256", "1024", "2048"],
        "One training step: memory-efficient CAT vs plain SDPA fine-tuning vs eager "
        "+ output_attentions",
    ),
    "pretrained_step": (
        ["--rounds", "5"],
        "One training step on the pretrained SmolLM2-135M (LoRA): CAT vs baseline",
    ),
    "alignment_speed": ([], "Span -> token alignment: offset mapping vs token-subsequence search"),
    "annotation_throughput": ([], "LLM annotation throughput vs concurrency (200 ms server)"),
    "flow_overhead": ([], "Prefect annotate-flow overhead per 1,000 rows (gold annotator)"),
    "annotate_dask": (
        [],
        "Annotate flow scale-out: Dask LocalCluster (1, 2, 4 workers) vs the thread runner",
    ),
    "annotate_scale": (
        ["--rows", "20000,200000,1000000"],
        "Annotate flow at scale: rows/s and peak RSS as the source grows (prior annotator)",
    ),
}


def run(name: str, arguments: list[str]) -> tuple[str, float]:
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py"), *arguments],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if finished.returncode != 0:
        tail = "\n".join(finished.stderr.splitlines()[-15:])
        return f"**failed** (exit {finished.returncode}):\n\n```\n{tail}\n```", seconds
    return finished.stdout.strip(), seconds


def previous_sections() -> dict[str, str]:
    """Sections of the last RESULTS.md by title, so that --only replaces just its benchmarks."""
    if not RESULTS.is_file():
        return {}
    parts = RESULTS.read_text().split("\n### ")[1:]
    return dict(part.split("\n\n", 1) for part in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")

    sections = previous_sections() if args.only else {}
    for name in names:
        arguments, title = BENCHMARKS[name]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        output, seconds = run(name, arguments)
        command = " ".join(["python", f"benchmarks/{name}.py", *arguments])
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        sections[title] = f"`{command}` ({seconds:.0f} s, {stamp})\n\n{output}\n"
    ordered = [title for _, title in BENCHMARKS.values() if title in sections]
    text = "_Measured by `python benchmarks/run_all.py`._\n\n" + "\n".join(
        f"### {title}\n\n{sections[title]}" for title in ordered
    )
    RESULTS.write_text(text)
    print(text)
    if not args.no_readme and README.is_file():
        readme = README.read_text()
        if BEGIN in readme and END in readme:
            head, rest = readme.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
