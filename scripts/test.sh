#!/usr/bin/env bash
# Runs the whole test suite (setting up ./.venv first if needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-demo
exec "${CATTUNE_VENV:-.venv}/bin/python" -m pytest "$@"
