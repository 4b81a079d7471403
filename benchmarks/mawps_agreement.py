"""Agreement between three MAWPS annotators, and how their vote scores against each of them.

Annotators: the CAT authors' GLM-4-air labels (``mawps_train.jsonl``), their GPT-4o labels
(``mawps_train_gpt4o.jsonl``), and cattune's PriorAnnotator (``math-word-problems`` pack). Both
label files are aligned to spans as ``cattune convert`` does; rows are matched by content id (the
files hold 1,239 lines, 1,208 distinct rows). Scores are pair-level (effect span, cause span), exact
and word-overlap, as :mod:`cattune.annotators.quality` defines them.

    python benchmarks/mawps_agreement.py [--data DIR] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

from cattune.annotators.prior import PriorAnnotator
from cattune.annotators.quality import evaluate
from cattune.pipeline.aggregate import Source, aggregate
from cattune.pipeline.convert import convert_source
from cattune.pipeline.review import AGREEMENT_KEY
from cattune.schemas import AnnotatedExample

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cat-reference"


def sources(data: Path) -> list[Source]:
    glm = convert_source(data / "MAWPS" / "mawps_train.jsonl").records
    gpt4o = convert_source(data / "MAWPS" / "mawps_train_gpt4o.jsonl").records
    rows = list({row.id: row for row in glm}.values())
    prior = [
        result
        if isinstance(result, AnnotatedExample)
        else AnnotatedExample(**result.model_dump(exclude={"error", "raw_output", "retryable"}))
        for result in PriorAnnotator("math-word-problems").annotate(rows)
    ]
    return [
        Source(name="GLM-4", rows=rows),
        Source(name="GPT-4o", rows=list({row.id: row for row in gpt4o}.values())),
        Source(name="Prior", rows=prior),
    ]


def report(data: Path) -> dict[str, object]:
    found = sources(data)
    pairwise = []
    for a, b in combinations(found, 2):
        score = evaluate(a.rows, b.rows)
        pairwise.append(
            {"a": a.name, "b": b.name, "exact_f1": score.exact.f1, "overlap_f1": score.overlap.f1}
        )
    vote = aggregate(found)
    against = []
    for reference in found:
        score = evaluate(vote, reference.rows)
        others = [s for s in found if s is not reference]
        held_out = evaluate(aggregate(others), reference.rows)
        against.append(
            {
                "reference": reference.name,
                "vote_exact": score.exact,
                "vote_overlap_f1": score.overlap.f1,
                "others_vote_exact_f1": held_out.exact.f1,
                "others_vote_overlap_f1": held_out.overlap.f1,
            }
        )
    agreement = [float(row.meta.extra[AGREEMENT_KEY]) for row in vote]
    return {
        "rows": len(vote),
        "pairwise": pairwise,
        "vote_pairs": sum(len(c.causes) for row in vote for c in row.relations),
        "against": against,
        "rows_agreement_below_0.5": sum(a < 0.5 for a in agreement),
        "rows_agreement_below_0.25": sum(a < 0.25 for a in agreement),
        "mean_agreement": sum(agreement) / len(agreement),
    }


def markdown(result: dict[str, object]) -> str:
    lines = [
        f"MAWPS train, {result['rows']} rows. Pairwise agreement (pair F1, symmetric):",
        "",
        "| annotators | exact F1 | overlap F1 |",
        "|---|---:|---:|",
    ]
    for item in result["pairwise"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {item['a']} vs {item['b']} | {item['exact_f1']:.3f} | {item['overlap_f1']:.3f} |"
        )
    lines += [
        "",
        "Majority vote of the three (exact pairs), scored with each annotator as the reference; "
        "'others' is the vote of the two remaining annotators (both must agree):",
        "",
        "| reference | vote P | vote R | vote exact F1 | vote overlap F1 "
        "| others exact F1 | others overlap F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for item in result["against"]:  # type: ignore[attr-defined]
        exact = item["vote_exact"]
        lines.append(
            f"| {item['reference']} | {exact.precision:.3f} | {exact.recall:.3f} "
            f"| {exact.f1:.3f} | {item['vote_overlap_f1']:.3f} "
            f"| {item['others_vote_exact_f1']:.3f} | {item['others_vote_overlap_f1']:.3f} |"
        )
    lines += [
        "",
        f"Per-row agreement (mean pairwise exact F1): mean {result['mean_agreement']:.3f}; "
        f"{result['rows_agreement_below_0.5']} rows under 0.5, "
        f"{result['rows_agreement_below_0.25']} under 0.25. The vote keeps "
        f"{result['vote_pairs']} pairs.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the CAT reference data folder")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    result = report(args.data)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=lambda s: s.model_dump()))


if __name__ == "__main__":
    main()
