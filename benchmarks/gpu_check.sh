#!/usr/bin/env bash
# The GPU check of the pretrained-model issue, for one H200 with no network, in two calls of the
# device tool (each carries at most 64 MiB; prepare both with benchmarks/gpu_prepare.sh):
#
#   bash benchmarks/gpu_check.sh timing   # carry .gpu/first: CAT step vs plain SDPA (flash)
#                                         # kernels, time and peak memory, T = 2048/4096/8192,
#                                         # bf16, a model of SmolLM2's shape (random weights)
#   bash benchmarks/gpu_check.sh stg      # carry .gpu/second, within 30 s of the first call (the
#                                         # machine keeps the first piece while warm): baseline
#                                         # vs CAT on STG with the real SmolLM2 weights, the CAT
#                                         # authors' settings (lr 1e-3, batch 16 x 4, 10 epochs)
#
# Figures go to $OUT (the device tool brings them back). About 3 + 4 minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SITE=/tmp/cattune-site
GGUF_DIR=/tmp/cattune-gguf
setup() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .gpu/first/wheels/*.whl 2>/dev/null || test -d "$SITE/pydantic"
    # cattune's contract and training package, importable without building it
    mkdir -p "$SITE/cattune"
    for folder in schemas training; do ln -sfn "$PWD/$folder" "$SITE/cattune/$folder"; done
    export PYTHONPATH="$SITE" CATTUNE_HOME=/tmp/cattune-home
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
}
case "${1:-}" in
timing)
    setup
    mkdir -p "$GGUF_DIR" && cp .gpu/first/model.part1 .gpu/first/model.sha256 "$GGUF_DIR/"
    cd benchmarks
    common=(--device cuda --bf16 --shape smollm2 --vocab 49152 --steps 5 --warmup 2 --memory-steps 2)
    python3 step_cost.py "${common[@]}" --seq-len 2048 4096 --configs sdpa efficient eager \
        --json "$OUT/step_cost_2k_4k.json" | tee "$OUT/step_cost.md"
    # eager keeps T x T maps of 30 layers for backward: left out at 8192
    python3 step_cost.py "${common[@]}" --seq-len 8192 --configs sdpa efficient \
        --json "$OUT/step_cost_8k.json" | tee -a "$OUT/step_cost.md"
    ;;
stg)
    setup
    cat "$GGUF_DIR/model.part1" .gpu/second/model.part2 > "$GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
    (cd "$GGUF_DIR" && sha256sum -c model.sha256)
    for mode in baseline cat; do
        python3 - "$mode" "$GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf" "$OUT" <<'PY'
import json
import sys

from cattune.training.config import parse_train_args
from cattune.training.run import train

mode, gguf, out = sys.argv[1:4]
data = ".gpu/first/data"
script, model, config = parse_train_args([
    "--model", gguf, "--mode", mode, "--lora_r", "16", "--lr", "1e-3", "--batch-size", "16",
    "--grad-accum", "4", "--epochs", "10", "--seed", "0", "--logging_steps", "5",
    "--data", f"{data}/train.parquet", "--eval_data", f"{data}/iid_test.parquet",
    f"{data}/ood_test.parquet", "--out", f"/tmp/run-{mode}", "--quiet",
])
metrics = train(script, model, config)
with open(f"{out}/stg_{mode}.json", "w") as handle:
    json.dump(metrics, handle, indent=2)
splits = metrics["eval"]["splits"]
print(mode, {k: round(v["accuracy"], 3) for k, v in splits.items()},
      "train s", round(metrics["train"]["train_runtime"], 1))
PY
    done
    ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh timing|stg" >&2
    exit 2
    ;;
esac
