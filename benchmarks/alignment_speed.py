"""Span -> token alignment: offset mapping (cattune) vs token-subsequence search (the reference).

cattune maps each character span to the tokens whose offsets overlap it (one vectorised lookup per
span). The CAT authors' code tokenizes every phrase on its own and searches for that id sequence
in the tokenized text. Both run on the authors' MAWPS GPT-4o annotations with the same BPE
tokenizer; the table gives rows/s and how many spans each approach finds.

    python benchmarks/alignment_speed.py [--file .../MAWPS/mawps_train_gpt4o.jsonl] [--repeats 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import machine, markdown_table, median_time

from cattune.pipeline.convert import convert_source
from cattune.schemas import AnnotatedExample
from cattune.training.data import encode_example
from cattune.training.tiny import build_tokenizer

DEFAULT_FILE = (
    Path(__file__).resolve().parents[2] / "shared/data/cat-reference/MAWPS/mawps_train_gpt4o.jsonl"
)


def subsequence_spans(tokenizer, row: AnnotatedExample) -> tuple[int, int]:
    """The reference approach: find each phrase's own token ids inside the text's token ids.

    Each phrase is tried as written and with a leading space (BPE tokens carry the space).
    Returns (spans looked up, spans found); a phrase whose tokens differ in context (a BPE merge
    across its boundary) is not found.
    """
    ids = tokenizer(row.text, add_special_tokens=False)["input_ids"]
    looked = found = 0
    for relation in row.relations:
        for span in (relation.effect, *relation.causes):
            looked += 1
            phrase = span.text(row.text)
            found += any(
                _contains(ids, tokenizer(variant, add_special_tokens=False)["input_ids"])
                for variant in (phrase, " " + phrase)
            )
    return looked, found


def _contains(ids: list[int], needle: list[int]) -> bool:
    width = len(needle)
    return any(ids[i : i + width] == needle for i in range(len(ids) - width + 1))


def offset_spans(tokenizer, row: AnnotatedExample) -> tuple[int, int]:
    encoded = encode_example(tokenizer, row)
    looked = sum(1 + len(r.causes) for r in row.relations)
    return looked, looked - encoded.dropped_spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = convert_source(args.file).records
    rows = [r for r in rows if r.relations]
    tokenizer = build_tokenizer(r.text for r in rows)
    results = {}
    for name, fn in (("token-subsequence search (reference)", subsequence_spans),
                     ("offset mapping (cattune)", offset_spans)):  # fmt: skip
        counts = [fn(tokenizer, row) for row in rows]
        seconds = median_time(lambda fn=fn: [fn(tokenizer, row) for row in rows], args.repeats)
        results[name] = (seconds, sum(c[0] for c in counts), sum(c[1] for c in counts))
    baseline = results["token-subsequence search (reference)"][0]
    print(f"Span -> token alignment on {args.file.name}: {len(rows)} rows, {machine()}\n")
    print(
        markdown_table(
            ["approach", "rows/s", "speed vs reference", "spans found"],
            [
                [name, f"{len(rows) / s:,.0f}", f"{baseline / s:.1f}x", f"{found}/{looked}"]
                for name, (s, looked, found) in results.items()
            ],
        )
    )


if __name__ == "__main__":
    main()
