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
from medp2p.metrics import (
    brasyn_brain_metrics,
    brasyn_metrics,
    brats_inpainting_metrics,
    inpainting_metrics,
    inpainting_scaled,
    own_percentile_scale,
    segmentation_metrics,
    synthrad_metrics,
)
from medp2p.metrics.lesionwise import brats2023_lesionwise, region_masks
from medp2p.metrics.synthrad2025 import synthrad2025_metrics
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
    return Scored(ref.array, prediction.array, _source(case, ref), _kept(mask, ctx), spacing_mm=ref.spacing_mm, affine=ref.affine)


def label_scoring(case: CaseVolumes, prediction: Volume, ctx: ScoreContext) -> Scored:
    """Masks: prediction and reference labels > 0 (within the scored slab); the outline is the reference.

    The label maps themselves (cut to the slab) and the data's declared regions go along for
    per-region and lesion-wise metrics.
    """
    ref = _reference(case)
    reference = _kept(ref.array > 0, ctx)
    predicted = _kept(prediction.array > 0, ctx)
    labels = (ref.array, prediction.array)
    if ctx.keep is not None:
        labels = (np.where(ctx.keep > 0, ref.array, 0), np.where(ctx.keep > 0, prediction.array, 0))
    return Scored(
        reference.astype(np.float32),
        predicted.astype(np.float32),
        _source(case, ref),
        reference,
        spacing_mm=ref.spacing_mm,
        affine=ref.affine,
        labels=labels,
        regions=ctx.regions,
    )


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
    return Scored(ref.array, prediction.array, voided, _kept(region > 0, ctx), voided=voided, spacing_mm=ref.spacing_mm, affine=ref.affine)


def brain_scoring(case: CaseVolumes, prediction: Volume, ctx: ScoreContext) -> Scored:
    """MR contrast synthesis: inside the case's brain (or body) mask, else the reference's own body mask.

    The case's tumour segmentation, when it has one (``tumor``), goes along for BraSyn.
    """
    ref = _reference(case)
    mask = case.mask.array > 0 if case.mask is not None else body_mask(ref.array)
    tumor = case.scored_labels.get("tumor")
    return Scored(
        ref.array,
        prediction.array,
        _source(case, ref),
        _kept(mask, ctx),
        spacing_mm=ref.spacing_mm,
        affine=ref.affine,
        tumor=None if tumor is None else _kept(tumor.array > 0, ctx),
    )


def _synthrad(s: Scored) -> dict[str, float]:
    return synthrad_metrics(s.reference, s.prediction, s.mask)


def _segmentation(s: Scored) -> dict[str, float]:
    out = segmentation_metrics(s.reference, s.prediction, s.spacing_mm)
    if s.labels is not None and s.regions:
        ref, pred = region_masks(s.labels[0], s.regions), region_masks(s.labels[1], s.regions)
        for name in ref:
            out.update({f"{k}_{name}": v for k, v in segmentation_metrics(ref[name], pred[name], s.spacing_mm).items()})
    return out


def _lesionwise(s: Scored) -> dict[str, float]:
    ref, pred = s.labels if s.labels is not None else (s.reference, s.prediction)
    return brats2023_lesionwise(ref, pred, s.spacing_mm, s.regions)


def _inpainting(s: Scored) -> dict[str, float]:
    assert s.voided is not None and s.mask is not None
    return inpainting_metrics(s.reference, s.prediction, s.voided, s.mask)


def _brats_inpainting(s: Scored) -> dict[str, float]:
    assert s.mask is not None
    return brats_inpainting_metrics(s.reference, s.prediction, s.mask)


def _synthrad2025(s: Scored) -> dict[str, float]:
    return synthrad2025_metrics(s.reference, s.prediction, s.mask)


def _brasyn(s: Scored) -> dict[str, float]:
    split = s.tumor if s.tumor is not None else s.mask
    assert split is not None
    return brasyn_metrics(s.reference, s.prediction, split)


