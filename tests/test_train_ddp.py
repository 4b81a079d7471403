"""CAT training under torchrun: 2 CPU processes with gloo, a tiny model, a few steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cattune.schemas import AnnotatedExample, to_table
from cattune.training.tiny import build_tiny_model, toy_rows

# Each rank records what it trained: world size, steps, and a checksum of its final weights.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import cattune.training.trainer as trainer_module
    from cattune.flows.cli import main

    original = trainer_module.CATTrainer.train

    def train_and_record(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        record = {
            "rank": self.args.process_index,
            "world_size": self.args.world_size,
            "steps": self.state.global_step,
            "checksum": checksum,
            "ddp": type(self.model_wrapped).__name__,
            "ratio": [h["causal_ratio"] for h in self.state.log_history if "causal_ratio" in h],
        }
        out = os.path.join(sys.argv[2], f"rank{self.args.process_index}.json")
        with open(out, "w") as handle:
            json.dump(record, handle)
        return result

    trainer_module.CATTrainer.train = train_and_record
    sys.exit(main(["train", "--data", sys.argv[1], "--model", sys.argv[3], "--epochs", "3",
                   "--batch-size", "4", "--lr", "3e-3", "--logging-steps", "1",
                   "--out", sys.argv[2], "--quiet"]))
    """
)


@pytest.mark.slow
def test_two_process_ddp_training(tmp_path: Path) -> None:
    rows = toy_rows(32, seed=41)
    data = tmp_path / "rows.parquet"
    pq.write_table(to_table(rows, AnnotatedExample), data)
    model = build_tiny_model([r.prompt + r.completion for r in rows], tmp_path / "tiny")
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), str(data), str(out), str(model)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 for r in records)
    assert all(r["ddp"] == "DistributedDataParallel" for r in records)
    # 32 rows, 4 per process and step, 2 processes: 4 steps an epoch
    assert all(r["steps"] == 12 for r in records)
    assert records[0]["checksum"] == pytest.approx(records[1]["checksum"], rel=1e-6)
    assert records[0]["ratio"] and records[0]["ratio"][-1] > records[0]["ratio"][0]
    # logged means are gathered over both processes, so every rank logs the same figures
    assert records[0]["ratio"] == records[1]["ratio"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 12
    assert (out / "model" / "config.json").is_file()
