"""Model space: slicing round trips exactly; the model affine is right; 2.5D context; intensity windows invert."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medp2p.data.geometry import (
    SLICE_AXES,
    canonical_orientation,
    context_indices,
    from_model_space,
    gather_slices,
    plan_grid,
    slab_bounds,
    slab_mask,
    to_model_space,
)
from medp2p.data.intensity import (
    HU_WINDOW,
    IntensityWindow,
    binary_closing_cross,
    body_mask,
    bounding_box,
    fill_holes_per_slice,
    mr_window,
)
from tests.test_io_volumes import AFFINES


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("axis", sorted(SLICE_AXES))
def test_slicing_round_trip_is_exact(rng: np.random.Generator, name: str, axis: str) -> None:
    array = rng.normal(size=(9, 7, 5)).astype(np.float32)
    grid = plan_grid(AFFINES[name], array.shape, axis=axis, size_multiple=4, min_size=(12, 10))
    stack = to_model_space(array, grid, pad_value=-1.0)
    assert tuple(stack.shape) == grid.model_shape
    assert stack.shape[1] % 4 == 0 and stack.shape[2] % 4 == 0 and stack.shape[1] >= 12
    np.testing.assert_array_equal(from_model_space(stack, grid), array)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_model_affine_points_at_the_same_voxel(rng: np.random.Generator, name: str) -> None:
    array = rng.normal(size=(9, 7, 5)).astype(np.float32)
    grid = plan_grid(AFFINES[name], array.shape, axis="axial", size_multiple=8)
    stack = to_model_space(array, grid).numpy()
    top, _, left, _ = grid.pad
    ph, pw = grid.plane_shape
    for d, h, w in [(0, top, left), (2, top + 3, left + 1), (4, top + ph - 1, left + pw - 1)]:
        (ijk,) = np.argwhere(array == stack[d, h, w])
        np.testing.assert_allclose(grid.affine @ [d, h, w, 1], AFFINES[name] @ [*ijk, 1], atol=1e-6)


def test_canonical_orientation_of_common_layouts() -> None:
    assert canonical_orientation(np.diag([1.0, 1, 1, 1])) == ((0, 1, 2), (False, False, False))
    assert canonical_orientation(np.diag([-1.0, -1, 1, 1])) == ((0, 1, 2), (True, True, False))
    sagittal = np.array([[0, 0, -1, 0], [1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])  # PIL-ish
    assert canonical_orientation(sagittal) == ((2, 0, 1), (True, False, True))


def test_inplane_resampling_keeps_the_field_of_view() -> None:
    affine = np.diag([0.5, 0.5, 2.5, 1.0])
    grid = plan_grid(affine, (512, 512, 10), spacing_mm=1.0, size_multiple=256)
    assert grid.model_shape == (10, 256, 256)
    np.testing.assert_allclose(np.linalg.norm(grid.affine[:3, :3], axis=0), [2.5, 1.0, 1.0])
    # the first resampled voxel's centre sits half a new voxel inside the old field of view
    np.testing.assert_allclose(grid.affine[:3, 3], [0.25, 0.25, 0.0])
    smooth = np.fromfunction(lambda x, y, z: np.sin(x / 40) + np.cos(y / 50) + z, (512, 512, 10)).astype(np.float32)
    back = from_model_space(to_model_space(smooth, grid), grid)
    assert np.abs(back - smooth)[8:-8, 8:-8].max() < 0.01


def test_context_and_gather() -> None:
    assert context_indices(3, 1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    stack = torch.arange(2 * 4 * 1 * 1, dtype=torch.float32).view(2, 4, 1, 1)  # 2 images, 4 slices
    x = gather_slices(stack, context_indices(4, 1)[1:2])
    assert x.flatten().tolist() == [0, 1, 2, 4, 5, 6]  # image-major: image 0's 3 slices, then image 1's


def test_hu_window_inverts_exactly() -> None:
    hu = np.arange(-1024, 3001, dtype=np.float32)
    back = HU_WINDOW.inverse(HU_WINDOW.forward(hu))
    np.testing.assert_allclose(back, hu, atol=1e-3)
    np.testing.assert_array_equal(np.round(back), hu)
    assert HU_WINDOW.forward(np.float32(-1024)) == -1 and HU_WINDOW.forward(np.float32(3000)) == 1
    assert HU_WINDOW.forward(np.float32(-3000)) == -1  # clipped to the window


def test_mr_window_uses_body_percentiles(rng: np.random.Generator) -> None:
    image = np.zeros((20, 20, 6), np.float32)
    image[4:16, 4:16] = rng.uniform(100, 200, (12, 12, 6))
    body = body_mask(image)
    assert body[10, 10, 3] and not body[0, 0, 0]
    win = mr_window(image)
    assert 100 <= win.lo < 102 and 198 < win.hi <= 200
    x = win.forward(image)
    assert x.min() == -1 and x[body].max() <= 1.5
    w = IntensityWindow(10.0, 30.0, clip=None)
    np.testing.assert_allclose(w.inverse(w.forward(np.array([0.0, 17.5, 99.0]))), [0.0, 17.5, 99.0], atol=1e-5)


@pytest.mark.parametrize("placement", ["whole", "inside", "at_edges"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_fill_holes_per_slice_matches_filling_each_slice(rng: np.random.Generator, axis: int, placement: str) -> None:
    from scipy import ndimage

    # rings and blobs: holes inside slices, holes open to the border, and empty slices
    mask = ndimage.binary_dilation(rng.random((23, 19, 11)) > 0.93, iterations=1) ^ (rng.random((23, 19, 11)) > 0.97)
    mask[:, :, 0] = False
    mask[5:15, 5:15, 3] = True
    mask[7:12, 7:12, 3] = False
    if placement != "whole":  # the labelling works on the mask's box: within a larger volume, or at its edges
        big = np.zeros((31, 27, 17), bool)
        big[(slice(3, 26), slice(5, 24), slice(2, 13)) if placement == "inside" else (slice(8, 31), slice(0, 19), slice(6, 17))] = mask
        mask = big
    expected = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)], axis=axis)
    assert (expected != mask).any()  # the case has holes to fill
    np.testing.assert_array_equal(fill_holes_per_slice(mask, axis), expected)
    empty = np.zeros((4, 5, 6), bool)
    assert not fill_holes_per_slice(empty, axis).any()


def test_bounding_box() -> None:
    mask = np.zeros((6, 7, 8), bool)
    assert bounding_box(mask) is None
    mask[1, 2:4, 7] = True
    mask[3, 5, 6] = True
    assert bounding_box(mask) == (slice(1, 4), slice(2, 6), slice(6, 8))
    assert bounding_box(mask, margin_axes=(0, 2)) == (slice(0, 5), slice(2, 6), slice(5, 8))  # within the array


@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 6, 6), (2, 9, 4), (30, 20, 10), (12, 11)])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_binary_closing_cross_is_scipys(rng: np.random.Generator, shape: tuple[int, ...], iterations: int) -> None:
    from scipy import ndimage

    for fraction in (0.3, 0.6, 0.9):  # sparse to dense: holes closed, borders eroded, thin dims emptied
        mask = rng.random(shape) < fraction
        expected = ndimage.binary_closing(mask, iterations=iterations, border_value=0)
        np.testing.assert_array_equal(binary_closing_cross(mask, iterations), expected)


def _body_mask_plainly(image: np.ndarray) -> np.ndarray:
    """body_mask written as the plain scikit-image / SciPy composition, copies and all."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    finite = np.isfinite(image)
    values = image[finite]
    fg = finite & (image > threshold_otsu(values))
    fg = ndimage.binary_closing(fg, iterations=2, border_value=0)
    labels, n = ndimage.label(fg)
    if n > 1:
        fg = labels == 1 + int(np.argmax(ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))))
    for axis in range(3):
        fg = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(fg, axis, 0)], axis=axis)
    return fg


