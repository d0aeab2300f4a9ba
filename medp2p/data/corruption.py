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
#: 3D patches also take ``blob``: a compact, tumour-like compartment (two overlapping ellipsoids).
CORRUPTIONS_3D = (*CORRUPTIONS, "blob")


def _body_voxel(centre: torch.Tensor, pick: torch.Tensor, fallback: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """A uniform body voxel ``(cy, cx)`` of each ``(H, W)`` slice of ``centre`` (bool ``(B, H, W)``).

    ``pick``: a uniform draw per sample choosing the voxel; ``fallback``: two uniform draws that
    place it anywhere in slices without body. Returns ``(cy, cx, has_body)``.
    """
    _, h, w = centre.shape
    counts = centre.flatten(1).sum(1)
    has_body = counts > 0
    nth = torch.minimum((pick * counts).long(), (counts - 1).clamp_min(0))
    at = torch.searchsorted(torch.cumsum(centre.flatten(1).long(), 1), (nth + 1).unsqueeze(1)).squeeze(1).clamp_max(h * w - 1)
    cy = torch.where(has_body, at // w, (fallback[0] * h).long())
    cx = torch.where(has_body, at % w, (fallback[1] * w).long())
    return cy, cx, has_body


def _stripes(draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor], starts: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """1 to 4 lines 1 to 4 voxels wide across an ``(H, W)`` slice, horizontal or vertical: bool ``(B, H, W)``.

    ``draws``: uniform draws per sample for the number of lines, their width and their direction;
    ``starts``: ``(B, 4)`` uniform draws placing each line.
    """
    b = starts.shape[0]
    lines, width = 1 + (draws[0] * 4).long(), 1 + (draws[1] * 4).long()
    horizontal = draws[2] < 0.5
    size = torch.where(horizontal, torch.tensor(h), torch.tensor(w))
    begin = (starts * (size - width).clamp_min(1)[:, None]).long()  # (B, 4)
    used = torch.arange(4)[None] < lines[:, None]
    pos = torch.arange(max(h, w))
    hit = ((pos[None, None] >= begin[..., None]) & (pos[None, None] < (begin + width[:, None])[..., None]) & used[..., None]).any(1)
    return torch.where(horizontal[:, None, None], hit[:, :h, None].expand(b, h, w), hit[:, None, :w].expand(b, h, w))


def corruption_regions(
    body: torch.Tensor, context_slices: int, kinds: tuple[str, ...], box_fraction: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """Regions to void for a batch of 2.5D samples, drawn for the whole batch at once.

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

    Example:
        >>> regions = corruption_regions(body, 1, ("box", "stripes"), (0.1, 0.35), gen)
    """
    b, nb, h, w = body.shape
    k = context_slices
    c = 2 * k + 1
    if nb not in (1, c):
        raise ValueError(f"body has {nb} slices per sample; expected 1 or {c}")
    unknown = [x for x in kinds if x not in CORRUPTIONS]
    if unknown:
        raise KeyError(f"Unknown corruption {unknown[0]!r}; choose from {list(CORRUPTIONS)}")
    r = torch.rand(b, 8, generator=gen)
    starts = torch.rand(b, 4, generator=gen)
    kind = torch.tensor([CORRUPTIONS.index(x) for x in kinds])[(r[:, 0] * len(kinds)).long().clamp_max(len(kinds) - 1)]
    half = (r[:, 1] * (k + 1)).long()  # 0..k neighbours each side
    offsets = torch.arange(c) - k  # slice offsets from the centre
    ys, xs = torch.arange(h), torch.arange(w)
    centre = body[:, nb // 2] > 0  # (B, H, W)
    out = torch.zeros(b, c, h, w)

    # box: a side from box_fraction, centred on a uniform voxel of the centre slice's body
    lo, hi = box_fraction
    bh = torch.round((lo + (hi - lo) * r[:, 2]) * h).long().clamp_min(1)
    bw = torch.round((lo + (hi - lo) * r[:, 3]) * w).long().clamp_min(1)
    cy, cx, has_body = _body_voxel(centre, r[:, 4], (r[:, 4], r[:, 5]))
    y0 = (cy - bh // 2).clamp_min(0).minimum(h - bh)
    x0 = (cx - bw // 2).clamp_min(0).minimum(w - bw)
    rows = (ys >= y0[:, None]) & (ys < (y0 + bh)[:, None])  # (B, H)
    cols = (xs >= x0[:, None]) & (xs < (x0 + bw)[:, None])
    depth = offsets.abs()[None] <= half[:, None]  # (B, C)
    box = depth[:, :, None, None] & rows[:, None, :, None] & cols[:, None, None, :]
    box = torch.where(has_body[:, None, None, None], box & (body > 0), box)  # (cy, cx) is body: the centre stays hit

    # slices: the centre slice and up to k-1 neighbours each side
    slices = (offsets.abs()[None] <= half.clamp_max(max(k - 1, 0))[:, None])[:, :, None, None].expand(b, c, h, w)

    # stripes: 1..4 lines 1..4 wide across the centre slice, horizontal or vertical
    stripes = torch.zeros(b, c, h, w, dtype=torch.bool)
    stripes[:, k] = _stripes((r[:, 2], r[:, 3], r[:, 5]), starts, h, w)

    for i, name in enumerate(CORRUPTIONS):
        chosen = (kind == i)[:, None, None, None]
        region = {"box": box, "slices": slices, "stripes": stripes}[name]
        out = torch.where(chosen & region, torch.ones(()), out)
    return out


def corruption_patches(body: torch.Tensor, kinds: tuple[str, ...], box_fraction: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """Regions to void for a batch of 3D patches (``model.dims: 3``), drawn for the whole batch at once.

    Args:
        body: ``(B, D, H, W)`` 0/1 body of each patch.
        kinds: corruption kinds to choose from (uniformly per sample), from :data:`CORRUPTIONS_3D`.
        box_fraction: the region's extent range as a fraction of the patch along each axis.
        gen: the random stream (the same number of draws whatever is chosen).

    Returns:
        ``(B, D, H, W)`` 0/1 regions, each touching the centre slice ``D // 2``. ``box``: a
        box whose three sides are drawn from ``box_fraction``, centred on a uniform body voxel of
        the centre slice and cut to the body; ``blob``: two overlapping ellipsoids of the same
        extent there, cut to the body (BraTS-Inpainting's healthy-tissue masks are tumour-shaped
        compartments, not boxes); ``slices``: 1 to ``D // 4`` whole slices through the centre;
        ``stripes``: 1 to 4 lines 1 to 4 voxels wide across the centre slice.

    Example:
        >>> regions = corruption_patches(body, ("box", "blob"), (0.1, 0.35), gen)
    """
    b, d, h, w = body.shape
    unknown = [x for x in kinds if x not in CORRUPTIONS_3D]
    if unknown:
        raise KeyError(f"Unknown corruption {unknown[0]!r}; choose from {list(CORRUPTIONS_3D)}")
    r = torch.rand(b, 12, generator=gen)
    kind = torch.tensor([CORRUPTIONS_3D.index(x) for x in kinds])[(r[:, 0] * len(kinds)).long().clamp_max(len(kinds) - 1)]
    mid = d // 2
    centre = body[:, mid] > 0
    cy, cx, has_body = _body_voxel(centre, r[:, 1], (r[:, 1], r[:, 2]))
    lo, hi = box_fraction
    sides = torch.stack([(lo + (hi - lo) * r[:, 3 + a]) * n for a, n in enumerate((d, h, w))], 1).clamp_min(1.0)  # (B, 3)
    zs, ys, xs = (torch.arange(n, dtype=torch.float32) for n in (d, h, w))
    centre_at = torch.stack([torch.full((b,), float(mid)), cy.float(), cx.float()], 1)
    near = [(axis[None] - centre_at[:, a, None]) for a, axis in enumerate((zs, ys, xs))]  # (B, n) offsets per axis
    half = sides / 2
    inside = [(off.abs() <= half[:, a, None] + 1e-6) for a, off in enumerate(near)]
    box = inside[0][:, :, None, None] & inside[1][:, None, :, None] & inside[2][:, None, None, :]
    # blob: an ellipsoid of the box's semi-axes (its centre is the drawn body voxel, so it is hit),
    # and a second one moved by up to half of them
    move = (r[:, 6:9] * 2 - 1) * half / 2
    blob = torch.zeros(b, d, h, w, dtype=torch.bool)
    for shift in (torch.zeros_like(move), move):
        e = (
            ((near[0] - shift[:, 0, None]) / half[:, 0, None])[:, :, None, None] ** 2
            + ((near[1] - shift[:, 1, None]) / half[:, 1, None])[:, None, :, None] ** 2
            + ((near[2] - shift[:, 2, None]) / half[:, 2, None])[:, None, None, :] ** 2
        )
        blob |= e <= 1
    in_body = body > 0
    box = torch.where(has_body[:, None, None, None], box & in_body, box)
    blob = torch.where(has_body[:, None, None, None], blob & in_body, blob)
    # slices: 1 .. d//4 whole slices through the centre
    n_slices = 1 + (r[:, 9] * max(d // 4, 1)).long().clamp_max(max(d // 4, 1) - 1)
    first = mid - n_slices // 2
    rows = (torch.arange(d)[None] >= first[:, None]) & (torch.arange(d)[None] < (first + n_slices)[:, None])
    slices = rows[:, :, None, None].expand(b, d, h, w)
    # stripes on the centre slice, as in 2D
    stripes = torch.zeros(b, d, h, w, dtype=torch.bool)
    stripes[:, mid] = _stripes((r[:, 10], r[:, 11], r[:, 3]), torch.rand(b, 4, generator=gen), h, w)
    out = torch.zeros(b, d, h, w)
    for i, name in enumerate(CORRUPTIONS_3D):
        region = {"box": box, "slices": slices, "stripes": stripes, "blob": blob}[name]
        out = torch.where((kind == i)[:, None, None, None] & region, torch.ones(()), out)
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
