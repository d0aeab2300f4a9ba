"""Corruptions for inpainting, generated from a seed: boxes, missing slices, stripes.

Training draws them per batch from the run's generator; evaluation regenerates the same region
for a case from ``(seed, case index)`` with :func:`corrupt_volume`, so an evaluation set can be
rebuilt exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from medp2p.data.cases import case_seed
from medp2p.data.intensity import body_mask
from medp2p.types import Volume

CORRUPTIONS = ("box", "slices", "stripes")


def corruption_regions(
    body: torch.Tensor, context_slices: int, kinds: tuple[str, ...], box_fraction: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """Regions to void for a batch of 2.5D samples.

    Args:
        body: ``(B, 2k+1, H, W)`` 0/1 body of each sample's slices (or ``(B, 1, H, W)``: the centre
            slice's, for all of them). Boxes are centred in the centre slice's body and hold body
            only, as :func:`corrupt_volume`'s and BraTS-Inpainting's healthy-tissue masks do.
        context_slices: k; regions cover ``2k+1`` slices.
        kinds: corruption kinds to choose from (uniformly per sample).
        box_fraction: box side range as a fraction of the slice size.
        gen: the random stream.

    Returns:
        ``(B, 2k+1, H, W)`` 0/1 regions; the centre slice is always (partly) covered.
        ``box``: a box spanning the centre and up to k neighbours each side, cut to the body (the
        region's outline tells where tissue ends, as it does at inference); ``slices``: the
        whole centre slice (and up to k-1 neighbours each side) is missing; ``stripes``: 1 to 4
        lines 1 to 4 voxels wide across the centre slice.
    """
    b, nb, h, w = body.shape
    c = 2 * context_slices + 1
    if nb not in (1, c):
        raise ValueError(f"body has {nb} slices per sample; expected 1 or {c}")
    centre = body[:, nb // 2]
    out = torch.zeros(b, c, h, w)
    n = len(kinds)
    for i in range(b):
        r = torch.rand(8, generator=gen)
        kind = kinds[min(int(r[0] * n), n - 1)]
        half = int(r[1] * (context_slices + 1))  # 0..k neighbours each side
        if kind == "box":
            lo, hi = box_fraction
            bh = max(1, int(round((lo + (hi - lo) * r[2].item()) * h)))
            bw = max(1, int(round((lo + (hi - lo) * r[3].item()) * w)))
            inside = torch.nonzero(centre[i] > 0)
            if inside.shape[0]:
                cy, cx = inside[min(int(r[4] * inside.shape[0]), inside.shape[0] - 1)].tolist()
            else:
                cy, cx = int(r[4] * h), int(r[5] * w)
            y0, x0 = max(0, min(h - bh, cy - bh // 2)), max(0, min(w - bw, cx - bw // 2))
            out[i, context_slices - half : context_slices + half + 1, y0 : y0 + bh, x0 : x0 + bw] = 1
            if inside.shape[0]:
                out[i] *= body[i] > 0  # (cy, cx) is body: the centre slice stays hit
        elif kind == "slices":
            half = min(half, max(context_slices - 1, 0))
            out[i, context_slices - half : context_slices + half + 1] = 1
        elif kind == "stripes":
            lines = 1 + int(r[2] * 4)
            width = 1 + int(r[3] * 4)
            horizontal = bool(r[5] < 0.5)
            size = h if horizontal else w
            starts = (torch.rand(lines, generator=gen) * max(size - width, 1)).long()
            for s in starts.tolist():
                if horizontal:
                    out[i, context_slices, s : s + width] = 1
                else:
                    out[i, context_slices, :, s : s + width] = 1
        else:
            raise KeyError(f"Unknown corruption {kind!r}; choose from {list(CORRUPTIONS)}")
    return out


def corrupt_volume(
    image: np.ndarray, body: np.ndarray, seed: int, index: int = 0, box_fraction: tuple[float, float] = (0.1, 0.35)
) -> tuple[np.ndarray, np.ndarray]:
    """A BraTS-Inpainting-style evaluation corruption: one box of tissue inside the body is voided.

    Args:
        image: the clean ``(X, Y, Z)`` volume.
        body: where the box may go (e.g. the brain or body mask).
        seed: with ``index``, all the box depends on (besides the shapes).
        index: a second seed part (a case index).
        box_fraction: box side range as a fraction of each axis.

    Returns:
        ``(voided, region)``: the image with the box set to 0 (as BraTS ``t1n-voided``), and the
        box as a 0/1 ``float32`` mask.

    Example:
        >>> voided, region = corrupt_volume(t1.array, brain.array, seed=1234, index=0)
    """
    rng = np.random.default_rng([int(seed), int(index)])
    inside = np.argwhere(body > 0)
    if inside.shape[0] == 0:
        raise ValueError("cannot place an inpainting box: the body mask is empty")
    centre = inside[rng.integers(inside.shape[0])]
    region = np.zeros(image.shape, np.float32)
    lo, hi = box_fraction
    slices = []
    for axis, n in enumerate(image.shape):
        side = max(1, int(round(rng.uniform(lo, hi) * n)))
        start = int(np.clip(centre[axis] - side // 2, 0, max(n - side, 0)))
        slices.append(slice(start, start + side))
    region[tuple(slices)] = 1
    region *= body > 0  # BraTS boxes hold tissue only
    if not region.any():
        region[tuple(centre)] = 1
    voided = np.where(region > 0, 0.0, image).astype(np.float32)
    return voided, region


def seeded_corruption(image: Volume, case_id: str, seed: int, box_fraction: tuple[float, float] = (0.1, 0.35)) -> tuple[Volume, Volume]:
    """The evaluation corruption of one case: a box inside the image's own body mask, from ``(seed, case_id)``.

    Validation, ``medp2p predict`` (inpainting a case that has no region) and ``medp2p evaluate``
    all call this, so they void the same voxels.

    Returns:
        ``(voided, region)`` volumes on ``image``'s grid.

    Example:
        >>> voided, region = seeded_corruption(read_volume("case_000/mr.nii.gz"), "case_000", seed=1234)
    """
    voided, region = corrupt_volume(image.array, body_mask(image.array), case_seed(seed, case_id), 0, box_fraction)
    return image.with_array(voided), image.with_array(region)
