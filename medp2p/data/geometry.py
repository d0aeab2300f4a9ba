"""Model space: a volume reoriented, resampled in-plane and laid out as a stack of 2D slices.

Training and inference both go through :func:`to_model_space`, and predictions come back with
:func:`from_model_space`, so every prediction lands on the input's own grid (same shape and
affine), whatever orientation the file had.

Model space is ``(D, H, W)``: ``D`` runs along the slicing axis of the canonical (RAS+) volume
(``axial``: inferior->superior, ``coronal``: posterior->anterior, ``sagittal``: left->right) and
``(H, W)`` is the slice plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: The canonical-array axis each slicing direction runs along.
SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}

#: The slice dimension of a model-space batch ``(B, C, H, W)`` that runs left-right (the head's
#: mirror axis), per slicing direction: ``H`` for axial and coronal slices; sagittal slices hold
#: none (their plane is anterior-posterior by inferior-superior).
MIRROR_DIMS = {"axial": -2, "coronal": -2, "sagittal": None}


def mirror_dim(axis: str, flip: bool) -> int | None:
    """:data:`MIRROR_DIMS` for ``axis``, raising when a left-right flip is asked of slices without one."""
    dim = MIRROR_DIMS[axis]
    if flip and dim is None:
        raise ValueError(f"flip TTA mirrors left-right, which {axis} slices do not hold")
    return dim


def canonical_orientation(affine: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Which array axis runs along each RAS+ world axis, and whether it runs backwards.

    Axes are matched greedily by the largest direction cosine, so oblique volumes get the
    closest canonical orientation (as nibabel's ``io_orientation`` does).

    Returns:
        ``(perm, flips)``: ``perm[w]`` is the array axis closest to world axis ``w`` (R, A, S);
        ``flips[w]`` is True when that array axis points the opposite way (L, P or I).

    Example:
        >>> canonical_orientation(np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS
        ((0, 1, 2), (True, True, False))
    """
    m = np.asarray(affine, float)[:3, :3]
    cos = np.abs(m / np.linalg.norm(m, axis=0, keepdims=True))
    perm = [-1, -1, -1]
    free_world, free_axes = {0, 1, 2}, {0, 1, 2}
    for _ in range(3):
        w, a = max(((w, a) for w in free_world for a in free_axes), key=lambda wa: cos[wa])
        perm[w] = a
        free_world.discard(w)
        free_axes.discard(a)
    flips = tuple(bool(m[w, perm[w]] < 0) for w in range(3))
    return tuple(perm), flips  # type: ignore[return-value]


def to_canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``array`` with its axes permuted and flipped to RAS+ order (no resampling), for pictures.

    Example:
        >>> to_canonical(np.arange(6).reshape(1, 2, 3), np.diag([1.0, -1.0, 1.0, 1.0]))[0, :, 0]
        array([3, 0])
    """
    perm, flips = canonical_orientation(affine)
    out = np.transpose(array, perm)
    return np.flip(out, axis=tuple(w for w in range(3) if flips[w])) if any(flips) else out


def _index_map(perm: tuple[int, ...], flips: tuple[bool, ...], shape: tuple[int, ...]) -> np.ndarray:
    """4x4 matrix taking a canonical voxel index to the original voxel index."""
    t = np.zeros((4, 4))
    t[3, 3] = 1
    for w in range(3):
        a = perm[w]
        if flips[w]:
            t[a, w], t[a, 3] = -1.0, shape[a] - 1
        else:
            t[a, w] = 1.0
    return t


@dataclass(frozen=True)
class GridMap:
    """How one volume maps into model space and back (see :func:`to_model_space`).

    Args:
        shape: the original array shape ``(X, Y, Z)``.
        perm, flips: the canonical orientation (:func:`canonical_orientation`).
        axis: slicing direction (``axial``, ``coronal``, ``sagittal``).
        plane_shape: in-plane size after resampling, before padding ``(H, W)``.
        pad: ``(top, bottom, left, right)`` voxels added around each slice.
        affine: the model-space affine: model index ``(d, h, w)`` -> RAS+ mm.
    """

    shape: tuple[int, int, int]
    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    axis: str
    plane_shape: tuple[int, int]
    pad: tuple[int, int, int, int]
    affine: np.ndarray

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """The array shape after reorientation to RAS+ (axes permuted, no resampling)."""
        return tuple(self.shape[a] for a in self.perm)  # type: ignore[return-value]

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` of the padded stack."""
        top, bottom, left, right = self.pad
        depth = self.canonical_shape[SLICE_AXES[self.axis]]
        return (depth, self.plane_shape[0] + top + bottom, self.plane_shape[1] + left + right)


