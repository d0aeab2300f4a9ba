"""From a case's checked volumes to normalised model-space stacks: the deterministic part of the data path.

:func:`prepare_case` is what training writes once into the case store (:mod:`medp2p.data.store`) and
:func:`prepare_source` is what inference runs on each input, so both see the same orientation,
resampling, padding and intensity scaling. Volumes come from
:func:`medp2p.data.case_reader.read_case`, already checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medp2p.data.case_reader import CaseVolumes
from medp2p.data.checks import compare_grids
from medp2p.data.codecs import BACKGROUND, TargetCodec
from medp2p.data.geometry import GridMap, plan_grid, slab_bounds, to_model_space
from medp2p.data.intensity import IntensityWindow, body_mask, looks_like_ct, mr_window
from medp2p.types import Volume

__all__ = ["BACKGROUND", "Prep", "PreparedCase", "prepare_case", "prepare_source"]


@dataclass(frozen=True)
class Prep:
    """How volumes are prepared; built from a run's config (``data`` section and task).

    Args:
        source_keys: case keys of the input images (MR-like, percentile-scaled).
        target_key: case key of the target.
        codec: how the target goes into model space and back (:mod:`medp2p.data.codecs`).
        mask_key: case key of the loss/metric mask (body), or None.
        axis: slicing direction.
        context_slices: 2.5D half-width k (2k+1 slices per source image).
        spacing_mm: in-plane working spacing, or None for native.
        mr_percentiles: body percentiles mapped to -1 and 1.
        size_multiple: pad slices to a multiple of this (the generator's).
        min_size: pad slices to at least this (the training crop).
        empty_slice_weight: sampling weight of slices without body (others weigh 1).
        slice_range: train only on this fraction ``[start, end)`` of the slicing axis.
        region: inpainting: the generator also gets the region mask as channels.
        source_channels: images per source key (a list-valued datalist key holds several);
            None: one each.
        target_window: ``(lo, hi)`` of the target contrast, for a codec that fits one on the
            training targets (written in this scale); None otherwise, or before it is fitted.
        patch_size: 3D mode (``model.dims: 3``): the generator's patch ``(D, H, W)`` in model
            space (slices, rows, columns); None: the generator takes 2D slices.
    """

    source_keys: tuple[str, ...]
    target_key: str
    codec: TargetCodec
    mask_key: str | None = None
    axis: str = "axial"
    context_slices: int = 0
    spacing_mm: float | None = None
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    size_multiple: int = 1
    min_size: tuple[int, int] = (1, 1)
    empty_slice_weight: float = 0.05
    slice_range: tuple[float, float] | None = None
    region: bool = False
    source_channels: tuple[int, ...] | None = None
    target_window: tuple[float, float] | None = None
    patch_size: tuple[int, int, int] | None = None

    @property
    def context(self) -> int:
        """Slices per source image in a 2.5D sample: ``2k + 1``."""
        return 2 * self.context_slices + 1

    @property
    def fitted_target_window(self) -> IntensityWindow | None:
        """The run's target window (``target_window``) as an :class:`IntensityWindow`."""
        if self.target_window is None:
            return None
        return IntensityWindow(float(self.target_window[0]), float(self.target_window[1]), clip=(-1.0, 1.5))

    @property
    def n_sources(self) -> int:
        """Source images per case (list-valued keys count each of their images)."""
        return sum(self.source_channels) if self.source_channels else len(self.source_keys)

    @property
    def in_channels(self) -> int:
        """Generator input channels: every source's context slices, plus the region's when inpainting."""
        return self.context * (self.n_sources + (1 if self.region else 0))


@dataclass
class PreparedCase:
    """One case in model space (tensors ``(C, D, H, W)``) with what is needed to go back."""

    id: str
    source: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor | None
    body: torch.Tensor  # (1, D, H, W) 0/1: where boxes for inpainting may go
    weights: torch.Tensor  # (D,) slice sampling weights
    grid: GridMap
    windows: list[IntensityWindow]
    source_is_ct: bool = False  # the first source looks like a CT in HU (checked again at prediction)
    target_window: IntensityWindow | None = None  # the target's own window, for codecs that fit one


def _check_grid(ref: Volume, other: Volume, key: str, ref_key: str) -> None:
    diff = compare_grids(ref, other)
    if diff is not None:
        raise ValueError(
            f"{other.path}: '{key}' is not on the '{ref_key}' grid of {ref.path}: {diff}. "
            f"Resample '{key}' onto the '{ref_key}' grid first (medp2p validate lists every such problem)"
        )


def prepare_source(
    volumes: list[Volume], prep: Prep, bodies: list[np.ndarray] | None = None
) -> tuple[torch.Tensor, GridMap, list[IntensityWindow]]:
    """Normalise source images (MR percentiles inside the body) and stack them in model space ``(S, D, H, W)``.

    Args:
        volumes: one image per ``prep.source_keys``, on one grid.
        prep: the preparation.
        bodies: each image's :func:`body_mask`, when the caller has them already.

    Example:
        >>> stack, grid, windows = prepare_source([read_volume("case/mr.nii.gz")], prep)
    """
    ref = volumes[0]
    for i, vol in enumerate(volumes[1:], start=1):
        _check_grid(ref, vol, f"source {i}", "source 0")
    grid = plan_grid(ref.affine, ref.shape, prep.axis, prep.spacing_mm, prep.size_multiple, prep.min_size)
    if bodies is None:
        bodies = [body_mask(v.array) for v in volumes]
    windows = [mr_window(v.array, body, prep.mr_percentiles) for v, body in zip(volumes, bodies, strict=True)]
    stack = torch.stack([to_model_space(w.forward(v.array), grid, "linear", BACKGROUND) for w, v in zip(windows, volumes, strict=True)])
    return stack, grid, windows


def prepare_case(case: CaseVolumes, prep: Prep) -> PreparedCase:
    """Bring one read and checked case (:func:`~medp2p.data.case_reader.read_case`) into model space.

    With ``prep.slice_range`` and 3D patches (``prep.patch_size``) the case keeps only its slab's
    slices, so that no training patch reaches into the slices held out for testing.

    Raises:
        ValueError: an image is not on the first source's grid (names both files).
    """
    sources = case.sources
    if len(sources) != prep.n_sources:
        raise ValueError(f"case {case.id!r}: {len(sources)} source image(s), the run takes {prep.n_sources} {list(prep.source_keys)}")
    bodies = [body_mask(v.array) for v in sources]  # for the MR windows, and for sampling when there is no mask
    stack, grid, windows = prepare_source(sources, prep, bodies)
    target = case.target
    if target is None:
        raise ValueError(f"case {case.id!r}: no target '{prep.target_key}' was read")
    _check_grid(sources[0], target, prep.target_key, prep.source_keys[0])
    codec = prep.codec
    encoded, target_window = codec.encode(target, windows, prep.mr_percentiles)
    target_t = to_model_space(encoded, grid, codec.interpolation, codec.pad_value)[None]
    mask_t = None
    # a target without a body mask may carry its own (a CT: reference HU > -500, as evaluation uses)
    own_body = codec.body_from_target(target.array) if prep.mask_key and case.mask is None else None
    if prep.mask_key and (case.mask is not None or own_body is not None):
        body_arr = (case.mask.array > 0) if case.mask is not None else own_body
        assert body_arr is not None
        mask_t = to_model_space(body_arr.astype(np.float32), grid, "nearest", 0.0)[None]
        body_t = mask_t
    else:
        body_t = to_model_space(bodies[0].astype(np.float32), grid, "nearest", 0.0)[None]
    has_body = body_t[0].flatten(1).amax(1) > 0
    weights = torch.where(has_body, 1.0, float(prep.empty_slice_weight))
    if prep.slice_range is not None:
        depth = weights.shape[0]
        lo, hi = slab_bounds(depth, prep.slice_range)
        keep = torch.zeros(depth, dtype=torch.bool)
        keep[lo:hi] = True
        weights = torch.where(keep, weights, 0.0)
        if prep.patch_size is not None:  # 3D: a patch around a slab slice would reach across it; keep the slab alone
            stack, target_t, body_t, weights = stack[:, lo:hi], target_t[:, lo:hi], body_t[:, lo:hi], weights[lo:hi]
            mask_t = mask_t[:, lo:hi] if mask_t is not None else None
    return PreparedCase(case.id, stack, target_t, mask_t, body_t, weights, grid, windows, looks_like_ct(sources[0]), target_window)
