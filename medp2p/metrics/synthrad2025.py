"""SynthRAD2025's image metrics for synthetic CT, as its evaluation code computes them.

Source: ``SynthRAD2025/evaluation`` ``image_metrics.py`` (commit 17cac47), ``ImageMetrics.score_patient``:

- voxels outside the mask are set to -1024 HU in both volumes;
- **MAE**: ``sum(|ct*mask - sct*mask|) / sum(mask)``: the mean over mask voxels, no clipping;
- **PSNR**: both clipped to [-1024, 3071] HU, data range 4095, over mask voxels;
- **MS-SSIM** (``ms_ssim``, the masked value): both clipped to [-1024, 3071], outside the mask
  -1024, shifted by +1024; every axis shorter than 97 voxels edge-padded to 97 (images and mask);
  five scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). At each scale a 7-voxel
  uniform window (sample covariance, scipy ``reflect`` borders), the luminance, contrast and
  structure terms each clipped at 0 (contrast from the clipped standard deviations, structure with
  ``C3 = C2 / 2``) and raised to the **scale's weight, the luminance term too**: their code sets
  ``luminance_weights`` to the scale weights because ``scale_weights`` is no longer None when it
  asks (a textbook MS-SSIM keeps luminance at the coarsest scale only). The map is averaged over
  the mask after a 3-voxel border crop; then the images are filtered with a 2x2x2 mean
  (``fftconvolve(..., mode="same")``: the first row of each axis sees a zero before it) and every
  second voxel is kept, the mask subsampled the same way. The result is the product of the five
  means, each clipped to [0, 1].

Their ranking then normalises each metric across teams; that needs every team's numbers and is
not a per-case metric. The segmentation and dose metrics of SynthRAD2025 need TotalSegmentator's
weights and a dose engine, which medp2p does not ship (nothing is downloaded at run time).

Every scale is computed slab by slab (:mod:`medp2p.metrics.ssim`); the first scale is never held
whole, so memory stays near the SynthRAD2023 SSIM's.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from medp2p.metrics.ssim import SLAB, Rows, Window, inner_box, masked_ssim_mean, window_filter
from medp2p.metrics.synthesis import mae_hu, psnr_hu, tissue_mae_hu

#: SynthRAD2025's HU range for PSNR and MS-SSIM (data range 4095).
SYNTHRAD2025_HU_RANGE = (-1024.0, 3071.0)
#: The five scale weights (Wang et al. 2003, eq. 7).
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: The weights a textbook MS-SSIM gives the luminance term (coarsest scale only), for comparison.
TEXTBOOK_LUMINANCE = (0.0, 0.0, 0.0, 0.0, 0.1333)
#: Every axis is padded to at least this many voxels (``target_size`` in their code).
MIN_SIZE = 97
_WINDOW = Window(size=7)
_CROP = 3


def _scale_map(x: np.ndarray, y: np.ndarray, data_range: float, window: Window, weight: float, luminance: float) -> np.ndarray:
    """One scale's map: clipped luminance, contrast and structure terms, each raised to its weight."""
    ux, uy = window_filter(x, window), window_filter(y, window)
    uxx, uyy, uxy = window_filter(x * x, window), window_filter(y * y, window), window_filter(x * y, window)
    cov_norm = window.n / (window.n - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    sx, sy = np.sqrt(np.clip(vx, 0, None)), np.sqrt(np.clip(vy, 0, None))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    c3 = c2 / 2
    lum = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
    con = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
    struct = np.clip((vxy + c3) / (sx * sy + c3), 0, None)
    out: np.ndarray = lum**luminance * con**weight * struct**weight
    return out


def _pad_widths(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(max((MIN_SIZE - n) // 2, 0), max(MIN_SIZE - n - (MIN_SIZE - n) // 2, 0)) for n in shape]


def _padded_rows(rows: Rows, shape: tuple[int, ...]) -> tuple[Rows, tuple[int, ...]]:
    """``rows`` of the volume edge-padded to at least :data:`MIN_SIZE` per axis, and the padded shape."""
    pads = _pad_widths(shape)
    padded = tuple(n + a + b for n, (a, b) in zip(shape, pads, strict=True))
    before = pads[0][0]

    def get(a: int, b: int) -> np.ndarray:
        idx = np.clip(np.arange(a, b) - before, 0, shape[0] - 1)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        block = rows(lo, hi)[idx - lo]
        return np.pad(block, [(0, 0), *pads[1:]], mode="edge") if any(sum(p) for p in pads[1:]) else block

    return get, padded


def _halve_axis(x: np.ndarray, axis: int, first_prev: np.ndarray | None = None) -> np.ndarray:
    """``fftconvolve`` with a 2-tap mean along ``axis`` (``same``: a zero before the first voxel), every second kept."""
    n = x.shape[axis]
    even = np.take(x, np.arange(0, n, 2), axis)
    prev = np.take(x, np.arange(-1, n - 1, 2), axis)
    first = [slice(None)] * x.ndim
    first[axis] = slice(0, 1)
    prev[tuple(first)] = 0.0 if first_prev is None else first_prev
    halved: np.ndarray = (even + prev) / 2
    return halved


def _halve(rows: Rows, shape: tuple[int, ...], slab: int) -> np.ndarray:
    """The next scale's image: a 2x2x2 mean (zero before every axis' first voxel), every second voxel, slab by slab."""
    parts = []
    step = slab + slab % 2
    for a in range(0, shape[0], step):
        b = min(shape[0], a + step)
        block = rows(a, b)
        prev = rows(a - 1, a) if a > 0 else None
        out = _halve_axis(block, 0, prev)
        parts.append(_halve_axis(_halve_axis(out, 1), 2))
    return np.concatenate(parts, axis=0)


def ms_ssim_synthrad2025(
    ct: np.ndarray,
    sct: np.ndarray,
    mask: np.ndarray,
    luminance_weights: tuple[float, ...] | None = None,
    slab: int = SLAB,
) -> float:
    """SynthRAD2025's masked MS-SSIM of a synthetic CT (see the module text).

    Args:
        ct: the reference CT in HU.
        sct: the synthetic CT.
        mask: where to score (the body).
        luminance_weights: the luminance exponents per scale; None: SynthRAD2025's (the scale
            weights). :data:`TEXTBOOK_LUMINANCE` gives the textbook MS-SSIM's.
        slab: slices per slab (the result does not depend on it).

    Example:
        >>> ms_ssim_synthrad2025(ct, sct, body)
        0.91
    """
    if ct.shape != sct.shape or ct.shape != mask.shape:
        raise ValueError(f"shapes differ: ct {ct.shape}, sct {sct.shape}, mask {mask.shape}")
    m = np.asarray(mask) > 0
    lo, hi = SYNTHRAD2025_HU_RANGE
    lum = SCALE_WEIGHTS if luminance_weights is None else luminance_weights

    def image(vol: np.ndarray) -> Rows:
        return lambda a, b: np.where(m[a:b], np.clip(vol[a:b].astype(np.float64), lo, hi), lo) - lo

    x, shape = _padded_rows(image(ct), ct.shape)
    y, _ = _padded_rows(image(sct), ct.shape)
    mk, _ = _padded_rows(lambda a, b: m[a:b], ct.shape)
    means = []
    for level, weight in enumerate(SCALE_WEIGHTS):
        fn = partial(_scale_map, weight=weight, luminance=lum[level])
        keep_shape = shape

        def weight_rows(a: int, b: int, mk: Rows = mk, keep_shape: tuple[int, ...] = keep_shape) -> np.ndarray:
            inside: np.ndarray = mk(a, b) & inner_box(keep_shape, _CROP, a, b)
            return inside

        means.append(masked_ssim_mean(x, y, weight_rows, shape[0], hi - lo, _WINDOW, slab, fn))
        if level + 1 < len(SCALE_WEIGHTS):
            nx, ny = _halve(x, shape, slab), _halve(y, shape, slab)
            nm = np.concatenate([mk(a, min(shape[0], a + slab)) for a in range(0, shape[0], slab)])[::2, ::2, ::2]
            x, y = _array_rows(nx), _array_rows(ny)
            mk, shape = _array_rows(nm), nx.shape
    return float(np.prod([np.clip(v, 0, 1) for v in means]))


def _array_rows(a: np.ndarray) -> Rows:
    return lambda s, e: a[s:e]


def synthrad2025_metrics(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE, PSNR and MS-SSIM of a synthetic CT as SynthRAD2025 scores it, plus medp2p's per-tissue MAE.

    Example:
        >>> synthrad2025_metrics(ct, sct, body)
        {'mae': 74.2, 'psnr': 29.0, 'ms_ssim': 0.91, 'mae_air': ..., 'mae_soft_tissue': ..., 'mae_bone': ...}
    """
    m = np.ones(ct.shape, bool) if mask is None else np.asarray(mask) > 0
    return {
        "mae": mae_hu(ct, sct, m),
        "psnr": psnr_hu(ct, sct, m, SYNTHRAD2025_HU_RANGE),
        "ms_ssim": ms_ssim_synthrad2025(ct, sct, m),
        **tissue_mae_hu(ct, sct, m),
    }
