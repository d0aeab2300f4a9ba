"""Shared fixtures: tiny volumes built in tmp_path, the phantom, and the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medp2p.data import PhantomSpec, write_phantom

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDP2P_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
#: The grid tests use: tiny, anisotropic, so a transposed axis cannot hide.
TINY = PhantomSpec(shape=(32, 28, 8), spacing_mm=(6.0, 7.0, 20.0))


def shared(*parts: str) -> Path:
    """A path under the real-data folder; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set MEDP2P_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny phantom cases in the SynthRAD layout (read-only by convention)."""
    out = tmp_path_factory.mktemp("phantom") / "data"
    write_phantom(out, cases=3, seed=7, spec=TINY)
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
