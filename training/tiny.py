"""Tiny local models for tests and smoke runs.

``--model tiny`` trains a small byte-level BPE tokenizer on the training text (exact round trip
from ids back to text, so generated answers compare as written), builds a randomly initialised
small Llama, and saves both as an ordinary Hugging Face model directory. From then on it is
loaded by the same code that loads a real checkpoint (:mod:`cattune.training.models`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cattune.schemas import (
    AnnotatedExample,
    Annotation,
    Meta,
    PhraseRelation,
    align,
    example_id,
)

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``; adds BOS in front of every encoding."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_tiny_model(
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Build and save a tiny Llama + tokenizer trained on ``texts``; returns the directory."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.info(
        "tiny model (%d layers, hidden %d, vocab %d) saved to %s",
        layers,
        hidden,
        len(tokenizer),
        out,
    )
    return out


def toy_rows(
    n: int, *, seed: int = 0, ood: bool = False, split: str = "train"
) -> list[AnnotatedExample]:
    """STG-like rows with gold relations, for smoke runs and tests (not the STG benchmark).

    Causes Smoking, Weight, Exercise decide the label; in IID rows the spurious Yellow fingers and
    Clothing size copy them, in OOD rows they are independent. Items are shuffled.
    """
    rng = random.Random(seed)
    annotation = Annotation(annotator="toy", annotator_version="1")
    rows = []
    for _ in range(n):
        smoking, weight, exercise = (rng.randint(1, 10) for _ in range(3))
        items = {
            "Smoking": smoking,
            "Weight": weight,
            "Exercise": exercise,
            "Yellow fingers": rng.randint(1, 15) if ood else int(1.5 * smoking),
            "Clothing size": rng.randint(1, 10) if ood else weight,
            "Room size": rng.randint(1, 10),
        }
        names = list(items)
        rng.shuffle(names)
        prompt = "Predict the risk. " + ", ".join(f"{k}: {items[k]}" for k in names) + " Answer: "
        label = "High Risk" if 1.2 * smoking + 0.7 * weight - exercise > 7.2 else "Low Risk"
        causes = [f"{k}: {items[k]}" for k in ("Smoking", "Weight", "Exercise")]
        relations = align(prompt + label, [PhraseRelation(effect=label, causes=causes)]).relations
        rows.append(
            AnnotatedExample(
                id=example_id(prompt, label),
                prompt=prompt,
                completion=label,
                meta=Meta(source="toy", split=split, label=label, ood=ood),
                relations=relations,
                annotation=annotation,
            )
        )
    return rows
