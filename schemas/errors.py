"""Errors a user can cause. The CLI prints their message on one line and exits with status 2."""

from __future__ import annotations


class CattuneError(Exception):
    """Base class for every error whose message tells the user what to do."""


class InputError(CattuneError):
    """A source file or record is unreadable or malformed."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = path or ""
        if path is not None and line is not None:
            where = f"{path}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line


class ConfigError(CattuneError):
    """A configuration value, prior pack or option is invalid."""


class EndpointError(CattuneError):
    """An LLM endpoint cannot be used (unreachable, refused the key, unknown model)."""


class StoreError(CattuneError):
    """The dataset store or a release is missing, corrupt, or was changed on disk."""