@pytest.mark.parametrize("kind", ["float32", "fortran", "nonfinite", "int16", "float64"])
def test_body_mask_is_the_plain_composition(rng: np.random.Generator, kind: str, monkeypatch) -> None:
    from scipy import ndimage

    from medp2p.data import intensity

    # a noisy head with a dark hole, bright specks outside (many components) and a second blob
    z, y, x = np.mgrid[:24, :30, :28]
    image = 40 + 10 * rng.standard_normal((24, 30, 28))
    image[((z - 12) / 9) ** 2 + ((y - 15) / 11) ** 2 + ((x - 14) / 10) ** 2 < 1] += 120
    image[10:14, 13:17, 12:16] = 45
    image[rng.random(image.shape) > 0.995] = 300
    image[2:5, 2:5, 20:24] = 170
    if kind == "nonfinite":
        image[0, 0, :3] = [np.nan, np.inf, -np.inf]
        image[12, 15, 14] = np.nan
    if kind == "fortran":
        image = np.asfortranarray(image.astype(np.float32))
    elif kind == "int16":
        image = image.round().astype(np.int16)  # scikit-image's integer histogram (bincount) path
    elif kind != "float64":
        image = image.astype(np.float32)
    monkeypatch.setattr(intensity, "_LABEL_BLOCK", 100)  # component sizes counted over several slabs
    expected = _body_mask_plainly(image)
    assert 0.1 < expected.mean() < 0.9
    assert ndimage.label(expected)[1] == 1 < ndimage.label(image > 200)[1]  # the largest of several components
    np.testing.assert_array_equal(body_mask(image), expected)


