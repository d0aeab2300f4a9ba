"""Does an uncertainty map mean anything: rank correlation with the error, the error where it is highest, sparsification.

Computed over the voxels a task scores (its mask), from the uncertainty map ``u`` and the
absolute error ``e = |prediction - reference|``:

- ``spearman``: Spearman's rank correlation of ``u`` and ``e`` (ties get their average rank, as
  ``scipy.stats.spearmanr`` ranks them).
- ``top10_error_ratio``: the mean error of the 10% most uncertain voxels over the mean error of
  all (``ceil(0.1 n)`` voxels, ties in ``u`` broken by voxel order).
- ``ause``: the area under the sparsification error curve (Ilg et al., "Uncertainty Estimates and
  Multi-Hypotheses Networks for Optical Flow", ECCV 2018): remove the fraction ``f`` of voxels
  with the highest uncertainty, take the mean error of the rest; do the same removing the
  largest errors first (the oracle); the sparsification error is the difference of the two
  curves, each divided by the mean error of all voxels, and AUSE its trapezoidal integral over
  ``f = 0, 0.01, ..., 0.99``. 0 is a perfect ranking; random uncertainty gives about the area
  between the flat curve and the oracle.

Example:
    >>> calibration_metrics(uncertainty, np.abs(sct - ct), body)
    {'spearman': 0.41, 'top10_error_ratio': 2.6, 'ause': 0.12}
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

#: The removed fractions the sparsification curves are evaluated at.
FRACTIONS = np.arange(100) / 100.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b) / den) if den > 0 else math.nan


def spearman(u: np.ndarray, e: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either is constant."""
    return _pearson(rankdata(u).astype(np.float64), rankdata(e).astype(np.float64))


def sparsification_curves(u: np.ndarray, e: np.ndarray, fractions: np.ndarray = FRACTIONS) -> tuple[np.ndarray, np.ndarray]:
    """Mean error of what is left after removing each fraction of voxels: by uncertainty, and by error (the oracle).

    Both curves are divided by the mean error of all voxels (1 at ``f = 0``).
    """
    n = e.size
    keep = n - np.floor(fractions * n).astype(np.int64)  # voxels left at each fraction (>= 1 for f < 1)
    total = float(e.sum(dtype=np.float64))
    mean_all = total / n if n else math.nan

    def curve(order: np.ndarray) -> np.ndarray:
        removed = np.concatenate([[0.0], np.cumsum(e[order], dtype=np.float64)])  # removed[k]: sum of the first k removed
        left: np.ndarray = (total - removed[n - keep]) / keep
        return left / mean_all if mean_all > 0 else np.full(fractions.shape, math.nan)

    by_uncertainty = np.argsort(-u, kind="stable")
    oracle = np.argsort(-e, kind="stable")
    return curve(by_uncertainty), curve(oracle)


def ause(u: np.ndarray, e: np.ndarray, fractions: np.ndarray = FRACTIONS) -> float:
    """Area under the sparsification error curve (normalised curves, trapezoids over ``fractions``)."""
    ours, oracle = sparsification_curves(u, e, fractions)
    return float(np.trapezoid(ours - oracle, fractions))


def top_error_ratio(u: np.ndarray, e: np.ndarray, top: float = 0.1) -> float:
    """Mean error of the ``top`` fraction most uncertain voxels over the mean error of all."""
    n = e.size
    k = max(1, math.ceil(top * n))
    chosen = np.argsort(-u, kind="stable")[:k]
    mean_all = float(e.mean(dtype=np.float64))
    return float(e[chosen].mean(dtype=np.float64)) / mean_all if mean_all > 0 else math.nan


def error_by_decile(u: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean uncertainty and mean error of each uncertainty decile (voxels ranked by ``u``, ten equal groups)."""
    order = np.argsort(u, kind="stable")
    groups = np.array_split(order, 10)
    return (
        np.array([u[g].mean() if g.size else math.nan for g in groups]),
        np.array([e[g].mean() if g.size else math.nan for g in groups]),
    )


def calibration_metrics(uncertainty: np.ndarray, error: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """``spearman``, ``top10_error_ratio`` and ``ause`` of an uncertainty map against the absolute error, inside ``mask``.

    Args:
        uncertainty: the uncertainty map (std, entropy), on the error's grid.
        error: the absolute error ``|prediction - reference|``.
        mask: the voxels to use (None: all).
    """
    if uncertainty.shape != error.shape:
        raise ValueError(f"uncertainty map {uncertainty.shape} and error {error.shape} are on different grids")
    keep = np.ones(error.shape, bool) if mask is None else mask > 0
    u = np.asarray(uncertainty, np.float64)[keep]
    e = np.abs(np.asarray(error, np.float64)[keep])
    if u.size < 2:
        return {"spearman": math.nan, "top10_error_ratio": math.nan, "ause": math.nan}
    return {"spearman": spearman(u, e), "top10_error_ratio": top_error_ratio(u, e), "ause": ause(u, e)}
