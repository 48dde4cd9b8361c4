"""Shared fixtures: seeded data and the real tutorial volumes in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT.parent / "shared" / "data" / "tutorial"


@pytest.fixture(scope="session")
def tutorial_dir() -> Path:
    """The tutorial N5 containers; skip only when ../shared is absent (never otherwise)."""
    if not (ROOT.parent / "shared").exists():
        pytest.skip("../shared is absent beside the project root")
    assert TUTORIAL.exists(), f"../shared exists but {TUTORIAL} does not"
    return TUTORIAL
