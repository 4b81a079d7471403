#!/usr/bin/env bash
# Sets up llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) in its own virtual
# environment (./.venv-llamacpp by default): it is a server the LLM annotator talks to over HTTP,
# not a dependency of cattune. pip builds llama.cpp from source (~13 min on 2 cores; pip's wheel
# cache keeps the built wheel, and its cache key ignores CMAKE_ARGS). The build is portable
# (GGML_NATIVE=OFF): a native build crashed with SIGILL on AMX instructions a VM advertised but
# trapped. Idempotent (reinstalls only when this script or its constraints change) and safe to run
# twice at once (the second waits for the first). Prints the environment's python on its last line:
#   PY -m llama_cpp.server --model FILE.gguf --model_alias NAME --host 127.0.0.1 --port 8080
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${CATTUNE_LLAMACPP_VENV:-.venv-llamacpp}"
constraints="scripts/llamacpp-constraints.txt"
stamp="$VENV/.cattune-installed"

# One install at a time: CI starts this script in the background and the test calls it again.
exec 9>"$VENV.lock"
flock 9
want="$(cat scripts/setup_llamacpp.sh "$constraints" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$VENV/bin/python" -m pip install --quiet -c "$constraints" "llama-cpp-python[server]"
    "$VENV/bin/python" -c "import llama_cpp, llama_cpp.server.app" 1>&2
    echo "$want" > "$stamp"
fi
echo "$VENV/bin/python"