def plan_grid(
    affine: np.ndarray,
    shape: tuple[int, int, int],
    axis: str = "axial",
    spacing_mm: float | None = None,
    size_multiple: int = 1,
    min_size: tuple[int, int] = (1, 1),
) -> GridMap:
    """Plan the model-space grid of a volume.

    Args:
        affine: the volume's RAS+ affine.
        shape: its array shape.
        axis: slicing direction.
        spacing_mm: in-plane working voxel size; None keeps the native spacing. The field of view
            is kept exactly: the new size is ``round(n * spacing / spacing_mm)``.
        size_multiple: pad each slice to a multiple of this (the generator's ``size_multiple``).
        min_size: pad each slice to at least this ``(H, W)`` (the training crop size).

    Example:
        >>> plan_grid(np.diag([0.5, 0.5, 2.5, 1]), (512, 512, 94), spacing_mm=1.0, size_multiple=256).model_shape
        (94, 256, 256)
    """
    if axis not in SLICE_AXES:
        raise KeyError(f"Unknown slicing axis {axis!r}; choose from {sorted(SLICE_AXES)}")
    perm, flips = canonical_orientation(affine)
    canon_shape = tuple(int(shape[a]) for a in perm)
    canon_affine = np.asarray(affine, float) @ _index_map(perm, flips, shape)
    d_axis = SLICE_AXES[axis]
    plane_axes = [a for a in range(3) if a != d_axis]
    spacing = np.linalg.norm(canon_affine[:3, :3], axis=0)
    plane = []
    scale = np.ones(3)
    for a in plane_axes:
        n = canon_shape[a]
        new = n if spacing_mm is None else max(1, int(round(n * spacing[a] / spacing_mm)))
        plane.append(new)
        scale[a] = n / new
    pads = []
    for n, lo in zip(plane, min_size, strict=True):
        target = max(n, lo)
        target += (-target) % size_multiple
        pads.append((target - n) // 2)
        pads.append(target - n - (target - n) // 2)
    # model index (d, h, w) -> canonical continuous index: resampled voxel centres, minus padding
    m = np.zeros((4, 4))
    m[3, 3] = 1
    m[d_axis, 0] = 1.0
    for col, (a, before) in enumerate(zip(plane_axes, (pads[0], pads[2]), strict=True), start=1):
        m[a, col] = scale[a]
        m[a, 3] = (0.5 - before) * scale[a] - 0.5
    return GridMap(
        shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        perm=perm,
        flips=flips,
        axis=axis,
        plane_shape=(plane[0], plane[1]),
        pad=(pads[0], pads[1], pads[2], pads[3]),
        affine=canon_affine @ m,
    )


def _resize_planes(stack: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``(D, H, W)`` slices to ``size``; D is the batch."""
    if tuple(stack.shape[-2:]) == tuple(size):
        return stack
    x = stack[:, None]
    if mode == "nearest":
        out = F.interpolate(x, size=size, mode="nearest-exact")
    else:
        antialias = size[0] < stack.shape[-2] or size[1] < stack.shape[-1]
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return out[:, 0]


def to_model_space(array: np.ndarray, grid: GridMap, mode: str = "linear", pad_value: float = 0.0) -> torch.Tensor:
    """Reorient, resample in-plane and pad ``array`` (X, Y, Z) into a ``(D, H, W)`` float32 stack.

    Args:
        array: the volume, on the grid ``grid`` was planned for.
        grid: from :func:`plan_grid`.
        mode: ``linear`` for images, ``nearest`` for labels.
        pad_value: value of the voxels added around each slice (background).
    """
    if tuple(array.shape) != grid.shape:
        raise ValueError(f"array shape {array.shape} != planned shape {grid.shape}")
    canon = np.transpose(array, grid.perm)
    flip_axes = tuple(w for w in range(3) if grid.flips[w])
    if flip_axes:
        canon = np.flip(canon, flip_axes)
    stack = np.moveaxis(canon, SLICE_AXES[grid.axis], 0)
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
    t = _resize_planes(t, grid.plane_shape, mode)
    top, bottom, left, right = grid.pad
    if any(grid.pad):
        t = F.pad(t, (left, right, top, bottom), value=pad_value)
    return t.contiguous()


def from_model_space(stack: torch.Tensor | np.ndarray, grid: GridMap, mode: str = "linear") -> np.ndarray:
    """Inverse of :func:`to_model_space`: a ``(D, H, W)`` stack back to the original ``(X, Y, Z)`` grid.

    Reorientation and padding invert exactly; in-plane resampling back uses bilinear
    interpolation (``nearest`` for labels).
    """
    t = torch.as_tensor(stack, dtype=torch.float32)
    if tuple(t.shape) != grid.model_shape:
        raise ValueError(f"stack shape {tuple(t.shape)} != model shape {grid.model_shape}")
    top, bottom, left, right = grid.pad
    t = t[:, top : t.shape[1] - bottom, left : t.shape[2] - right]
    canon_shape = grid.canonical_shape
    plane_axes = [a for a in range(3) if a != SLICE_AXES[grid.axis]]
    t = _resize_planes(t, (canon_shape[plane_axes[0]], canon_shape[plane_axes[1]]), mode)
    canon = np.moveaxis(t.numpy(), 0, SLICE_AXES[grid.axis])
    flip_axes = tuple(w for w in range(3) if grid.flips[w])
    if flip_axes:
        canon = np.flip(canon, flip_axes)
    return np.ascontiguousarray(np.transpose(canon, np.argsort(grid.perm)), dtype=np.float32)


def context_indices(depth: int, k: int) -> torch.Tensor:
    """``(depth, 2k+1)`` slice indices of each slice's 2.5D neighbourhood, edges replicated.

    Example:
        >>> context_indices(3, 1).tolist()
        [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    """
    offsets = torch.arange(-k, k + 1)
    return (torch.arange(depth)[:, None] + offsets[None, :]).clamp(0, depth - 1)


def gather_slices(stack: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """2.5D samples from a ``(S, D, H, W)`` stack: ``(B, 2k+1)`` slice indices -> ``(B, S*(2k+1), H, W)``.

    Channels run image-major: all context slices of the first image, then of the second...
    Training and inference both build their inputs with this function.
    """
    s, _, h, w = stack.shape
    picked = stack[:, indices]  # (S, B, 2k+1, H, W)
    return picked.permute(1, 0, 2, 3, 4).reshape(indices.shape[0], s * indices.shape[1], h, w)


def check_slice_range(fraction: tuple[float, float]) -> None:
    """Raise ``ValueError`` unless ``fraction`` is ``[start, end)`` with ``0 <= start < end <= 1``.

    The one rule behind ``data.slice_range`` and ``medp2p evaluate --slice-range``.
    """
    if not 0 <= fraction[0] < fraction[1] <= 1:
        raise ValueError(f"slice_range is a fraction [start, end) of the axis within [0, 1], got {tuple(fraction)}")


def slab_bounds(depth: int, fraction: tuple[float, float]) -> tuple[int, int]:
    """Slice indices ``[lo, hi)`` of the fraction ``[start, end)`` of an axis with ``depth`` slices.

    Example:
        >>> slab_bounds(94, (0.0, 0.5)), slab_bounds(94, (0.5, 1.0))
        ((0, 47), (47, 94))
    """
    check_slice_range(fraction)
    return int(round(fraction[0] * depth)), int(round(fraction[1] * depth))


def slab_mask(shape: tuple[int, ...], affine: np.ndarray, axis: str, fraction: tuple[float, float]) -> np.ndarray:
    """Boolean mask, on a volume's own voxel grid, of the slab ``data.slice_range`` trains on.

    The fraction runs along the canonical (RAS+) slicing axis, as in model space (axial:
    inferior -> superior), whatever the file's orientation; training (``data.slice_range``) and
    evaluation (``medp2p evaluate --slice-range``) select the same slices through this rule.

    Example:
        >>> slab_mask((2, 2, 4), np.diag([-1.0, -1.0, -1.0, 1.0]), "axial", (0.0, 0.5))[0, 0].tolist()
        [False, False, True, True]
    """
    perm, flips = canonical_orientation(affine)
    world = SLICE_AXES[axis]
    array_axis, depth = perm[world], shape[perm[world]]
    lo, hi = slab_bounds(depth, fraction)
    keep = np.zeros(depth, bool)
    keep[lo:hi] = True
    if flips[world]:
        keep = keep[::-1]
    view = [1] * len(shape)
    view[array_axis] = depth
    mask: np.ndarray = np.broadcast_to(keep.reshape(view), tuple(shape)).copy()
    return mask
