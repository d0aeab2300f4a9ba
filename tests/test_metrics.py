"""Metrics agree with straightforward numpy computations of the challenge definitions (1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from medp2p.metrics import dice, hd95_mm, inpainting_metrics, mae_hu, psnr_hu, ssim_hu, synthrad_metrics, tissue_mae_hu

K1, K2 = 0.01, 0.03


def _ssim_map(x: np.ndarray, y: np.ndarray, weights: np.ndarray, data_range: float, sample: bool) -> np.ndarray:
    """SSIM of every window that fits: weighted local statistics written out by hand."""
    n = weights.ndim
    wx = sliding_window_view(x, weights.shape)
    wy = sliding_window_view(y, weights.shape)
    axes = tuple(range(-n, 0))
    mx = (wx * weights).sum(axes)
    my = (wy * weights).sum(axes)
    vx = (wx**2 * weights).sum(axes) - mx**2
    vy = (wy**2 * weights).sum(axes) - my**2
    cxy = (wx * wy * weights).sum(axes) - mx * my
    if sample:  # scikit-image's default for the uniform window: unbiased (co)variances
        npix = weights.size
        vx, vy, cxy = (v * npix / (npix - 1) for v in (vx, vy, cxy))
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def synthrad_reference(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    m = mask > 0
    mae = np.abs(ct[m] - sct[m]).mean()
    a, b = np.clip(ct, -1024, 3000), np.clip(sct, -1024, 3000)
    mse = ((a[m] - b[m]) ** 2).mean()
    psnr = 10 * np.log10(4024.0**2 / mse)
    a = np.where(m, a, -1024) + 1024
    b = np.where(m, b, -1024) + 1024
    smap = _ssim_map(a, b, np.full((7, 7, 7), 1 / 343), 4024.0, sample=True)  # the interior: voxels >= 3 from a border
    ssim = smap[m[3:-3, 3:-3, 3:-3]].mean()
    return {"mae": mae, "psnr": psnr, "ssim": ssim}


def _gauss_kernel_2d(sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    t = np.arange(-radius, radius + 1)
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def brats_reference(ref: np.ndarray, pred: np.ndarray, voided: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    m = mask > 0
    lo, hi = np.percentile(voided, [0.5, 99.5])
    lo = max(lo, 0.0)
    r = (np.clip(np.where(m, ref, 0), lo, hi) - lo) / (hi - lo)
    p = (np.clip(np.where(m, pred, 0), lo, hi) - lo) / (hi - lo)
    data_range = max(r.max() - r.min(), p.max() - p.min())
    kernel = _gauss_kernel_2d()
    maps = np.stack([_ssim_map(r[i], p[i], kernel, data_range, sample=False) for i in range(r.shape[0])])
    ssim = maps[m[:, 5:-5, 5:-5]].mean()
    mse = ((r[m] - p[m]) ** 2).mean()
    psnr = 10 * np.log10((r[m].max() - r[m].min()) ** 2 / mse)
    return {"ssim": ssim, "psnr": psnr, "mse": mse}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthrad_metrics_match_the_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (20, 22, 18)
    ct = ndimage.gaussian_filter(rng.uniform(-1200, 3200, shape), 1.0)
    sct = ct + rng.normal(0, 150, shape)
    sct[0, 0, 0] = 5000  # outside the clip range
    mask = np.zeros(shape, bool)
    mask[4:16, 5:17, 3:15] = True  # inside the interior, so the border crop loses nothing of it
    ours = synthrad_metrics(ct, sct, mask)
    ref = synthrad_reference(ct, sct, mask)
    for key in ("mae", "psnr", "ssim"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-4), key


def test_tissue_mae_classes() -> None:
    ct = np.array([-1000.0, -600, -100, 50, 400, 1200]).reshape(1, 2, 3)
    sct = ct + np.array([10.0, 20, 30, 40, 50, 60]).reshape(1, 2, 3)
    out = tissue_mae_hu(ct, sct, np.ones(ct.shape))
    assert out == {"mae_air": 15.0, "mae_soft_tissue": 35.0, "mae_bone": 55.0}
    assert np.isnan(tissue_mae_hu(ct[:, :1, :1], sct[:, :1, :1])["mae_bone"])
    assert mae_hu(ct, sct) == 35.0
    assert psnr_hu(ct, ct + 100) == pytest.approx(20 * np.log10(4024 / 100))  # in range: no clipping


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inpainting_metrics_match_brats(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (6, 30, 28)
    ref = ndimage.gaussian_filter(rng.uniform(0, 1000, shape), 1.5)
    mask = np.zeros(shape, bool)
    mask[1:5, 9:20, 8:19] = True  # >= 5 voxels from the (Y, Z) borders
    voided = np.where(mask, 0, ref)
    pred = np.where(mask, ref + rng.normal(0, 40, shape), ref)
    ours = inpainting_metrics(ref, pred, voided, mask)
    expected = brats_reference(ref, pred, voided, mask)
    for key in ("ssim", "psnr", "mse"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-4), key


def test_ssim_of_identical_volumes_is_one() -> None:
    ct = np.random.default_rng(0).uniform(-1000, 1000, (12, 12, 12))
    mask = np.ones(ct.shape)
    assert ssim_hu(ct, ct, mask) == pytest.approx(1.0)
    assert inpainting_metrics(ct + 1000, ct + 1000, np.where(mask > 0, ct + 1000, 0), mask)["ssim"] == pytest.approx(1.0)


def _surface(m: np.ndarray) -> np.ndarray:
    return np.argwhere(m & ~ndimage.binary_erosion(m))


def _hd95_reference(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    sa, sb = _surface(a) * spacing, _surface(b) * spacing
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


@pytest.mark.parametrize("seed", [0, 1])
def test_dice_and_hd95_match_the_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.normal(size=(24, 20, 16)), 2.5) > 0.05
    b = ndimage.gaussian_filter(rng.normal(size=(24, 20, 16)), 2.5) > 0.05
    spacing = (0.8, 1.2, 2.5)
    assert dice(a, b) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
    assert hd95_mm(a, b, spacing) == pytest.approx(_hd95_reference(a, b, spacing), abs=1e-4)


def test_empty_mask_policy() -> None:
    empty, full = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    full[1:3, 1:3, 1:3] = True
    assert dice(empty, empty) == 1.0 and hd95_mm(empty, empty) == 0.0
    assert dice(empty, full) == 0.0
    assert hd95_mm(empty, full, (1.0, 2.0, 3.0)) == pytest.approx(np.linalg.norm([4, 10, 18]))
