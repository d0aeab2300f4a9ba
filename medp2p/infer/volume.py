"""Whole-volume prediction: slices through the generator in batches, back onto the input's grid.

Memory stays bounded by the normalised source stack, one batch of slices (at most
:data:`AUTO_BATCH_PIXELS` by default) and the output stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medp2p.data.codecs import BACKGROUND
from medp2p.data.geometry import MIRROR_DIMS, GridMap, context_indices, gather_slices, to_model_space
from medp2p.data.intensity import IntensityWindow, body_mask
from medp2p.data.prepare import Prep, prepare_source
from medp2p.device.allocator import reuse_freed_memory
from medp2p.device.precision import autocast
from medp2p.types import Volume

#: Pixels per forward pass when no batch size is given: 16 slices of 256x256. Larger slices go in
#: smaller batches (4 of 512x512), which keeps a 512x512x300 prediction's activations at a
#: quarter for a few percent of speed (docs/results.md).
AUTO_BATCH = 16
AUTO_BATCH_PIXELS = AUTO_BATCH * 256 * 256


@dataclass(frozen=True)
class RunOptions:
    """How to run a generator: device, autocast dtype (None = fp32), batch size, memory format.

    ``batch_size``: slices per forward pass; None: :data:`AUTO_BATCH_PIXELS` worth, at most :data:`AUTO_BATCH`.

    ``flip_tta``: also run every batch mirrored left-right (the flip training augments with,
    :data:`~medp2p.data.geometry.MIRROR_DIMS`) and average the two outputs (logits for masks);
    twice the generator time. Sagittal slices hold no left-right axis: an error there.
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None
    batch_size: int | None = None
    channels_last: bool = False
    flip_tta: bool = False

    def batch_for(self, height: int, width: int) -> int:
        """Slices per forward pass for slices of ``height x width``."""
        return self.batch_size or max(1, min(AUTO_BATCH, AUTO_BATCH_PIXELS // (height * width)))


def _model_input(
    vols: list[Volume], prep: Prep, region: Volume | None
) -> tuple[torch.Tensor, torch.Tensor | None, GridMap, list[IntensityWindow]]:
    """The normalised source stack ``(S, D, H, W)``, the region channel (inpainting) and the way back."""
    bodies = None
    if prep.region:
        assert region is not None
        if region.shape != vols[0].shape:
            raise ValueError(f"{region.path}: region shape {region.shape} != image shape {vols[0].shape}")
        # The windows come from the tissue around the region, as in training (clean volumes): the
        # voided voxels (0) would otherwise drag the low percentile down to 0 and shift the input.
        kept = region.array <= 0
        bodies = [body_mask(v.array) & kept for v in vols]
    stack, grid, windows = prepare_source(vols, prep, bodies)
    extra = None
    if prep.region:
        assert region is not None
        extra = to_model_space((region.array > 0).astype(np.float32), grid, "nearest", 0.0)[None]
        stack = torch.where(extra > 0, torch.tensor(BACKGROUND), stack)
    return stack, extra, grid, windows


def run_slices(
    generator: torch.nn.Module, stack: torch.Tensor, extra: torch.Tensor | None, prep: Prep, options: RunOptions
) -> torch.Tensor:
    """The generator over every slice of a model-space stack, in batches: the ``(C, D, H, W)`` output.

    With a region channel (inpainting) only the slices that hold region are run; the others keep
    the input's first channel.
    """
    mirror = MIRROR_DIMS[prep.axis]
    if options.flip_tta and mirror is None:
        raise ValueError(f"flip TTA mirrors left-right, which {prep.axis} slices do not hold")
    depth = stack.shape[1]
    ctx = context_indices(depth, prep.context_slices)
    todo = torch.arange(depth) if extra is None else torch.nonzero(extra[0].flatten(1).amax(1) > 0).flatten()
    out = stack[:1].clone() if extra is not None else None
    generator.eval()
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    batch = options.batch_for(*stack.shape[-2:])
    with torch.inference_mode(), reuse_freed_memory():  # activations reuse malloc's heap (medp2p.device.allocator)
        for start in range(0, todo.numel(), batch):
            slices = todo[start : start + batch]
            x = gather_slices(stack, ctx[slices])
            if extra is not None:
                x = torch.cat([x, gather_slices(extra, ctx[slices])], dim=1)
            x = x.to(options.device, non_blocking=True).contiguous(memory_format=memory_format)
            with autocast(options.device, options.dtype):
                y = generator(x).float()
                if options.flip_tta:
                    assert mirror is not None
                    y = 0.5 * (y + generator(x.flip(mirror)).float().flip(mirror))
            y = y.cpu()
            if out is None:
                out = torch.empty((y.shape[1], depth, *y.shape[2:]))
            out[:, slices] = y.transpose(0, 1)
    assert out is not None
    return out


def predict_volume(
    generator: torch.nn.Module,
    sources: Volume | list[Volume],
    prep: Prep,
    region: Volume | None = None,
    options: RunOptions = RunOptions(),
) -> Volume:
    """Predict a whole volume slice by slice and return it on the first source's own grid.

    Args:
        generator: a trained generator (put in eval mode here).
        sources: the input image(s), ``prep.n_sources`` of them in channel order, on one grid.
        prep: the preparation the generator was trained with (from its checkpoint).
        region: inpainting: the region to fill (voxels > 0); required when ``prep.region``.
        options: device, precision, batch size.

    Returns:
        A :class:`Volume` with the first source's shape, affine and metadata, in the target's
        units as the codec decodes them (HU, a 0/1 mask, MR); an inpainting model replaces only
        the region.

    Example:
        >>> sct = predict_volume(generator, read_volume("patient/mr.nii.gz"), prep)
        >>> write_nifti(sct, "out/patient/sct.nii.gz")
    """
    vols = [sources] if isinstance(sources, Volume) else list(sources)
    if len(vols) != prep.n_sources:
        raise ValueError(f"the model takes {prep.n_sources} source image(s) {list(prep.source_keys)}, got {len(vols)}")
    if prep.region and region is None:
        raise ValueError("inpainting needs the region to fill (a mask volume)")
    stack, extra, grid, windows = _model_input(vols, prep, region)
    out = run_slices(generator, stack, extra, prep, options)
    del stack, extra  # the model-space input: memory for the way back
    channel = out[0]
    del out
    result = prep.codec.decode(channel, grid, windows, prep.fitted_target_window)
    if prep.region:  # inpainting: only the region is replaced
        assert region is not None
        result = np.where(region.array > 0, result, vols[0].array).astype(np.float32, copy=False)
    return vols[0].with_array(result)
