"""Dataset names and references (``NAME``, ``NAME@3``, ``NAME@2026-11-22T10:00:00Z``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from cattune.schemas import ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Version = int | datetime | None


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe dataset name (one path segment, no traversal)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"invalid dataset name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', no '..')"
        )
    return name


def parse_version(text: str) -> int | datetime:
    """``"3"`` -> 3; an ISO-8601 timestamp -> an aware UTC datetime (naive means UTC)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"invalid dataset version {text!r}: give a version number (e.g. 3) "
            "or an ISO timestamp (e.g. 2026-11-22T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_ref(ref: str) -> tuple[str, Version]:
    """``"name@3"`` -> ("name", 3); ``"name"`` -> ("name", None) meaning the latest version."""
    name, sep, version = ref.partition("@")
    validate_name(name)
    if not sep:
        return name, None
    return name, parse_version(version)
