"""A SQLite cache of validated LLM replies, shared safely by several processes.

Keys identify everything that determines a reply (text, pack content hash, model, decoding
parameters, prompt template version). Each reply is committed as soon as it arrives (WAL mode), so
a killed run keeps what it paid for and a re-run over unchanged rows sends no request. Every
final reply is stored (accepted, partly accepted, unusable after the repair request); failures
that may pass on another try are not.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cattune.schemas import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    reply TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class CachedReply:
    reply: str
    attempts: int
    created_at: datetime


def cache_key(text: str, parts: Mapping[str, Any]) -> str:
    """Full sha256 of the text and the settings that shape the reply."""
    payload = json.dumps({"text": text, **parts}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ReplyCache:
    """Open with ``with ReplyCache(path) as cache:``; safe to share between processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(
                f"cannot use LLM cache file {self.path}: {error}; choose another path with "
                "--cache or remove the damaged file"
            ) from error

    def __enter__(self) -> ReplyCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedReply]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CachedReply] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, reply, attempts, created_at FROM replies WHERE key IN ({marks})",
                    chunk,
                )
                for key, reply, attempts, created_at in rows:
                    found[key] = CachedReply(reply, attempts, datetime.fromisoformat(created_at))
        return found

    def put(self, key: str, reply: str, attempts: int) -> None:
        """Store one final reply and commit at once."""
        created_at = datetime.now(UTC).isoformat()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies (key, reply, attempts, created_at) "
                "VALUES (?, ?, ?, ?)",
                (key, reply, attempts, created_at),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])
