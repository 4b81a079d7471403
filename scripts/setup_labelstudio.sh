#!/usr/bin/env bash
# Sets up Label Studio in its own virtual environment (./.venv-labelstudio by default): its Django
# pins clash with Prefect's. Idempotent (reinstalls only when this script or its constraints change)
# and safe to run twice at once (the second waits for the first).
# Prints the path of the label-studio executable on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${CATTUNE_LABELSTUDIO_VENV:-.venv-labelstudio}"
constraints="scripts/labelstudio-constraints.txt"
stamp="$VENV/.cattune-installed"

# One install at a time: CI starts this script in the background and the test calls it again.
exec 9>"$VENV.lock"
flock 9
want="$(cat scripts/setup_labelstudio.sh "$constraints" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet -c "$constraints" label-studio
    # A migrated database to copy into each test server's data directory: migrating takes
    # minutes, and `label-studio start` skips it when the database is up to date.
    rm -rf "$VENV/template"
    manage="$("$VENV/bin/python" -c 'import label_studio, os; print(os.path.dirname(label_studio.__file__))')/manage.py"
    LABEL_STUDIO_BASE_DATA_DIR="$VENV/template" LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false \
        "$VENV/bin/python" "$manage" migrate --no-color -v 0 1>&2
    rm -f "$VENV/template/.env"
    echo "$want" > "$stamp"
fi
echo "$VENV/bin/label-studio"
