#!/usr/bin/env bash
# Prepares, on this machine, what benchmarks/gpu_check.sh needs on the GPU machine (no network
# there): wheels of the packages its image lacks, generated STG data, and the embedded SmolLM2
# GGUF cut in two pieces (a call carries at most 64 MiB). Writes .gpu/ (ignored by git):
#   .gpu/first/   wheels, data, the first piece  -> carried by the first call ("timing")
#   .gpu/second/  the second piece               -> carried by the second call ("stg")
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${CATTUNE_VENV:-.venv}/bin/python"
rm -rf .gpu && mkdir -p .gpu/first/wheels .gpu/second
# The GPU image (Python 3.12) has torch, transformers, peft, accelerate, pyarrow, rich, numpy,
# pyyaml, tqdm, requests; cattune's contract also needs pydantic, and GGUF files need gguf.
versions=$("$PY" -m pip list --format=freeze 2>/dev/null \
    | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions|gguf)==')
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/first/wheels $versions
"$PY" -m cattune.flows.cli stg generate --variant stg --seed 0 --n-train 1600 --n-test 400 \
    --out .gpu/first/data > /dev/null
gguf=$("$PY" -c "from cattune.training.models import smollm2_gguf; print(smollm2_gguf())")
split -b 56m -d "$gguf" .gpu/piece.
mv .gpu/piece.00 .gpu/first/model.part1 && mv .gpu/piece.01 .gpu/second/model.part2
(cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") > .gpu/first/model.sha256
du -sh .gpu/first .gpu/second
