"""Image-synthesis metrics exactly as the challenges define them (scikit-image implementations).

SynthRAD2023 (synthetic CT, https://github.com/SynthRAD2023/metrics ``image_metrics.py``):

- **MAE**: mean ``|ct - sct|`` over mask voxels, in HU, no clipping.
- **PSNR**: both volumes clipped to [-1024, 3000] HU, data range 4024, over mask voxels.
- **SSIM**: both clipped to [-1024, 3000], voxels outside the mask set to -1024, shifted by +1024;
  scikit-image's 3D SSIM map (7-voxel window) with data range 4024, cropped by 3 voxels at every
  border, averaged over the (cropped) mask.

BraTS-Inpainting 2023 (https://github.com/BraTS-inpainting/inpainting ``challenge_metrics_2023.py``):

- prediction and reference are multiplied by the inpainting mask, then clipped to the 0.5th and
  99.5th percentiles of the **voided input** (lower bound at least 0) and scaled to [0, 1];
- **SSIM**: Gaussian-window (sigma 1.5, 11x11) 2D SSIM of each ``(Y, Z)`` plane of the ``(X, Y, Z)``
  array (the challenge passes a ``[1, X, Y, Z]`` tensor to torchmetrics, which reads it as X
  channels of 2D images), data range the larger of the two images' ranges, averaged over mask
  voxels (planes thinner than 11 voxels use the widest Gaussian that fits). Borders are reflected
  as scikit-image does; torchmetrics reflects without repeating the
  edge voxel, which changes the map only within 5 voxels of the array border;
- **MSE** and **PSNR** over mask voxels, PSNR with the reference region's value range.

BraTS-Inpainting's deployed scorer (2023 and 2024; :func:`brats_inpainting_metrics`): the
Synapse evaluation ``Sage-Bionetworks-Challenges/brats2023`` ``evaluation/inpainting/score.py``
passes ``(1, 1, X, Y, Z)`` tensors to the 2023 challenge's ``evaluation_utils.compute_metrics``
(``BraTS-inpainting/2023_challenge`` ``evaluation/evaluation_utils.py``), which torchmetrics reads
as one 3D image:

- both images multiplied by the healthy mask, clipped to the 0.5th / 99.5th percentiles of the
  **ground truth outside the mask** (``t1n * ~mask`` over the whole array, zeros included; lower
  bound at least 0) and scaled to [0, 1];
- **SSIM**: torchmetrics' 3D SSIM (Gaussian 11x11x11, sigma 1.5, population variances, borders
  mirrored without repeating the edge voxel, data range the larger of the two images' ranges),
  the full map averaged over mask voxels;
- **MSE** over mask voxels and **PSNR** with data range 1 (``PSNR_01``, the one published).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

from medp2p.metrics.ssim import SLAB, TORCHMETRICS_WINDOW, Rows, Window, inner_box, masked_ssim_mean, rows_ptp

#: SynthRAD2023's HU range for PSNR and SSIM.
SYNTHRAD_HU_RANGE = (-1024.0, 3000.0)
#: Tissue classes for per-class MAE, by the reference CT's HU: [lo, hi).
TISSUE_HU = {"air": (-np.inf, -500.0), "soft_tissue": (-500.0, 300.0), "bone": (300.0, np.inf)}


def _binary(mask: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    if mask is None:
        return np.ones(like.shape, bool)
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {like.shape}")
    return np.asarray(mask) > 0


def _check(ref: np.ndarray, pred: np.ndarray) -> None:
    if ref.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")


def mae_hu(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD2023 MAE in HU over mask voxels (no clipping).

    Example:
        >>> mae_hu(ct.array, sct.array, body.array)
        74.2
    """
    _check(ct, sct)
    m = _binary(mask, ct)
    if not m.any():
        return float("nan")
    return float(np.abs(ct[m].astype(np.float64) - sct[m].astype(np.float64)).mean())