def test_window_maps_block_by_block_exactly_as_one_float64_expression(rng: np.random.Generator, monkeypatch) -> None:
    from medp2p.data import intensity

    monkeypatch.setattr(intensity, "_BLOCK", 7)  # many blocks and a short last one
    x = np.asfortranarray(rng.normal(0, 2000, (5, 4, 3)).astype(np.float32))  # not C-contiguous
    win = IntensityWindow(-1024.0, 3000.0, clip=(-1.0, 1.0))
    expected = np.clip((x.astype(np.float64) + 1024.0) * (2.0 / 4024.0) - 1.0, -1.0, 1.0).astype(np.float32)
    y = win.forward(x)
    np.testing.assert_array_equal(y, expected)
    back = ((y.astype(np.float64) + 1.0) * 2012.0 - 1024.0).astype(np.float32)
    np.testing.assert_array_equal(win.inverse(y), back)
    inplace = y.copy()
    assert win.inverse(inplace, out=inplace) is inplace  # predict maps its output back in place
    np.testing.assert_array_equal(inplace, back)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        win.inverse(x, out=x)  # Fortran order: a flat view would be a copy
    assert win.forward(np.float32(40.0)).shape == ()


def test_body_mask_of_the_phantom(tiny_phantom) -> None:
    from medp2p.io import read_volume

    mr = read_volume(tiny_phantom / "case_000/mr.nii.gz").array
    truth = read_volume(tiny_phantom / "case_000/mask.nii.gz").array > 0
    est = body_mask(mr)
    dice = 2 * (est & truth).sum() / (est.sum() + truth.sum())
    assert dice > 0.9


@pytest.mark.parametrize("name", list(AFFINES))
@pytest.mark.parametrize("axis", list(SLICE_AXES))
def test_slab_mask_selects_the_slices_slice_range_trains_on(name: str, axis: str) -> None:
    shape = (7, 6, 5)
    grid = plan_grid(AFFINES[name], shape, axis)
    model = to_model_space(np.zeros(shape, np.float32), grid)
    depth = model.shape[0]
    # each voxel labelled with the model-space slice it lands on
    marker = from_model_space(torch.arange(depth, dtype=torch.float32)[:, None, None].expand_as(model), grid, "nearest")
    for fraction in [(0.0, 0.5), (0.5, 1.0), (0.2, 0.6)]:
        lo, hi = slab_bounds(depth, fraction)
        assert np.array_equal(slab_mask(shape, AFFINES[name], axis, fraction), (marker >= lo) & (marker < hi))
    lower, upper = slab_mask(shape, AFFINES[name], axis, (0.0, 0.5)), slab_mask(shape, AFFINES[name], axis, (0.5, 1.0))
    assert not (lower & upper).any() and (lower | upper).all()
