"""Augmentation keeps pairs aligned; corruptions are seeded and of the asked kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medp2p.data.augment import AugmentSpec, augment
from medp2p.data.corruption import corrupt_volume, corruption_regions
from medp2p.data.geometry import MIRROR_DIMS, plan_grid, to_model_space


def _batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 24, 20, generator=g) * 2 - 1
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # smooth, so bilinear resampling is meaningful


def test_geometry_is_shared_and_intensity_touches_the_source_only() -> None:
    x = _batch()
    mask = (x > 0).float()
    spec = AugmentSpec(flip_prob=0.5, affine_prob=1.0, rotate_deg=10, intensity_prob=1.0)
    images, labels = augment(
        {"source": x.clone(), "target": x.clone()}, {"mask": mask.clone()}, ("source",), spec, torch.Generator().manual_seed(3)
    )
    assert not torch.equal(images["target"], x)  # it moved
    geo_only, labels2 = augment(
        {"source": x.clone(), "target": x.clone()},
        {"mask": mask.clone()},
        ("source",),
        AugmentSpec(flip_prob=0.5, affine_prob=1.0, rotate_deg=10, intensity_prob=0.0),
        torch.Generator().manual_seed(3),
    )
    assert torch.equal(geo_only["source"], geo_only["target"])  # same warp for source and target
    assert torch.equal(geo_only["target"], images["target"])  # the target never gets intensity jitter
    assert not torch.equal(images["source"], images["target"])
    assert torch.equal(labels["mask"], labels2["mask"]) and set(labels["mask"].unique().tolist()) <= {0.0, 1.0}


def test_no_augmentation_is_the_identity() -> None:
    x = _batch()
    spec = AugmentSpec(flip_prob=0, affine_prob=0, intensity_prob=0)
    images, _ = augment({"source": x.clone()}, {}, ("source",), spec, torch.Generator().manual_seed(0))
    assert torch.equal(images["source"], x)


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_the_flip_mirrors_left_right(axis: str) -> None:
    # A marker on the right, at the back and at the bottom of a RAS+ volume (all orientations reach
    # model space through this canonical one): the flip moves it to the left and nowhere else.
    volume = np.zeros((8, 6, 4), np.float32)
    volume[1, 1, 1] = 1
    mirrored = volume[::-1].copy()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    grid = plan_grid(affine, volume.shape, axis)
    slices = to_model_space(volume, grid).unsqueeze(1)  # (D, 1, H, W): a batch of slices
    spec = AugmentSpec(flip_prob=1.0, flip_dim=MIRROR_DIMS[axis], affine_prob=0, intensity_prob=0)
    flipped, _ = augment({"source": slices}, {}, ("source",), spec, torch.Generator().manual_seed(0))
    expected = slices if axis == "sagittal" else to_model_space(mirrored, grid).unsqueeze(1)
    assert torch.equal(flipped["source"], expected)


def test_same_generator_state_same_augmentation() -> None:
    x = _batch()
    a, _ = augment({"source": x}, {}, ("source",), AugmentSpec(), torch.Generator().manual_seed(9))
    b, _ = augment({"source": x}, {}, ("source",), AugmentSpec(), torch.Generator().manual_seed(9))
    assert torch.equal(a["source"], b["source"])


@pytest.mark.parametrize("kind", ["box", "slices", "stripes"])
def test_corruption_kinds(kind: str) -> None:
    body = torch.zeros(8, 1, 32, 32)
    body[:, :, 8:24, 8:24] = 1
    regions = corruption_regions(body, 1, (kind,), (0.2, 0.3), torch.Generator().manual_seed(1))
    assert regions.shape == (8, 3, 32, 32)
    assert (regions[:, 1].flatten(1).sum(1) > 0).all()  # the centre slice is always hit
    if kind == "slices":
        assert (regions[:, 1] == 1).all()  # the whole centre slice is missing
    if kind == "box":
        centre = regions[:, 1].flatten(1).sum(1)
        assert (centre >= 9).all() and (centre <= 100).all()  # (0.2..0.3 * 32)^2, cut to the body
        assert not (regions * (1 - body)).any()  # boxes hold body only, as the evaluation's do
    again = corruption_regions(body, 1, (kind,), (0.2, 0.3), torch.Generator().manual_seed(1))
    assert torch.equal(regions, again)


def test_boxes_follow_each_context_slice_body() -> None:
    body = torch.zeros(16, 3, 32, 32)
    body[:, 1, 4:28, 4:28] = 1  # the centre slice
    body[:, 0, 4:16, 4:28] = 1  # a neighbour with less body
    regions = corruption_regions(body, 1, ("box",), (0.3, 0.5), torch.Generator().manual_seed(2))
    assert not (regions * (1 - body)).any()
    assert not regions[:, 2].any() and regions[:, 1].flatten(1).amax(1).all()
    assert regions[:, 0].any()  # some boxes reach the neighbour, inside its body
    with pytest.raises(ValueError, match="expected 1 or 3"):
        corruption_regions(body[:, :2], 1, ("box",), (0.3, 0.5), torch.Generator())


def test_slices_keep_the_outermost_context() -> None:
    body = torch.ones(16, 1, 8, 8)
    regions = corruption_regions(body, 2, ("slices",), (0.1, 0.2), torch.Generator().manual_seed(0))
    assert not regions[:, 0].any() and not regions[:, 4].any()


def test_evaluation_corruption_is_seeded_and_inside_the_body() -> None:
    image = np.random.default_rng(0).uniform(1, 2, (20, 24, 16)).astype(np.float32)
    body = np.zeros(image.shape, bool)
    body[4:16, 4:20, 2:14] = True
    voided, region = corrupt_volume(image, body, seed=5, index=2)
    voided2, region2 = corrupt_volume(image, body, seed=5, index=2)
    assert np.array_equal(region, region2) and np.array_equal(voided, voided2)
    assert region.sum() > 0 and not region[~body].any()
    assert (voided[region > 0] == 0).all() and np.array_equal(voided[region == 0], image[region == 0])
    assert not np.array_equal(corrupt_volume(image, body, seed=5, index=3)[1], region)
