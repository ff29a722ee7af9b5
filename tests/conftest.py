"""Shared fixtures: the real data folder (skipped where absent) and small synthetic sets."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; skip where it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not available (only in the project checkout/CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic 2D dataset (manifest path), made once per test session."""
    from cytogen.synth.cells import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth") / "set"
    return write_synthetic_dataset(out, n_fields=8, shape=(128, 128), seed=3)
