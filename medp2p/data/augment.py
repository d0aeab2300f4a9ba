"""Batched training augmentations on tensors, driven by one ``torch.Generator`` (so resume is exact).

Geometry (left-right flip, rotation, scaling, shift) is applied identically to source, target and masks;
intensity jitter (scale, shift, gamma) touches the entries named in ``jitter_keys``: the source
alone when the target is another contrast (CT, labels), source and target alike when the target
is the source image itself (inpainting). Every random number is drawn whether or not it is used,
so the stream does not depend on outcomes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation strengths (the config's ``augment`` section).

    ``flip_dim``: the batch dimension the flip mirrors, the left-right one of the slicing
    direction (:data:`~medp2p.data.geometry.MIRROR_DIMS`); None: no flip (sagittal slices).
    """

    flip_prob: float = 0.5
    flip_dim: int | None = -2
    affine_prob: float = 0.5
    rotate_deg: float = 5.0
    scale: float = 0.05
    shift: float = 0.03
    intensity_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    gamma: float = 0.2


def _uniform(n: int, spread: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * 2 - 1) * spread


@dataclass(frozen=True)
class AugmentParams:
    """One batch's augmentation draws (``(B,)`` tensors, CPU): drawn where the batch is sampled, applied anywhere.

    Drawing from the seeded CPU generator and applying on the training device (a GPU) keep the
    random stream the same whichever device the augmentation runs on.
    """

    flip: torch.Tensor
    do_affine: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    do_intensity: torch.Tensor
    gain: torch.Tensor
    offset: torch.Tensor
    gamma: torch.Tensor

    def as_dict(self, prefix: str = "aug_") -> dict[str, torch.Tensor]:
        """The draws as batch entries (to travel with a batch from a worker)."""
        return {prefix + k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, batch: dict[str, torch.Tensor], prefix: str = "aug_") -> AugmentParams:
        """The draws carried by a batch (:meth:`as_dict`)."""
        return cls(**{k: batch[prefix + k] for k in cls.__dataclass_fields__})


def draw_augment(b: int, spec: AugmentSpec, gen: torch.Generator) -> AugmentParams:
    """Every random number of a batch's augmentation, drawn whether or not it is used."""
    return AugmentParams(
        flip=torch.rand(b, generator=gen) < spec.flip_prob,
        do_affine=torch.rand(b, generator=gen) < spec.affine_prob,
        angle=_uniform(b, math.radians(spec.rotate_deg), gen),
        scale=1 + _uniform(b, spec.scale, gen),
        shift=_uniform(2 * b, 2 * spec.shift, gen).view(b, 2),  # affine_grid units: the image spans 2
        do_intensity=torch.rand(b, generator=gen) < spec.intensity_prob,
        gain=1 + _uniform(b, spec.intensity_scale, gen),
        offset=_uniform(b, spec.intensity_shift, gen),
        gamma=torch.exp(_uniform(b, spec.gamma, gen)),
    )


