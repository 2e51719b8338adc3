"""Shared fixtures. Test vectors are read in place from ../shared/vectors, never copied here."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VECTORS = PROJECT_ROOT.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(
            f"test vectors not found at {VECTORS}; the shared/ folder must sit beside the project"
        )
    return VECTORS
