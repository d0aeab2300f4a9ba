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
    flip = torch.rand(b, generator=gen) < spec.flip_prob
    do_affine = torch.rand(b, generator=gen) < spec.affine_prob
    angle = _uniform(b, math.radians(spec.rotate_deg), gen)
    scale = 1 + _uniform(b, spec.scale, gen)
    shift = _uniform(2 * b, 2 * spec.shift, gen).view(b, 2)  # affine_grid units: the image spans 2
    do_intensity = torch.rand(b, generator=gen) < spec.intensity_prob
    gain = 1 + _uniform(b, spec.intensity_scale, gen)
    offset = _uniform(b, spec.intensity_shift, gen)
    gamma = torch.exp(_uniform(b, spec.gamma, gen))

    def geometric(x: torch.Tensor, mode: str) -> torch.Tensor:
        if spec.flip_dim is not None:
            x = torch.where(flip.view(b, 1, 1, 1).to(x.device), x.flip(spec.flip_dim), x)
        idx = torch.nonzero(do_affine).flatten()
        if idx.numel():
            cos, sin = torch.cos(angle[idx]) / scale[idx], torch.sin(angle[idx]) / scale[idx]
            theta = torch.stack([torch.stack([cos, -sin, shift[idx, 0]], 1), torch.stack([sin, cos, shift[idx, 1]], 1)], 1)
            sub = x[idx.to(x.device)]
            grid = F.affine_grid(theta.to(x.device, torch.float32), list(sub.shape), align_corners=False)
            warped = F.grid_sample(sub.float(), grid, mode=mode, padding_mode="border", align_corners=False).to(x.dtype)
            x = x.index_copy(0, idx.to(x.device), warped)
        return x

    out_images = {k: geometric(v, "bilinear") for k, v in images.items()}
    out_labels = {k: geometric(v, "nearest") for k, v in labels.items()}
    for key in jitter_keys:
        src = out_images[key]
        unit = ((src.clamp(-1, 3) + 1) / 2).clamp_min(0)  # [-1, 1] -> [0, 1] for gamma
        jittered = (unit ** gamma.view(b, 1, 1, 1).to(src.device)) * 2 - 1
        jittered = jittered * gain.view(b, 1, 1, 1).to(src.device) + offset.view(b, 1, 1, 1).to(src.device)
        out_images[key] = torch.where(do_intensity.view(b, 1, 1, 1).to(src.device), jittered, src)
    return out_images, out_labels
