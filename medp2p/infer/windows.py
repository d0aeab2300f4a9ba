"""Whole-volume prediction in 3D: overlapping patches through the generator, Gaussian-blended.

The model-space stack ``(S, D, H, W)`` goes through MONAI's ``sliding_window_inference``
(windows of ``prep.patch_size`` overlapping by half, each weighted by a Gaussian of sigma 1/8
of the patch, as nnU-Net blends), and comes back as ``(C, D, H, W)`` on the same model-space
grid, so :func:`~medp2p.infer.volume.finish_prediction` takes it back to the input's grid
exactly as it does for slices.

Two choices around MONAI's function:

- **Blending in float64.** MONAI accumulates in the input's dtype; the stack goes in as float64
  and the generator runs on each window in float32 (or under autocast), so the weighted mean of
  windows that agree is that value to the last bit: an identity network gives back its input
  exactly (float32 blending would not).
- **Inpainting runs only around the region**: the windows cover the region's bounding box
  widened by half a patch on each side (clamped to the volume); the voxels outside the region
  are kept from the input anyway.

Memory on the device: the float64 input (8 bytes x S x D x H x W), the float64 output and its
weight map (8 x (C + 1) x D x H x W), and one batch of windows through the generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from medp2p.data.codecs import BACKGROUND
from medp2p.data.geometry import mirror_dim
from medp2p.data.prepare import Prep
from medp2p.device.precision import autocast

if TYPE_CHECKING:
    from medp2p.infer.volume import RunOptions

#: Overlap of neighbouring windows along each axis (nnU-Net's step of half a patch).
OVERLAP = 0.5
#: Gaussian blending: sigma as a fraction of the patch size along each axis (nnU-Net, MONAI: 1/8).
SIGMA_SCALE = 0.125
#: Voxels per forward pass when no batch size is given on a CPU (the 2D default's 16 x 256 x 256).
AUTO_BATCH_VOXELS = 16 * 256 * 256


def windows_per_batch(options: RunOptions, patch: tuple[int, int, int], channels: int) -> int:
    """Windows per forward pass: ``options.batch_size``, else sized from free memory (CUDA) or :data:`AUTO_BATCH_VOXELS`."""
    if options.batch_size:
        return int(options.batch_size)
    d, h, w = patch
    if options.device.type == "cuda":
        from medp2p.infer.volume import cuda_batch

        return cuda_batch(options.device, d * h, w, channels, options.flip_tta)
    return max(1, AUTO_BATCH_VOXELS // (d * h * w))


def region_box(extra: torch.Tensor, patch: tuple[int, int, int]) -> tuple[slice, slice, slice] | None:
    """The region's ``(D, H, W)`` bounding box widened by half a patch each side (clamped); None without region."""
    mask = extra[0] > 0
    if not bool(mask.any()):
        return None
    box = []
    for axis, size in enumerate(patch):
        other = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(mask.any(dim=other[1]).any(dim=other[0])).flatten()
        lo, hi = int(hits[0]) - size // 2, int(hits[-1]) + 1 + size // 2
        box.append(slice(max(lo, 0), min(hi, mask.shape[axis])))
    return box[0], box[1], box[2]


def run_windows(
    generator: torch.nn.Module, stack: torch.Tensor, extra: torch.Tensor | None, prep: Prep, options: RunOptions
) -> torch.Tensor:
    """The generator over overlapping 3D windows of a model-space stack: the ``(C, D, H, W)`` output.

    ``options`` is a :class:`~medp2p.infer.volume.RunOptions` (device, autocast dtype, windows per
    batch, flip TTA, a fixed batch size for a compiled generator). With a region channel
    (inpainting) only the windows around the region run; elsewhere the output is the input's first
    channel. A volume smaller than the patch is padded with the model-space background.
    """
    from monai.inferers import sliding_window_inference

    assert prep.patch_size is not None, "3D windows need prep.patch_size"
    patch = prep.patch_size
    mirror = mirror_dim(prep.axis, options.flip_tta)
    flip = None if mirror is None else mirror + 1  # (B, C, H, W) -> (B, C, D, H, W)
    dev = options.device
    x = stack if extra is None else torch.cat([stack, extra])
    box: tuple[slice, ...] = (slice(None),) * 3
    if extra is not None:
        found = region_box(extra, patch)
        if found is None:
            return stack[:1].clone()
        box = found
    batch = windows_per_batch(options, patch, x.shape[0])
    memory_format = torch.channels_last_3d if options.channels_last else torch.contiguous_format
    generator.eval()

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        n = windows.shape[0]
        if options.fixed_batch and n < batch:  # a compiled generator keeps one shape: pad with the last window
            windows = torch.cat([windows, windows[-1:].expand(batch - n, *windows.shape[1:])])
        w = windows.float().contiguous(memory_format=memory_format)
        with autocast(dev, options.dtype):
            y = generator(w).float()
            if options.flip_tta:
                assert flip is not None
                y = 0.5 * (y + generator(w.flip(flip)).float().flip(flip))
        return y[:n].double()  # type: ignore[no-any-return]

    inputs = x[(slice(None), box[0], box[1], box[2])][None].to(dev).double()  # up as float32, blended as float64
    with torch.inference_mode():
        blended = sliding_window_inference(
            inputs, patch, batch, predictor, overlap=OVERLAP, mode="gaussian", sigma_scale=SIGMA_SCALE,
            padding_mode="constant", cval=BACKGROUND, sw_device=dev, device=dev,
        )  # fmt: skip
    assert isinstance(blended, torch.Tensor)
    part = blended[0].float().cpu()
    del blended, inputs
    if extra is None:
        return part
    out = passthrough(stack, part.shape[0])
    out[:, box[0], box[1], box[2]] = part
    return out


def passthrough(stack: torch.Tensor, channels: int) -> torch.Tensor:
    """The output where an inpainting generator does not run: the input's first channel, then the smallest error scale.

    ``channels`` > 1: the generator also outputs its learned error scale (``loss.aleatoric``),
    whose lowest value (-1) stands for the voxels the input keeps.
    """
    out = stack[:1].clone()
    if channels > 1:
        out = torch.cat([out, torch.full((channels - 1, *stack.shape[1:]), -1.0, dtype=stack.dtype, device=stack.device)])
    return out
