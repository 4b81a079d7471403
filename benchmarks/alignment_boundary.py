"""Word-boundary alignment on the CAT authors' files, and the pairs the mask's gap rule drops.

Table 1: every file of the reference data whose rows carry `important` is converted twice with
`convert_source`, with `boundary="none"` (substring anywhere, the reference behaviour) and with
`boundary="word"` (the default). A span is one stored effect or cause span of a relation (a cause
linked to two occurrences of its effect counts twice). "split a word" counts the spans of the
`none` conversion that start or end inside a word or a number (`cattune.schemas.is_boundary`).

Table 2: the `word` conversion tokenized with a byte-level BPE trained on the file
(`cattune.training.tiny.build_tokenizer`; like the Llama and Qwen tokenizers it attaches a space
to the word after it). It counts (cause, effect) token-span pairs with the cause before the effect
and those with q + c == p, which the authors' gap rule (q + c < p) leaves out of the mask.

    python benchmarks/alignment_boundary.py [--data ../shared/data/cat-reference]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import markdown_table

from cattune.pipeline.convert import convert_source
from cattune.schemas import AnnotatedExample, is_boundary
from cattune.training.data import char_span_to_tokens
from cattune.training.tiny import build_tokenizer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/cat-reference"


def spans(rows: list[AnnotatedExample]) -> list[tuple[str, int, int]]:
    """(text, start, end) of every stored effect and cause span."""
    return [
        (row.text, span.start, span.end)
        for row in rows
        for relation in row.relations
        for span in (relation.effect, *relation.causes)
    ]


def boundary_row(path: Path) -> list[object]:
    before = spans(convert_source(path, boundary="none").records)
    after = spans(convert_source(path).records)
    split = sum(not (is_boundary(t, s) and is_boundary(t, e)) for t, s, e in before)
    removed = len(before) - len(after)
    return [len(before), len(after), removed, f"{removed / len(before):.2%}", split]


def gap_row(path: Path) -> list[object]:
    rows = [row for row in convert_source(path).records if row.relations]
    tokenizer = build_tokenizer([row.text for row in rows])
    pairs = adjacent = 0
    for row in rows:
        encoded = tokenizer(row.text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = np.asarray(encoded["offset_mapping"])
        for relation in row.relations:
            effect = char_span_to_tokens(offsets, relation.effect.start, relation.effect.end)
            for cause in relation.causes:
                tokens = char_span_to_tokens(offsets, cause.start, cause.end)
                if effect is None or tokens is None or tokens[1] > effect[0]:
                    continue
                pairs += 1
                adjacent += tokens[1] == effect[0]
    return [pairs, adjacent, f"{adjacent / pairs:.1%}" if pairs else "-"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    files = [p for p in sorted(args.data.glob("*/*.jsonl")) if '"important"' in p.read_text()]
    if not files:
        parser.error(f"no files with `important` under {args.data}")
    names = [f"{path.parent.name}/{path.stem}" for path in files]
    header = ["file", "spans (none)", "spans (word)", "removed", "removed %", "split a word"]
    table = [[name, *boundary_row(path)] for name, path in zip(names, files, strict=True)]
    print(markdown_table(header, table))
    print()
    header = ["file", "cause-effect token pairs", "q + c == p (dropped)", "share"]
    print(markdown_table(header, [[n, *gap_row(p)] for n, p in zip(names, files, strict=True)]))


if __name__ == "__main__":
    main()
