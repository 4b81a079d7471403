"""Where cattune keeps its files on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def cattune_home() -> Path:
    """``$CATTUNE_HOME`` or ``~/.cattune``: the default store root, caches and run directories."""
    return Path(os.environ.get("CATTUNE_HOME") or Path.home() / ".cattune").expanduser()
