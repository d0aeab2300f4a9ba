"""Trivial MR -> CT baselines a model has to beat: the body's mean HU, and a 1D intensity lookup.

The lookup maps each voxel's normalised MR intensity (the same robust percentile window the
models use) to the median training HU of that intensity, fitted inside the body. It cannot tell
bone from air when both are dark on the MR, which is exactly what a model must learn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from medp2p.data.intensity import mr_window
from medp2p.types import Volume


@dataclass
class IntensityLookup:
    """A fitted lookup: ``values[i]`` is the median HU of voxels whose normalised MR falls in bin ``i``.

    Example:
        >>> lookup = IntensityLookup.fit([(mr, ct, body)], bins=128)
        >>> sct = lookup.predict(test_mr)
    """

    edges: np.ndarray
    values: np.ndarray
    percentiles: tuple[float, float] = (0.5, 99.5)

    @classmethod
    def fit(
        cls, pairs: Iterable[tuple[Volume, Volume, np.ndarray | None]], bins: int = 128, percentiles: tuple[float, float] = (0.5, 99.5)
    ) -> IntensityLookup:
        """Fit on ``(mr, ct, body mask or None)`` triples; bins are quantiles of the training intensities."""
        xs, ys = [], []
        for mr, ct, body in pairs:
            if mr.shape != ct.shape:
                raise ValueError(f"{ct.path}: CT shape {ct.shape} != MR shape {mr.shape}")
            m = np.ones(mr.shape, bool) if body is None else np.asarray(body) > 0
            xs.append(mr_window(mr.array, percentiles=percentiles).forward(mr.array)[m])
            ys.append(ct.array[m])
        x, y = np.concatenate(xs), np.concatenate(ys)
        if x.size == 0:
            raise ValueError("no voxels to fit the lookup on (empty body masks?)")
        edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
        idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        values = np.array([np.median(y[idx == i]) if np.any(idx == i) else np.nan for i in range(len(edges) - 1)])
        filled = np.flatnonzero(np.isfinite(values))
        values = np.interp(np.arange(values.size), filled, values[filled])
        return cls(edges, values.astype(np.float32), percentiles)

    def predict(self, mr: Volume) -> Volume:
        """The lookup's synthetic CT (HU) for ``mr``, on its grid."""
        x = mr_window(mr.array, percentiles=self.percentiles).forward(mr.array)
        idx = np.clip(np.searchsorted(self.edges, x, side="right") - 1, 0, len(self.values) - 1)
        return mr.with_array(self.values[idx].astype(np.float32))


def mean_hu(pairs: Iterable[tuple[Volume, np.ndarray | None]]) -> float:
    """The mean HU inside the body of the training CTs: the constant every voxel is predicted as."""
    total, count = 0.0, 0
    for ct, body in pairs:
        m = np.ones(ct.shape, bool) if body is None else np.asarray(body) > 0
        total += float(ct.array[m].sum(dtype=np.float64))
        count += int(m.sum())
    return total / max(count, 1)
