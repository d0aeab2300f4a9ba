"""Trivial baselines a model has to beat, scored by the same ``evaluate``.

For MR -> CT the body's mean HU and a 1D intensity lookup (also the MR contrast synthesis one);
for tumour masks one FLAIR threshold; for inpainting the mean of the surrounding tissue.

The lookup maps each voxel's normalised MR intensity (the same robust percentile window the
models use) to the median training HU of that intensity, fitted inside the body. It cannot tell
bone from air when both are dark on the MR, which is exactly what a model must learn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from medp2p.data.intensity import body_mask, mr_window
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


@dataclass
class ThresholdSegmenter:
    """The trivial tumour baseline: voxels brighter than one threshold of the normalised MR (e.g. FLAIR).

    The threshold is the one that maximises the pooled Dice over the training cases (bright
    FLAIR is what whole-tumour masks mostly are); normalisation is the models' robust body
    percentile window, so the threshold transfers between scans.

    Example:
        >>> seg = ThresholdSegmenter.fit([(flair, label, None)])
        >>> mask = seg.predict(test_flair)
    """

    threshold: float
    percentiles: tuple[float, float] = (0.5, 99.5)

    @classmethod
    def fit(
        cls, cases: Iterable[tuple[Volume, Volume, np.ndarray | None]], percentiles: tuple[float, float] = (0.5, 99.5), bins: int = 512
    ) -> ThresholdSegmenter:
        """Fit on ``(image, label, region or None)``: the threshold with the best pooled Dice of ``label > 0``."""
        edges = np.linspace(-1.0, 1.5, bins + 1)  # mr_window's output range
        positive, predicted, truth = np.zeros(bins), np.zeros(bins), 0.0
        for image, label, region in cases:
            if image.shape != label.shape:
                raise ValueError(f"{label.path}: label shape {label.shape} != image shape {image.shape}")
            x = mr_window(image.array, percentiles=percentiles).forward(image.array)
            inside = np.ones(image.shape, bool) if region is None else np.asarray(region) > 0
            tumour = (label.array > 0) & inside
            positive += np.histogram(x[tumour], edges)[0]
            predicted += np.histogram(x[inside], edges)[0]
            truth += tumour.sum()
        if truth == 0:
            raise ValueError("no tumour voxel in the training labels")
        # predicting x >= edges[i] keeps the voxels of bins i..end
        tp, pred = np.cumsum(positive[::-1])[::-1], np.cumsum(predicted[::-1])[::-1]
        dice = 2 * tp / np.maximum(pred + truth, 1)
        return cls(float(edges[int(np.argmax(dice))]), percentiles)

    def predict(self, image: Volume, region: np.ndarray | None = None) -> Volume:
        """0/1 mask of ``image`` (within ``region`` when given), on its grid."""
        x = mr_window(image.array, percentiles=self.percentiles).forward(image.array)
        mask = x >= self.threshold
        if region is not None:
            mask &= np.asarray(region) > 0
        return image.with_array(mask.astype(np.uint8))


def mean_fill(voided: Volume, region: np.ndarray) -> Volume:
    """The trivial inpainting baseline: the region filled with the mean of the body outside it."""
    inside = np.asarray(region) > 0
    around = body_mask(voided.array) & ~inside
    fill = float(voided.array[around].mean()) if around.any() else 0.0
    return voided.with_array(np.where(inside, fill, voided.array).astype(np.float32))
