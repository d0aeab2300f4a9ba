"""What each task's metrics see, and its metric definitions (named by challenge and year).

A scoring function turns a read reference case and a prediction into :class:`Scored` arrays
(reference, prediction, the mask the metrics are taken in); a :class:`MetricDefinition` computes
the numbers from them. Validation during training and ``medp2p evaluate`` both go through here.
"""

from __future__ import annotations

import numpy as np

from medp2p.data.case_reader import CaseVolumes
from medp2p.data.corruption import seeded_corruption
from medp2p.data.intensity import body_mask, ct_body
from medp2p.io import read_volume
from medp2p.metrics import brasyn_metrics, inpainting_metrics, segmentation_metrics, synthrad_metrics
from medp2p.tasks.task import MetricDefinition, ScoreContext, Scored
from medp2p.types import Volume


def _reference(case: CaseVolumes) -> Volume:
    if case.target is None:
        raise ValueError(f"case {case.id!r}: no reference image was read")
    return case.target


def _kept(mask: np.ndarray, ctx: ScoreContext) -> np.ndarray:
    return mask & (ctx.keep > 0) if ctx.keep is not None else mask


def _source(case: CaseVolumes, reference: Volume) -> np.ndarray:
    return case.sources[0].array if case.sources else reference.array


def body_scoring(case: CaseVolumes, prediction: Volume, ctx: ScoreContext) -> Scored:
    """Synthetic CT: inside the case's body mask, or (without one) reference CT > -500 HU."""
    ref = _reference(case)
    mask = case.mask.array > 0 if case.mask is not None else ct_body(ref.array)
    return Scored(ref.array, prediction.array, _source(case, ref), _kept(mask, ctx), spacing_mm=ref.spacing_mm)


def label_scoring(case: CaseVolumes, prediction: Volume, ctx: ScoreContext) -> Scored:
    """Masks: prediction and reference labels > 0 (within the scored slab); the outline is the reference."""
    ref = _reference(case)
    reference = _kept(ref.array > 0, ctx)
    predicted = _kept(prediction.array > 0, ctx)
    return Scored(reference.astype(np.float32), predicted.astype(np.float32), _source(case, ref), reference, spacing_mm=ref.spacing_mm)


def region_scoring(case: CaseVolumes, prediction: Volume, ctx: ScoreContext) -> Scored:
    """Inpainting: inside the filled region, normalised by the voided input the model saw.

    The region is the one the prediction was made with (``ctx`` in validation), else the case's
    own (``region_healthy``, else ``region``, with its ``voided`` input), else the seeded box
    ``medp2p predict`` voids, which must agree with the ``region.nii.gz`` written beside it.
    """
    ref = _reference(case)
    scored = case.scored_region if case.scored_region is not None else case.region
    if ctx.region is not None and ctx.voided is not None:
        region, voided = ctx.region.array, ctx.voided.array
    elif scored is not None and case.voided is not None:
        region, voided = scored.array, case.voided.array
    else:
        voided_vol, region_vol = seeded_corruption(ref, case.id, ctx.seed)
        region, voided = region_vol.array, voided_vol.array
        used = ctx.prediction_dir / "region.nii.gz" if ctx.prediction_dir is not None else None
        if used is not None and used.exists() and not np.array_equal(read_volume(used).array > 0, region > 0):
            raise ValueError(
                f"{used}: the prediction was made with another region than seed {ctx.seed} gives; pass the seed it used (--seed)"
            )
    return Scored(ref.array, prediction.array, voided, _kept(region > 0, ctx), voided=voided, spacing_mm=ref.spacing_mm)


def brain_scoring(case: CaseVolumes, prediction: Volume, ctx: ScoreContext) -> Scored:
    """MR contrast synthesis: inside the case's brain (or body) mask, else the reference's own body mask."""
    ref = _reference(case)
    mask = case.mask.array > 0 if case.mask is not None else body_mask(ref.array)
    return Scored(ref.array, prediction.array, _source(case, ref), _kept(mask, ctx), spacing_mm=ref.spacing_mm)


def _synthrad(s: Scored) -> dict[str, float]:
    return synthrad_metrics(s.reference, s.prediction, s.mask)


def _segmentation(s: Scored) -> dict[str, float]:
    return segmentation_metrics(s.reference, s.prediction, s.spacing_mm)


def _inpainting(s: Scored) -> dict[str, float]:
    assert s.voided is not None and s.mask is not None
    return inpainting_metrics(s.reference, s.prediction, s.voided, s.mask)


def _brasyn(s: Scored) -> dict[str, float]:
    assert s.mask is not None
    return brasyn_metrics(s.reference, s.prediction, s.mask)


SYNTHRAD2023 = MetricDefinition(
    "synthrad2023",
    "SynthRAD2023: MAE in HU over body-mask voxels (no clipping); PSNR with both volumes clipped to "
    "[-1024, 3000] HU, data range 4024, over mask voxels; SSIM (scikit-image, 7-voxel window) of the "
    "clipped volumes with outside-mask voxels set to -1024, shifted by +1024, data range 4024, averaged "
    "over the mask after a 3-voxel border crop. mae_air/soft_tissue/bone: MAE where the reference is "
    "< -500, -500..300, > 300 HU.",
    ("mae", "psnr", "ssim", "mae_air", "mae_soft_tissue", "mae_bone"),
    _synthrad,
)
SEGMENTATION = MetricDefinition(
    "dice-hd95",
    "Dice of prediction vs reference label > 0 (both empty: 1); HD95: 95th percentile symmetric surface "
    "distance in mm (MONAI), 0 when both are empty, the volume diagonal when one is.",
    ("dice", "hd95"),
    _segmentation,
)
BRATS_INPAINTING_2D = MetricDefinition(
    "brats-inpainting-2d",
    "BraTS-Inpainting 2023 (the inpainting package's README form): both images masked to the region, clipped "
    "to the 0.5/99.5 percentiles of the voided input (lower >= 0) and scaled to [0, 1]; SSIM (Gaussian "
    "sigma 1.5, 11x11, per (Y, Z) plane) averaged over the region; PSNR (reference-region range) and MSE "
    "over region voxels.",
    ("ssim", "psnr", "mse"),
    _inpainting,
)
BRASYN = MetricDefinition(
    "brasyn",
    "BraSyn (BraTS missing-modality synthesis): each image clipped to its own 0.5/99.5 percentiles "
    "(lower >= 0) and scaled to [0, 1]; both multiplied by the brain mask; 3D SSIM (Gaussian sigma 1.5, "
    "11-voxel window, data range the larger image range) averaged over mask voxels; PSNR (data range 1) "
    "and MSE over mask voxels.",
    ("ssim", "psnr", "mse"),
    _brasyn,
)
