"""Shared test settings: where the shared reference files live, and small fixtures around them."""

from __future__ import annotations

from pathlib import Path

import pytest

# /work/shared next to the checkout: official key lists, reference facts, real detector weights and photos.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared folder; tests that need it are skipped where a checkout has none."""
    if not SHARED.is_dir():
        pytest.skip(f"shared reference folder not found: {SHARED}")
    return SHARED


@pytest.fixture
def shared_file(shared: Path):
    """Path of a file under shared/, skipping the test where it is absent."""

    def get(relative: str) -> Path:
        path = shared / relative
        if not path.is_file():
            pytest.skip(f"shared file not found: {path}")
        return path

    return get