def _warp_grid(p: AugmentParams, size: tuple[int, int], dev: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The warped samples' indices and their sampling grid (one grid for images and labels alike)."""
    idx = torch.nonzero(p.do_affine).flatten()
    if not idx.numel():
        return idx.to(dev), None
    cos, sin = torch.cos(p.angle[idx]) / p.scale[idx], torch.sin(p.angle[idx]) / p.scale[idx]
    theta = torch.stack([torch.stack([cos, -sin, p.shift[idx, 0]], 1), torch.stack([sin, cos, p.shift[idx, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(dev, torch.float32), [idx.numel(), 1, *size], align_corners=False)
    return idx.to(dev), grid


def _geometric(
    tensors: dict[str, torch.Tensor], mode: str, spec: AugmentSpec, p: AugmentParams, warp: tuple[torch.Tensor, torch.Tensor | None]
) -> dict[str, torch.Tensor]:
    """Flip and warp every tensor of ``tensors`` alike: one ``grid_sample`` for all their channels.

    Only the flipped and the warped samples are touched (in the concatenated copy).
    """
    if not tensors:
        return {}
    keys = list(tensors)
    x = torch.cat([tensors[k] for k in keys], 1)  # a new tensor: written in place below
    if spec.flip_dim is not None:
        flipped = torch.nonzero(p.flip).flatten().to(x.device)
        if flipped.numel():
            x[flipped] = x[flipped].flip(spec.flip_dim)
    idx, grid = warp
    if grid is not None:
        x[idx] = F.grid_sample(x[idx].float(), grid, mode=mode, padding_mode="border", align_corners=False).to(x.dtype)
    sizes = [tensors[k].shape[1] for k in keys]
    return dict(zip(keys, torch.split(x, sizes, dim=1), strict=True))


def apply_augment(
    images: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    jitter_keys: tuple[str, ...],
    spec: AugmentSpec,
    params: AugmentParams,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Apply drawn augmentations (:func:`draw_augment`), on whatever device the tensors are."""
    first = next(iter(images.values()))
    warp = _warp_grid(params, (first.shape[-2], first.shape[-1]), first.device)
    out_images = _geometric(images, "bilinear", spec, params, warp)
    out_labels = _geometric(labels, "nearest", spec, params, warp)
    jittered = torch.nonzero(params.do_intensity).flatten()
    if jittered.numel():
        ji = jittered.to(first.device)
        n = ji.numel()
        gamma, gain, offset = (v[jittered].view(n, 1, 1, 1).to(first.device) for v in (params.gamma, params.gain, params.offset))
        for key in jitter_keys:
            # [-1, 3] -> [0, 2] for gamma, then back: in place on the gathered copy
            unit = out_images[key][ji].clamp_(-1, 3).add_(1).div_(2)
            out_images[key][ji] = unit.pow_(gamma).mul_(2).sub_(1).mul_(gain).add_(offset)  # a view of _geometric's copy
    return out_images, out_labels


def augment(
    images: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    jitter_keys: tuple[str, ...],
    spec: AugmentSpec,
    gen: torch.Generator,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Augment a batch: ``images`` are resampled bilinearly, ``labels`` by nearest neighbour.

    Args:
        images: ``(B, C, H, W)`` tensors in [-1, 1] (source, target...).
        labels: ``(B, C, H, W)`` 0/1 tensors (masks, label targets).
        jitter_keys: the entries of ``images`` that get the intensity jitter, each sample the same
            jitter in all of them (the source; with the target too where it is the source image).
        spec: strengths.
        gen: the random stream (CPU generator).

    Example:
        >>> images, labels = augment({"source": s, "target": t}, {"mask": m}, ("source",), AugmentSpec(), gen)
    """
    b = next(iter(images.values())).shape[0]
    return apply_augment(images, labels, jitter_keys, spec, draw_augment(b, spec, gen))


def monai_transforms(specs: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[Any]:
    """MONAI dictionary transforms from config entries ``{name: RandGaussianNoised, keys: [source], prob: 0.2, ...}``.

    Raises:
        ValueError: an unknown name (with MONAI's list of dictionary transforms) or arguments the
            transform does not take.
    """
    import monai.transforms as mt

    out = []
    for spec in specs:
        args = dict(spec)
        name = str(args.pop("name", ""))
        cls = getattr(mt, name, None)
        if not (isinstance(cls, type) and issubclass(cls, mt.MapTransform)):
            choices = sorted(
                n for n in dir(mt) if n.endswith("d") and isinstance(getattr(mt, n), type) and issubclass(getattr(mt, n), mt.MapTransform)
            )
            raise ValueError(f"augment.monai: {name!r} is not a MONAI dictionary transform; choose from {', '.join(choices)}")
        try:
            out.append(cls(**args))
        except TypeError as exc:
            raise ValueError(f"augment.monai: {name}({', '.join(f'{k}={v!r}' for k, v in args.items())}): {exc}") from None
    return out
