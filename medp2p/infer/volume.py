"""Whole-volume prediction: slices through the generator in batches, back onto the input's grid.

Memory stays bounded by the normalised source stack, one batch of slices (at most
:data:`AUTO_BATCH_PIXELS` by default) and the output stack.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from medp2p.data.codecs import BACKGROUND
from medp2p.data.geometry import GridMap, context_indices, gather_slices, mirror_dim, to_model_space
from medp2p.data.intensity import IntensityWindow, body_mask
from medp2p.data.prepare import Prep, prepare_source
from medp2p.device.allocator import reuse_freed_memory
from medp2p.device.precision import autocast
from medp2p.infer.windows import passthrough, run_windows
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
    fixed_batch: bool = False

    def batch_for(self, height: int, width: int, channels: int = 1) -> int:
        """Slices per forward pass for slices of ``height x width``: on CUDA sized from free memory."""
        if self.batch_size:
            return self.batch_size
        if self.device.type == "cuda":
            return cuda_batch(self.device, height, width, channels, self.flip_tta)
        return max(1, min(AUTO_BATCH, AUTO_BATCH_PIXELS // (height * width)))


#: Bytes of generator activations per slice pixel at inference (8-level U-Net, 64 channels, half
#: precision, every skip held), with room for cuDNN workspaces: an upper estimate, not a measurement.
CUDA_BYTES_PER_PIXEL = 1536
#: The most slices one CUDA forward pass takes when memory is plentiful.
CUDA_MAX_BATCH = 256


def cuda_batch(device: torch.device, height: int, width: int, channels: int = 1, flip_tta: bool = False) -> int:
    """Slices per forward pass that fit in half of the device's free memory (``torch.cuda.mem_get_info``).

    Example:
        >>> cuda_batch(torch.device("cuda:0"), 256, 256)  # 80 GB free
        256
    """
    free, _ = torch.cuda.mem_get_info(device)
    per_slice = height * width * (CUDA_BYTES_PER_PIXEL + 8 * channels) * (2 if flip_tta else 1)
    return int(max(1, min(CUDA_MAX_BATCH, (free // 2) // per_slice)))


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
    the input's first channel. A 3D generator (``prep.patch_size``) runs over overlapping windows
    instead (:func:`~medp2p.infer.windows.run_windows`).
    """
    if prep.patch_size is not None:
        return run_windows(generator, stack, extra, prep, options)
    mirror = mirror_dim(prep.axis, options.flip_tta)
    depth = stack.shape[1]
    on_gpu = options.device.type != "cpu"
    if on_gpu:  # the model-space stack goes up once and stays there until the output comes back
        stack = stack.pin_memory().to(options.device, non_blocking=True)
        extra = extra.pin_memory().to(options.device, non_blocking=True) if extra is not None else None
    ctx = context_indices(depth, prep.context_slices).to(stack.device)
    todo = torch.arange(depth, device=stack.device) if extra is None else torch.nonzero(extra[0].flatten(1).amax(1) > 0).flatten()
    out: torch.Tensor | None = None  # made at the first batch, with as many channels as the generator gives
    generator.eval()
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    height, width = stack.shape[-2], stack.shape[-1]
    batch = options.batch_for(height, width, channels=stack.shape[0] * ctx.shape[1])
    with torch.inference_mode(), reuse_freed_memory() if not on_gpu else contextlib.nullcontext():
        for start in range(0, todo.numel(), batch):
            slices = todo[start : start + batch]
            n = slices.numel()
            if options.fixed_batch and n < batch:  # a compiled generator keeps one shape: pad with the last slice
                slices = torch.cat([slices, slices[-1:].expand(batch - n)])
            x = gather_slices(stack, ctx[slices])
            if extra is not None:
                x = torch.cat([x, gather_slices(extra, ctx[slices])], dim=1)
            x = x.to(options.device, non_blocking=True).contiguous(memory_format=memory_format)
            with autocast(options.device, options.dtype):
                y = generator(x).float()
                if options.flip_tta:
                    assert mirror is not None
                    y = 0.5 * (y + generator(x.flip(mirror)).float().flip(mirror))
            if out is None:
                ch = y.shape[1]
                out = passthrough(stack, ch) if extra is not None else torch.empty((ch, depth, *y.shape[2:]), device=stack.device)
            out[:, slices[:n]] = y[:n].transpose(0, 1)
    if out is None:  # inpainting, and no slice holds region: the input as it is
        assert extra is not None
        out = passthrough(stack, 1)
    return out.cpu() if on_gpu else out  # one copy back per volume


@dataclass
class ModelInput:
    """A volume ready for the generator: the model-space stack and what takes the output back.

    ``stack`` ``(S, D, H, W)``; ``extra`` the region channel (inpainting); ``grid`` and
    ``windows`` the way back to the input's grid and units; ``first`` the first source (the
    output's grid, header and, for inpainting, the voxels kept outside the region).
    """

    stack: torch.Tensor
    extra: torch.Tensor | None
    grid: GridMap
    windows: list[IntensityWindow]
    first: Volume
    region: Volume | None

    def release(self) -> None:
        """Drop the model-space input once the generator has run: memory for the way back."""
        self.stack, self.extra = torch.empty(0), None


def prepare_input(sources: Volume | list[Volume], prep: Prep, region: Volume | None = None) -> ModelInput:
    """Check the sources against ``prep`` and put them into model space (the CPU half before the generator)."""
    vols = [sources] if isinstance(sources, Volume) else list(sources)
    if len(vols) != prep.n_sources:
        raise ValueError(f"the model takes {prep.n_sources} source image(s) {list(prep.source_keys)}, got {len(vols)}")
    if prep.region and region is None:
        raise ValueError("inpainting needs the region to fill (a mask volume)")
    stack, extra, grid, windows = _model_input(vols, prep, region)
    return ModelInput(stack, extra, grid, windows, vols[0], region if prep.region else None)


def finish_prediction(out: torch.Tensor, inp: ModelInput, prep: Prep) -> Volume:
    """The generator's ``(C, D, H, W)`` output back on the input's grid, in the target's units (the CPU half after)."""
    channel = out[0]
    del out
    result = prep.codec.decode(channel, inp.grid, inp.windows, prep.fitted_target_window)
    if inp.region is not None:  # inpainting: only the region is replaced
        result = np.where(inp.region.array > 0, result, inp.first.array).astype(np.float32, copy=False)
    return inp.first.with_array(result)


def predict_volume(
    generator: torch.nn.Module,
    sources: Volume | list[Volume],
    prep: Prep,
    region: Volume | None = None,
    options: RunOptions = RunOptions(),
) -> Volume:
    """Predict a whole volume slice by slice and return it on the first source's own grid.

    :func:`prepare_input`, :func:`run_slices`, :func:`finish_prediction` in turn (``medp2p
    predict`` runs the three for consecutive cases at once).

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
    inp = prepare_input(sources, prep, region)
    out = run_slices(generator, inp.stack, inp.extra, prep, options)
    inp.release()
    return finish_prediction(out, inp, prep)
