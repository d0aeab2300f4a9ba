"""The calibration plot of one case: sparsification curves and the error by uncertainty decile, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medp2p.metrics.uncertainty import FRACTIONS, error_by_decile, sparsification_curves
from medp2p.viz.panels import save_figure


def save_calibration_plot(path: str | Path, uncertainty: np.ndarray, error: np.ndarray, mask: np.ndarray, title: str = "") -> Path:
    """Two panels, atomically: the sparsification curves (by uncertainty, the oracle, random) and the mean error per uncertainty decile.

    Example:
        >>> save_calibration_plot("report/case_000_uncertainty.png", std, np.abs(sct - ct), body)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = mask > 0
    u, e = np.asarray(uncertainty, np.float64)[keep], np.abs(np.asarray(error, np.float64)[keep])
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    if u.size >= 2:
        ours, oracle = sparsification_curves(u, e)
        axes[0].plot(FRACTIONS, ours, label="removing the most uncertain first")
        axes[0].plot(FRACTIONS, oracle, label="oracle: largest errors first")
        axes[0].axhline(1.0, color="gray", linewidth=0.8, linestyle="--", label="random (expected)")
        axes[0].fill_between(FRACTIONS, oracle, ours, color="tab:blue", alpha=0.15)
        mean_u, mean_e = error_by_decile(u, e)
        axes[1].bar(np.arange(1, 11), mean_e, color="tab:orange")
        axes[1].set_xticks(np.arange(1, 11), [f"{v:.3g}" for v in mean_u], rotation=60, fontsize=7)
    axes[0].set_xlabel("fraction of voxels removed")
    axes[0].set_ylabel("mean error left / mean error")
    axes[0].set_title("sparsification (shaded: AUSE)", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("uncertainty decile (its mean uncertainty)")
    axes[1].set_ylabel("mean |error|")
    axes[1].set_title("error by uncertainty decile", fontsize=9)
    return save_figure(fig, path, title)
