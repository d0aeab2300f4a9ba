"""The N4 correction benchmarks/mridir_bias_field.py uses (medp2p.io.itk.n4_corrected) removes a smooth multiplicative drift."""

from __future__ import annotations

import numpy as np

from medp2p.io.itk import n4_corrected
from medp2p.types import Volume


def test_n4_flattens_a_drift_along_z() -> None:
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(np.arange(48), np.arange(48), np.arange(24), indexing="ij")
    tissue = ((x - 24) ** 2 + (y - 24) ** 2) < 18**2
    clean = np.where(tissue, 100.0 + 5.0 * rng.standard_normal(tissue.shape), 2.0)
    drift = np.exp(0.5 * (z / 23.0 - 0.5))  # 1.65x from the bottom slice to the top
    mr = Volume(array=(clean * drift).astype(np.float32), affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    out = n4_corrected(mr, shrink=(2, 2, 1)).array

    def ratio(a: np.ndarray) -> float:
        return float(np.median(a[..., -4:][tissue[..., -4:]]) / np.median(a[..., :4][tissue[..., :4]]))

    assert ratio(mr.array) > 1.5
    assert abs(ratio(out) - 1.0) < 0.1
    assert out.shape == mr.shape and out.dtype == np.float32
