"""Shared test fixtures.

Prefect settings must be in the environment before prefect is imported, hence at module level.
The Prefect test harness is session-wide and started only by tests that ask for it. Tests marked
``late`` run after all others: they wait for a server that CI builds in the background meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("cattune", deadline=None, max_examples=100)
settings.load_profile("cattune")

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DATA = REPO_ROOT.parent / "shared" / "data" / "cat-reference"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "late: runs after every other test (waits for a server built meanwhile)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move ``late`` tests to the end, keeping the order within both groups."""
    items.sort(key=lambda item: item.get_closest_marker("late") is not None)


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """The CAT authors' data files; the tests skip if the checkout lacks them."""
    if not REFERENCE_DATA.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DATA}")
    return REFERENCE_DATA


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (it takes ~25 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
