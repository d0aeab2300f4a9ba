"""SSIM in slabs (medp2p.metrics.ssim): scikit-image's map, a slab's memory, the whole volume's result."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from skimage.metrics import structural_similarity
from skimage.util import crop

from medp2p.data.phantom import PhantomSpec, make_phantom_case
from medp2p.metrics.ssim import Window, masked_ssim_mean, ssim_map
from medp2p.metrics.synthesis import ssim_hu

rng = np.random.default_rng(7)
A = rng.random((23, 19, 17))
B = A + 0.3 * rng.random(A.shape)
M = rng.random(A.shape) > 0.3


@pytest.mark.parametrize(
    ("window", "kwargs"),
    [
        (Window(), {"win_size": 7}),
        (Window(size=5, sample_covariance=False), {"win_size": 5, "use_sample_covariance": False}),
        (Window(sigma=1.5, sample_covariance=False), {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}),
        (
            Window(sigma=1.5, sample_covariance=False, axes=(1, 2)),
            {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "channel_axis": 0},
        ),
    ],
)
def test_the_map_is_scikit_images(window: Window, kwargs: dict) -> None:
    _, expected = structural_similarity(A, B, data_range=1.3, full=True, **kwargs)
    np.testing.assert_allclose(ssim_map(A, B, 1.3, window), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("window", [Window(), Window(sigma=1.5, sample_covariance=False), Window(sigma=1.0, axes=(1, 2))])
def test_a_slab_with_its_halo_holds_the_whole_volumes_values_to_the_bit(window: Window) -> None:
    whole = ssim_map(A, B, 1.3, window)
    r = window.radius
    for start, stop in ((0, 4), (5, 9), (9, 10), (19, 23)):
        lo, hi = max(0, start - r), min(len(A), stop + r)
        part = ssim_map(A[lo:hi], B[lo:hi], 1.3, window)[start - lo : stop - lo]
        assert np.array_equal(part, whole[start:stop])


@pytest.mark.parametrize("window", [Window(), Window(sigma=1.5, sample_covariance=False)])
def test_the_masked_mean_does_not_depend_on_the_slab(window: Window) -> None:
    def rows(x: np.ndarray):  # noqa: ANN202
        return lambda a, b: x[a:b]

    expected = ssim_map(A, B, 1.3, window)[M].mean()
    for slab in (1, 2, 5, 16, 23, 100):
        got = masked_ssim_mean(rows(A), rows(B), rows(M), len(A), 1.3, window, slab)
        assert got == pytest.approx(expected, abs=1e-13)  # the map is exact; only the sum's order differs
    assert np.isnan(masked_ssim_mean(rows(A), rows(B), rows(np.zeros_like(M)), len(A), 1.3, window))
    with pytest.raises(ValueError, match="odd"):
        masked_ssim_mean(rows(A), rows(B), rows(M), len(A), 1.3, Window(size=6))


def _skimage_ssim_hu(ct: np.ndarray, sct: np.ndarray, m: np.ndarray) -> float:
    """SynthRAD2023's SSIM as their image_metrics.py computes it, on the whole volume at once."""
    ref = np.where(m, np.clip(ct.astype(np.float64), -1024, 3000), -1024) + 1024
    pred = np.where(m, np.clip(sct.astype(np.float64), -1024, 3000), -1024) + 1024
    _, smap = structural_similarity(ref, pred, data_range=4024, full=True)
    return float(crop(smap, 3)[crop(m, 3)].mean(dtype=np.float64))


def test_synthrad_ssim_on_a_phantom_case_matches_the_whole_volume_computation() -> None:
    case = make_phantom_case(0, 0, PhantomSpec((48, 40, 36), (4.0, 4.0, 5.0)))
    ct, m = case["ct"].array, case["mask"].array > 0
    sct = ct + np.random.default_rng(0).normal(0, 60, ct.shape).astype(np.float32)
    assert ssim_hu(ct, sct, m) == pytest.approx(_skimage_ssim_hu(ct, sct, m), abs=1e-12)
    full = np.ones(ct.shape, bool)
    assert ssim_hu(ct, sct, None) == pytest.approx(structural_similarity(
        np.clip(ct.astype(np.float64), -1024, 3000) + 1024, np.clip(sct.astype(np.float64), -1024, 3000) + 1024, data_range=4024
    ), abs=1e-12)  # fmt: skip
    assert ssim_hu(ct, sct, full) == pytest.approx(ssim_hu(ct, sct, None), abs=1e-12)


def test_slab_ssim_holds_a_fraction_of_scikit_images_memory() -> None:
    shape = (128, 96, 96)
    ct = np.random.default_rng(1).normal(0, 300, shape).astype(np.float32)
    sct, m = ct + 50, np.ones(shape, bool)
    voxels = ct.size

    def peak(fn) -> float:  # noqa: ANN001
        tracemalloc.start()
        fn()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top / voxels

    ours, theirs = peak(lambda: ssim_hu(ct, sct, m)), peak(lambda: _skimage_ssim_hu(ct, sct, m))
    assert theirs > 100 and ours < 30, (ours, theirs)  # bytes per voxel (measured: 25 against 128)


def test_evaluate_with_workers_gives_the_rows_a_single_process_gives(tiny_phantom, tmp_path) -> None:  # noqa: ANN001
    import shutil

    from medp2p.eval import evaluate
    from medp2p.io import read_volume, write_nifti

    pred = tmp_path / "pred"
    for case in ("case_000", "case_001", "case_002"):
        ct = read_volume(tiny_phantom / case / "ct.nii.gz")
        (pred / case).mkdir(parents=True)
        write_nifti(ct.with_array(ct.array + 40.0), pred / case / "sct.nii.gz")
    shutil.rmtree(pred / "case_002")
    (pred / "case_002").mkdir()
    (pred / "case_002" / "sct.nii.gz").write_bytes(b"not a nifti")  # one bad case: reported, the rest finish
    one = evaluate("mri2ct", pred, tiny_phantom, tmp_path / "r1", montages=False)
    two = evaluate("mri2ct", pred, tiny_phantom, tmp_path / "r2", montages=True, workers=2)
    assert [r["case"] for r in two.rows] == [r["case"] for r in one.rows] == ["case_000", "case_001"]
    assert json.dumps(two.rows) == json.dumps(one.rows)  # NaN (no air in the body) included
    assert [f["case"] for f in two.failures] == ["case_002"]
    assert sorted(p.name for p in (tmp_path / "r2").glob("*.png")) == ["case_000.png", "case_001.png"]