def _brasyn_brain(s: Scored) -> dict[str, float]:
    assert s.mask is not None
    return brasyn_brain_metrics(s.reference, s.prediction, s.mask)


def _own_scaled(s: Scored) -> tuple[np.ndarray, np.ndarray]:
    """BraSyn's units: each image clipped to its own 0.5/99.5 percentiles and scaled to [0, 1]."""
    return own_percentile_scale(s.reference).astype(np.float32), own_percentile_scale(s.prediction).astype(np.float32)


def _inpainting_scaled(s: Scored) -> tuple[np.ndarray, np.ndarray]:
    """The deployed BraTS-Inpainting scorer's units: the reference's percentiles outside the mask."""
    assert s.mask is not None
    return inpainting_scaled(s.reference, s.prediction, np.where(s.mask > 0, 0.0, s.reference.astype(np.float32)))


def _inpainting_2d_scaled(s: Scored) -> tuple[np.ndarray, np.ndarray]:
    """The 2023 inpainting package's units: the voided input's percentiles."""
    assert s.voided is not None
    return inpainting_scaled(s.reference, s.prediction, s.voided)


SYNTHRAD2023 = MetricDefinition(
    "synthrad2023",
    "SynthRAD2023: MAE in HU over body-mask voxels (no clipping); PSNR with both volumes clipped to "
    "[-1024, 3000] HU, data range 4024, over mask voxels; SSIM (scikit-image, 7-voxel window) of the "
    "clipped volumes with outside-mask voxels set to -1024, shifted by +1024, data range 4024, averaged "
    "over the mask after a 3-voxel border crop. mae_air/soft_tissue/bone (medp2p's): MAE where the "
    "reference is < -500, -500..300, > 300 HU.",
    ("mae", "psnr", "ssim", "mae_air", "mae_soft_tissue", "mae_bone"),
    _synthrad,
    "SynthRAD2023/metrics image_metrics.py",
)
SYNTHRAD2025 = MetricDefinition(
    "synthrad2025",
    "SynthRAD2025: outside-mask voxels set to -1024 HU; MAE over mask voxels (no clipping); PSNR with both "
    "clipped to [-1024, 3071] HU, data range 4095, over mask voxels; masked MS-SSIM: clipped, shifted by "
    "+1024, edge-padded to >= 97 voxels per axis, 5 scales (weights 0.0448, 0.2856, 0.3001, 0.2363, "
    "0.1333), 7-voxel uniform window, luminance, contrast and structure each clipped at 0 and raised to "
    "the scale's weight (luminance too, as their code does), averaged over the mask after a 3-voxel crop, "
    "2x2x2 mean and subsampling between scales, the product of the clipped means. "
    "mae_air/soft_tissue/bone (medp2p's): MAE by reference HU class. Not included: the TotalSegmentator "
    "and dose metrics, and the ranking's normalisation across teams.",
    ("mae", "psnr", "ms_ssim", "mae_air", "mae_soft_tissue", "mae_bone"),
    _synthrad2025,
    "SynthRAD2025/evaluation image_metrics.py (commit 17cac47)",
)
SEGMENTATION = MetricDefinition(
    "dice-hd95",
    "Dice of prediction vs reference label > 0 (both empty: 1); HD95: 95th percentile symmetric surface "
    "distance in mm (MONAI), 0 when both are empty, the volume diagonal when one is. With label regions "
    'declared in the datalist ("regions"), also dice_<region> and hd95_<region>.',
    ("dice", "hd95"),
    _segmentation,
    "medp2p (MONAI compute_dice, compute_hausdorff_distance)",
)
BRATS2023_LESIONWISE = MetricDefinition(
    "brats2023-lesionwise",
    "BraTS 2023 lesion-wise (GLI parameters: dilation 3, lesions <= 50 mm3 left out): 26-connected "
    "components, reference lesions merged by dilation, prediction components touching a dilated lesion "
    "matched to it; lesion_dice = sum(Dice) / (lesions + false positives), lesion_hd95 = (sum(HD95) + "
    "374 x false positives) / (lesions + false positives); legacy_dice / legacy_hd95 over the whole mask. "
    "All HD95 here are DeepMind surface-distance (area-weighted surfels), not MONAI's. Per declared "
    "region (WT/TC/ET) as <column>_<region>; the unsuffixed columns are the first region's (labels > 0 "
    "without regions).",
    ("lesion_dice", "lesion_hd95", "legacy_dice", "legacy_hd95", "num_tp", "num_fp", "num_fn"),
    _lesionwise,
    "rachitsaluja/BraTS-2023-Metrics eval.py (commit 0e272e6)",
)
BRATS_INPAINTING = MetricDefinition(
    "brats-inpainting",
    "BraTS-Inpainting 2023/2024 deployed scorer: both images multiplied by the healthy mask, clipped to "
    "the 0.5/99.5 percentiles of the reference outside the mask (lower >= 0), scaled to [0, 1]; SSIM: "
    "torchmetrics' 3D SSIM (Gaussian 11x11x11, sigma 1.5, mirrored borders, data range the larger image "
    "range), the map averaged over mask voxels; MSE over mask voxels; PSNR with data range 1 (PSNR_01, "
    "the published one).",
    ("ssim", "psnr", "mse"),
    _brats_inpainting,
    "Sage-Bionetworks-Challenges/brats2023 evaluation/inpainting/score.py (commit fe7d966) calling "
    "BraTS-inpainting/2023_challenge evaluation/evaluation_utils.py compute_metrics (commit dc976ce)",
    _inpainting_scaled,
)
BRATS_INPAINTING_2D = MetricDefinition(
    "brats-inpainting-2d",
    "BraTS-Inpainting 2023 as the inpainting package's README calls it (4-D tensors: per-plane 2D SSIM, "
    "not the leaderboard's): both images masked to the region, clipped to the 0.5/99.5 percentiles of "
    "the voided input (lower >= 0) and scaled to [0, 1]; SSIM (Gaussian sigma 1.5, 11x11, per (Y, Z) "
    "plane) averaged over the region; PSNR (reference-region range) and MSE over region voxels.",
    ("ssim", "psnr", "mse"),
    _inpainting,
    "BraTS-inpainting/inpainting challenge_metrics_2023.py (README usage)",
    _inpainting_2d_scaled,
)
BRASYN = MetricDefinition(
    "brasyn",
    "BraSyn (BraTS missing-modality synthesis): each image clipped to its own 0.5/99.5 percentiles "
    "(lower >= 0) and scaled to [0, 1]; ssim_tumor: torchmetrics' 3D SSIM (Gaussian 11, sigma 1.5, "
    "mirrored borders, data range the larger image range) of both images times the tumour mask, "
    "ssim_non_tumor: of both times (1 - mask); each the mean of the map cropped by 5 voxels at every "
    "border, as torchmetrics reduces it (their indexing by the int64 mask cannot run as published). "
    "Without a tumour segmentation (case key 'tumor'), the brain mask splits.",
    ("ssim_tumor", "ssim_non_tumor"),
    _brasyn,
    "hongweilibran/BraSyn ssim.py (commit 4d9af6d)",
    _own_scaled,
)
BRASYN_BRAIN = MetricDefinition(
    "brasyn-brain",
    "medp2p's variant with BraSyn's normalisation (each image clipped to its own 0.5/99.5 percentiles, "
    "lower >= 0, scaled to [0, 1]): both multiplied by the brain mask; 3D SSIM (Gaussian sigma 1.5, "
    "11-voxel window, scikit-image's reflect borders, data range the larger image range) averaged over "
    "mask voxels; PSNR (data range 1) and MSE over mask voxels. Training validation uses it.",
    ("ssim", "psnr", "mse"),
    _brasyn_brain,
    "medp2p (after hongweilibran/BraSyn ssim.py's normalisation)",
    _own_scaled,
)
