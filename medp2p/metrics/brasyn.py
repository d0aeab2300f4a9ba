"""MR contrast synthesis metrics as BraSyn scores them (BraTS missing-modality synthesis).

BraSyn's evaluation (``hongweilibran/BraSyn`` ``ssim.py``, commit 4d9af6d) clips each image to its
*own* 0.5th and 99.5th percentiles (lower bound at least 0) and scales it to [0, 1]; then, for the
tumour mask ``m`` (the segmentation, labels > 0) and for ``1 - m``, it multiplies both images by
the mask and runs torchmetrics' SSIM on the 5-D ``(1, 1, X, Y, Z)`` tensors: a 3D Gaussian window
(11 voxels, sigma 1.5, population variances, borders mirrored), data range the larger of the two
masked images' ranges. :func:`brasyn_metrics` returns ``ssim_tumor`` and ``ssim_non_tumor``.

What their code averages: it asks for ``return_full_image=True`` and then indexes the result with
the int64 0/1 mask. As published that cannot run (the result is a tuple; an int64 index selects
along the batch axis and fails for the value 1). The value torchmetrics itself reduces to, the
mean of the map cropped by the window radius (5 voxels at every border), is what medp2p reports:
each averaged over the whole cropped map, not over mask voxels, so voxels where both masked
images are 0 count as 1. docs/metrics.md has the details. Without a tumour mask medp2p splits by
the brain (or body) mask instead.

:func:`brasyn_brain_metrics` (definition ``brasyn-brain``) is medp2p's own variant with the same
normalisation: SSIM averaged over brain-mask voxels, PSNR and MSE over them. It is more
discriminative, so training validation uses it, and docs/results.md's mr2mr figures use it.
"""

from __future__ import annotations

import numpy as np

from medp2p.metrics.ssim import SLAB, TORCHMETRICS_WINDOW, Rows, Window, inner_box, masked_ssim_mean, rows_ptp

#: The percentiles each image is clipped to before scaling to [0, 1].
BRASYN_PERCENTILES = (0.5, 99.5)


def own_percentile_scale(image: np.ndarray, percentiles: tuple[float, float] = BRASYN_PERCENTILES) -> np.ndarray:
    """``image`` clipped to its own percentiles (lower bound at least 0) and scaled to [0, 1].

    Example:
        >>> own_percentile_scale(np.array([0.0, 50.0, 100.0]), (0.0, 100.0)).tolist()
        [0.0, 0.5, 1.0]
    """
    return _scale_rows(image, *_own_bounds(image, percentiles))


def brasyn_metrics(reference: np.ndarray, prediction: np.ndarray, tumor: np.ndarray) -> dict[str, float]:
    """``ssim_tumor`` and ``ssim_non_tumor`` of a synthesised MR contrast, as BraSyn computes them.

    Args:
        reference: the true contrast ``(X, Y, Z)``.
        prediction: the synthesised one, on the same grid.
        tumor: the tumour segmentation (labels > 0 are tumour); or, without one, the brain mask.

    Example:
        >>> brasyn_metrics(t1c, synthetic_t1c, seg)
        {'ssim_tumor': 0.93, 'ssim_non_tumor': 0.81}
    """
    if reference.shape != prediction.shape or reference.shape != tumor.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, prediction {prediction.shape}, mask {tumor.shape}")
    m = np.asarray(tumor) > 0
    depth = reference.shape[0]
    ref_b, pred_b = _own_bounds(reference), _own_bounds(prediction)
    window = TORCHMETRICS_WINDOW
    radius = len(window.weights) // 2
    out = {}
    for name, inside in (("ssim_tumor", True), ("ssim_non_tumor", False)):

        def image(vol: np.ndarray, bounds: tuple[float, float], inside: bool = inside) -> Rows:
            return lambda a, b: _scale_rows(vol[a:b], *bounds) * (m[a:b] if inside else ~m[a:b])

        ref, pred = image(reference, ref_b), image(prediction, pred_b)
        data_range = max(rows_ptp(ref, depth), rows_ptp(pred, depth))
        out[name] = masked_ssim_mean(ref, pred, lambda a, b: inner_box(reference.shape, radius, a, b), depth, data_range or 1.0, window)
    return out


def brasyn_brain_metrics(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """SSIM, PSNR and MSE of a synthesised MR contrast inside ``mask``, BraSyn-normalised (medp2p's variant).

    Args:
        reference: the true contrast ``(X, Y, Z)``.
        prediction: the synthesised one, on the same grid.
        mask: where to score (the brain mask; BraSyn splits it into tumour and non-tumour).

    Example:
        >>> brasyn_brain_metrics(t2, synthetic_t2, brain)
        {'ssim': 0.91, 'psnr': 27.3, 'mse': 0.0019}
    """
    if reference.shape != prediction.shape or reference.shape != mask.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, prediction {prediction.shape}, mask {mask.shape}")
    m = np.asarray(mask) > 0
    if not m.any():
        raise ValueError("the scoring mask is empty")
    depth = reference.shape[0]

    def image(vol: np.ndarray) -> Rows:
        lo, hi = _own_bounds(vol)
        return lambda a, b: _scale_rows(vol[a:b], lo, hi) * m[a:b]

    ref, pred = image(reference), image(prediction)
    ranges = [rows_ptp(ref, depth), rows_ptp(pred, depth)]
    data_range = max(ranges) or 1.0
    smallest = min(reference.shape)
    sigma = 1.5 if smallest >= 11 else max(0.3, ((smallest - 1) // 2 - 0.5) / 3.5)
    window = Window(sigma=sigma, sample_covariance=False)
    ssim = masked_ssim_mean(ref, pred, lambda a, b: m[a:b], depth, data_range, window)
    sq, n = 0.0, 0
    for a in range(0, depth, SLAB):
        d = ref(a, a + SLAB)[m[a : a + SLAB]] - pred(a, a + SLAB)[m[a : a + SLAB]]
        sq, n = sq + float(np.dot(d, d)), n + d.size
    mse = sq / n
    return {"ssim": ssim, "psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"), "mse": mse}


def _own_bounds(image: np.ndarray, percentiles: tuple[float, float] = BRASYN_PERCENTILES) -> tuple[float, float]:
    lo, hi = np.percentile(image, percentiles)
    return max(float(lo), 0.0), float(hi)


def _scale_rows(rows: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(rows.shape, np.float64)
    scaled: np.ndarray = (np.clip(rows.astype(np.float64), lo, hi) - lo) / (hi - lo)
    return scaled
