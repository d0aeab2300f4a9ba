"""SSIM maps computed slab by slab along the first axis: the memory of a slab, the result of the whole volume.

scikit-image's ``structural_similarity`` holds about a dozen float64 copies of the volume (160
bytes per voxel: 12 GB for a 512x512x300 CT). Here the same map (same formula, same filters,
same ``reflect`` borders) is computed for slabs of ``slab`` slices plus a halo of the filter's
radius on each side, and only its masked sum is kept. Each filtered value is a direct weighted
sum of its window (``scipy.ndimage.correlate1d``; the uniform window as equal weights, not
scipy's running sum), so a slab's values are the whole volume's to the last bit and the result
does not depend on ``slab`` (``tests/test_ssim_slabs.py``). Against scikit-image's own
whole-volume call the results agree to float64 rounding (1e-12).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Default slab thickness (slices along the first axis): about 25 float64 512x512 slabs per array.
SLAB = 16

#: ``(start, stop) -> array`` of those rows along the first axis, any dtype.
Rows = Callable[[int, int], np.ndarray]
#: ``(ref, pred, data_range, window) -> map``: a per-voxel similarity of two float64 arrays.
MapFn = Callable[[np.ndarray, np.ndarray, float, "Window"], np.ndarray]


@dataclass(frozen=True)
class Window:
    """The SSIM window: ``size`` voxels uniform (scikit-image's default), or a Gaussian of ``sigma``.

    ``sample_covariance``: scikit-image's ``use_sample_covariance`` (N / (N - 1) on the variances).
    ``axes``: the axes filtered (a 2D SSIM of each plane along axis 0 filters axes 1 and 2 only).
    ``mode``: the border rule, scipy's names: ``reflect`` repeats the edge voxel (scikit-image),
    ``mirror`` does not (torch's ``reflect`` padding, as torchmetrics pads).
    """

    size: int = 7
    sigma: float | None = None
    truncate: float = 3.5
    sample_covariance: bool = True
    axes: tuple[int, ...] = (0, 1, 2)
    mode: str = "reflect"

    @property
    def weights(self) -> np.ndarray:
        """The 1D filter taps."""
        if self.sigma is None:
            return np.full(self.size, 1.0 / self.size)
        radius = int(self.truncate * self.sigma + 0.5)
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        w: np.ndarray = np.exp(-0.5 / self.sigma**2 * x**2)
        taps: np.ndarray = w / w.sum()
        return taps

    @property
    def radius(self) -> int:
        """Half the window: the halo a slab needs along axis 0 (none when axis 0 is not filtered)."""
        return len(self.weights) // 2 if 0 in self.axes else 0

    @property
    def n(self) -> int:
        """Voxels in the window (scikit-image's ``NP``, for the sample-covariance factor)."""
        return int(len(self.weights) ** len(self.axes))


#: torchmetrics' default SSIM window: Gaussian 11 taps (sigma 1.5), population variances, borders
#: mirrored without repeating the edge voxel (torch's ``reflect`` padding). BraTS-Inpainting's
#: deployed scorer and BraSyn use it.
TORCHMETRICS_WINDOW = Window(sigma=1.5, sample_covariance=False, mode="mirror")


def window_filter(image: np.ndarray, window: Window) -> np.ndarray:
    """``image`` filtered with the window along its axes (direct weighted sums, ``window.mode`` borders)."""
    w = window.weights
    out = image
    for axis in window.axes:
        out = ndimage.correlate1d(out, w, axis=axis, mode=window.mode)
    return out


def ssim_map(
    ref: np.ndarray, pred: np.ndarray, data_range: float, window: Window = Window(), k1: float = 0.01, k2: float = 0.03
) -> np.ndarray:
    """scikit-image's SSIM map of two float64 arrays (``structural_similarity(..., full=True)[1]``)."""
    ux, uy = window_filter(ref, window), window_filter(pred, window)
    uxx, uyy, uxy = window_filter(ref * ref, window), window_filter(pred * pred, window), window_filter(ref * pred, window)
    cov_norm = window.n / (window.n - 1) if window.sample_covariance else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    a1, a2 = 2 * ux * uy + c1, 2 * vxy + c2
    b1, b2 = ux**2 + uy**2 + c1, vx + vy + c2
    result: np.ndarray = (a1 * a2) / (b1 * b2)
    return result


def masked_ssim_mean(
    ref: Rows,
    pred: Rows,
    weight: Rows,
    depth: int,
    data_range: float,
    window: Window = Window(),
    slab: int = SLAB,
    map_fn: MapFn | None = None,
) -> float:
    """The mean of the SSIM map over the voxels where ``weight`` is true, slab by slab.

    Args:
        ref: gives the float64 rows ``[start, stop)`` of the reference as SSIM sees it (clipped,
            masked, scaled: whatever the metric does voxel by voxel).
        pred: the same for the prediction.
        weight: gives the boolean rows of the averaging mask.
        depth: the images' size along the first axis.
        data_range: SSIM's data range.
        window: the filter.
        slab: slices per slab (the result does not depend on it).
        map_fn: the per-voxel map (default :func:`ssim_map`).

    Returns:
        The mean, or NaN when the mask is empty.
    """
    if window.sigma is None and window.size % 2 == 0:
        raise ValueError(f"the SSIM window must have an odd size, got {window.size}")
    r = window.radius
    total, count = 0.0, 0
    for start in range(0, depth, slab):
        stop = min(depth, start + slab)
        m = weight(start, stop)
        if not m.any():
            continue
        # a halo of real rows: the filter reflects at the slab's cut ends, which changes only the
        # rows within its radius of them (the halo, cut off again); the volume's own ends reflect
        # as in the whole-volume computation
        lo, hi = max(0, start - r), min(depth, stop + r)
        smap = (map_fn or ssim_map)(ref(lo, hi), pred(lo, hi), data_range, window)[start - lo : stop - lo]
        total += float(smap[m].sum(dtype=np.float64))
        count += int(m.sum())
    return total / count if count else float("nan")


def inner_box(shape: tuple[int, ...], pad: int, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of the box ``pad`` voxels inside every border (scikit-image's ``crop``).

    Example:
        >>> int(inner_box((5, 5, 5), 1, 0, 5).sum())
        27
    """
    box = np.zeros((stop - start, *shape[1:]), bool)
    rows = slice(max(pad - start, 0), max(min(shape[0] - pad, stop) - start, 0))
    box[tuple([rows, *[slice(pad, max(n - pad, pad)) for n in shape[1:]]])] = True
    return box


def rows_ptp(rows: Rows, depth: int, slab: int = SLAB) -> float:
    """``np.ptp`` of the whole image that ``rows`` gives, slab by slab."""
    lo, hi = np.inf, -np.inf
    for a in range(0, depth, slab):
        r = rows(a, min(depth, a + slab))
        lo, hi = min(lo, float(r.min())), max(hi, float(r.max()))
    return hi - lo