def tissue_mae_hu(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE per tissue class of :data:`TISSUE_HU` (by the reference HU), inside ``mask``; NaN for an absent class."""
    _check(ct, sct)
    m = _binary(mask, ct)
    return {f"mae_{name}": mae_hu(ct, sct, m & (ct >= lo) & (ct < hi)) for name, (lo, hi) in TISSUE_HU.items()}


def psnr_hu(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None, hu_range: tuple[float, float] = SYNTHRAD_HU_RANGE) -> float:
    """SynthRAD2023 PSNR: clipped to ``hu_range``, data range its width, over mask voxels."""
    _check(ct, sct)
    m = _binary(mask, ct)
    lo, hi = hu_range
    ref = np.clip(ct[m].astype(np.float64), lo, hi)
    pred = np.clip(sct[m].astype(np.float64), lo, hi)
    if np.array_equal(ref, pred):
        return float("inf")  # identical: no noise
    return float(peak_signal_noise_ratio(ref, pred, data_range=hi - lo))


def ssim_hu(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None, hu_range: tuple[float, float] = SYNTHRAD_HU_RANGE) -> float:
    """SynthRAD2023 SSIM: 3D SSIM map of the clipped, masked, shifted volumes, averaged over the mask.

    Computed in slabs (:mod:`medp2p.metrics.ssim`: scikit-image's map, a slab's memory). Volumes
    thinner than 7 voxels on an axis use the largest odd window that fits (SynthRAD's code would
    fail on them).
    """
    _check(ct, sct)
    m = _binary(mask, ct)
    lo, hi = hu_range
    win = min(7, *(s if s % 2 else s - 1 for s in ct.shape))
    if win < 3:
        raise ValueError(f"SSIM needs at least 3 voxels along every axis, got shape {ct.shape}")
    pad = (win - 1) // 2

    def image(vol: np.ndarray) -> Rows:
        return lambda a, b: np.where(m[a:b], np.clip(vol[a:b].astype(np.float64), lo, hi), lo) - lo

    def weight(a: int, b: int) -> np.ndarray:
        inside: np.ndarray = m[a:b] & inner_box(ct.shape, pad, a, b)
        return inside

    return masked_ssim_mean(image(ct), image(sct), weight, ct.shape[0], hi - lo, Window(size=win))


def synthrad_metrics(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE, PSNR, SSIM and per-tissue MAE of a synthetic CT, SynthRAD2023-style.

    Example:
        >>> synthrad_metrics(ct, sct, body)
        {'mae': 74.2, 'psnr': 29.1, 'ssim': 0.87, 'mae_air': ..., 'mae_soft_tissue': ..., 'mae_bone': ...}
    """
    return {
        "mae": mae_hu(ct, sct, mask),
        "psnr": psnr_hu(ct, sct, mask),
        "ssim": ssim_hu(ct, sct, mask),
        **tissue_mae_hu(ct, sct, mask),
    }


def percentile_normalize(image: np.ndarray, reference: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """BraTS-Inpainting normalisation: clip to ``reference``'s percentiles (lower bound >= 0), scale to [0, 1]."""
    return _scaled(image, *_percentiles(reference, percentiles))


def inpainting_metrics(reference: np.ndarray, prediction: np.ndarray, voided: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """SSIM, PSNR and MSE inside the inpainting ``mask``, as BraTS-Inpainting 2023 computes them.

    Args:
        reference: the true image (BraTS: ``t1n``), ``(X, Y, Z)``.
        prediction: the inpainted image.
        voided: the input the model saw (BraTS: ``t1n-voided``); gives the normalisation percentiles.
        mask: the inpainting region (BraTS: ``mask-healthy``).

    Example:
        >>> inpainting_metrics(t1n, inferred, voided, healthy_mask)
        {'ssim': 0.83, 'psnr': 21.5, 'mse': 0.007}
    """
    _check(reference, prediction)
    m = _binary(mask, reference)
    if not m.any():
        raise ValueError("the inpainting mask is empty")
    lo, hi = _percentiles(voided, (0.5, 99.5))

    def image(vol: np.ndarray) -> Rows:
        return lambda a, b: _scaled(np.where(m[a:b], vol[a:b], 0.0), lo, hi)

    ref, pred = image(reference), image(prediction)
    depth = reference.shape[0]
    data_range = max(rows_ptp(ref, depth), rows_ptp(pred, depth)) or 1.0
    # The challenge's window is 11 voxels (sigma 1.5, truncated at 3.5 sigma); planes thinner than
    # that get the widest Gaussian whose window fits, instead of failing.
    smallest = min(reference.shape[1:])
    sigma = 1.5 if smallest >= 11 else max(0.3, ((smallest - 1) // 2 - 0.5) / 3.5)
    window = Window(sigma=sigma, sample_covariance=False, axes=(1, 2))  # 2D SSIM of each plane along axis 0
    ssim = masked_ssim_mean(ref, pred, lambda a, b: m[a:b], depth, data_range, window)
    ref_m, pred_m = _masked_values(ref, m), _masked_values(pred, m)
    target_range = float(ref_m.max() - ref_m.min()) or 1.0
    mse = float(mean_squared_error(ref_m, pred_m))
    return {
        "ssim": ssim,
        "psnr": float(peak_signal_noise_ratio(ref_m, pred_m, data_range=target_range)) if mse > 0 else float("inf"),
        "mse": mse,
    }


def brats_inpainting_metrics(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """SSIM, PSNR and MSE inside the healthy ``mask`` as BraTS-Inpainting's deployed scorer computes them (3D).

    Args:
        reference: the true image (BraTS: ``t1n``), ``(X, Y, Z)``.
        prediction: the inpainted image.
        mask: the scored region (BraTS: ``mask-healthy``).

    Example:
        >>> brats_inpainting_metrics(t1n, inferred, healthy_mask)
        {'ssim': 0.86, 'psnr': 22.1, 'mse': 0.006}
    """
    _check(reference, prediction)
    m = _binary(mask, reference)
    if not m.any():
        raise ValueError("the inpainting mask is empty")
    lo, hi = _percentiles(np.where(m, 0.0, reference.astype(np.float32)), (0.5, 99.5))

    def image(vol: np.ndarray) -> Rows:
        return lambda a, b: _scaled(np.where(m[a:b], vol[a:b], 0.0), lo, hi)

    ref, pred = image(reference), image(prediction)
    depth = reference.shape[0]
    data_range = max(rows_ptp(ref, depth), rows_ptp(pred, depth)) or 1.0
    window = TORCHMETRICS_WINDOW
    ssim = masked_ssim_mean(ref, pred, lambda a, b: m[a:b], depth, data_range, window)
    ref_m, pred_m = _masked_values(ref, m), _masked_values(pred, m)
    mse = float(mean_squared_error(ref_m, pred_m))
    return {"ssim": ssim, "psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"), "mse": mse}


def _masked_values(rows: Rows, m: np.ndarray, slab: int = SLAB) -> np.ndarray:
    """The values ``rows`` gives at the mask's voxels, in C order, slab by slab."""
    return np.concatenate([rows(a, min(len(m), a + slab))[m[a : a + slab]] for a in range(0, len(m), slab)])


def inpainting_scaled(reference: np.ndarray, prediction: np.ndarray, bounds_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images clipped to ``bounds_image``'s 0.5/99.5 percentiles (lower at least 0) and scaled to [0, 1], float32.

    The normalisation both BraTS-Inpainting definitions apply before they score (the deployed
    scorer: the reference outside the healthy mask; the 2023 package: the voided input).

    Example:
        >>> ref, pred = inpainting_scaled(t1n, inferred, np.where(healthy, 0, t1n))
    """
    lo, hi = _percentiles(bounds_image, (0.5, 99.5))
    return _scaled(reference, lo, hi).astype(np.float32), _scaled(prediction, lo, hi).astype(np.float32)


def _percentiles(image: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """BraTS-Inpainting's normalisation bounds: ``image``'s percentiles, the lower one at least 0."""
    lo, hi = np.percentile(image, percentiles)
    lo = max(float(lo), 0.0)
    if hi <= lo:
        raise ValueError(f"cannot normalise: percentiles {percentiles} of the normalising image are {lo}..{hi}")
    return lo, float(hi)


def _scaled(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled: np.ndarray = (np.clip(image.astype(np.float64), lo, hi) - lo) / (hi - lo)
    return scaled
