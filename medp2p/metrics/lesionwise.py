"""BraTS 2023 lesion-wise Dice and HD95, as the 2023 scorer computes them.

Source: ``rachitsaluja/BraTS-2023-Metrics`` ``eval.py`` (``get_LesionWiseScores`` and
``get_LesionWiseResults``, commit 0e272e6), per region (WT, TC, ET or one binary mask):

1. Connected components of the reference and of the prediction (26-connectivity).
2. Reference lesions closer than the dilation are merged: the reference is dilated ``dilation``
   times with the 18-neighbourhood (``generate_binary_structure(3, 2)``), its components labelled,
   and each reference voxel takes its dilated component's label.
3. For each merged reference lesion: the prediction components that touch the lesion dilated the
   same way are its match; Dice and HD95 of the lesion against the union of its matches (no match:
   Dice 0, HD95 374 mm). Prediction components matching no lesion are false positives.
4. Lesions of at most ``min_volume`` mm3 are left out (neither counted nor penalised); the score is
   ``sum(Dice) / (lesions + false positives)`` and ``(sum(HD95) + 374 * false positives) /
   (lesions + false positives)``; no lesion and no false positive scores Dice 1, HD95 0.

Parameters by sub-challenge (their ``challenge_name``): GLI, SSA, PED dilation 3 and 50 mm3;
MEN dilation 1 and 50 mm3; MET dilation 1 and 2 mm3.

Their HD95 (both the lesion-wise and the whole-mask ``legacy_hd95``) is the surface-distance one of
DeepMind's ``surface-distance`` package (the copy the scorer vendors): the 95th percentile of the
distances between surface elements weighted by their area, the larger of the two directions. It
is not MONAI's HD95 (surface voxels, unweighted) that the ``dice-hd95`` definition reports.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: The HD95 (mm) of a missed lesion or a false positive, and the value an infinite HD95 becomes.
MISSED_HD95 = 374.0
_CONNECTIVITY = np.ones((3, 3, 3), bool)  # 26-connectivity, as cc3d's connectivity=26
_DILATION = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LesionParams:
    """A sub-challenge's lesion-wise parameters: dilation iterations and the smallest lesion volume (mm3) counted."""

    dilation: int
    min_volume: float

    def __post_init__(self) -> None:
        if self.dilation < 1:  # scipy reads 0 iterations as "until nothing changes"
            raise ValueError(f"lesion dilation must be at least 1 iteration, got {self.dilation}")


#: BraTS 2023's parameters by sub-challenge (``get_LesionWiseResults``).
BRATS2023_PARAMS = {
    "GLI": LesionParams(3, 50.0),
    "SSA": LesionParams(3, 50.0),
    "PED": LesionParams(3, 50.0),
    "MEN": LesionParams(1, 50.0),
    "MET": LesionParams(1, 2.0),
}
#: BraTS 2023's label regions (GLI convention: 1 necrosis, 2 oedema, 3 enhancing tumour).
BRATS2023_REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def surface_hd95(reference: np.ndarray, prediction: np.ndarray, spacing_mm: tuple[float, ...]) -> float:
    """DeepMind surface-distance HD95 (mm) of two binary masks: 0 when both are empty, inf when one is."""
    ref, pred = np.asarray(reference, bool), np.asarray(prediction, bool)
    if not ref.any() and not pred.any():
        return 0.0
    if not ref.any() or not pred.any():
        return float("inf")
    import surface_distance  # type: ignore[import-untyped]

    with warnings.catch_warnings():
        # the package calls scipy.ndimage.filters / .morphology, namespaces scipy deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        distances = surface_distance.compute_surface_distances(ref, pred, tuple(float(s) for s in spacing_mm))
    return float(surface_distance.compute_robust_hausdorff(distances, 95))


def _finite(hd95: float) -> float:
    """The scorer's ``replace(np.inf, 374)``: only an infinite HD95 (one mask empty) becomes 374 mm."""
    return MISSED_HD95 if np.isinf(hd95) else hd95


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0


def lesionwise_scores(
    reference: np.ndarray, prediction: np.ndarray, spacing_mm: tuple[float, ...], params: LesionParams = BRATS2023_PARAMS["GLI"]
) -> dict[str, float]:
    """Lesion-wise and whole-mask Dice / HD95 of one binary region (see the module text).

    Returns:
        ``lesion_dice``, ``lesion_hd95``, ``legacy_dice``, ``legacy_hd95`` (mm, inf as 374),
        ``num_tp``, ``num_fp``, ``num_fn`` (lesions above the volume threshold).

    Example:
        >>> lesionwise_scores(ref_wt, pred_wt, (1.0, 1.0, 1.0))["lesion_dice"]
        0.78
    """
    ref, pred = np.asarray(reference) > 0, np.asarray(prediction) > 0
    if ref.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    voxel_mm3 = float(np.prod(spacing_mm))
    legacy_dice = 1.0 if not ref.any() and not pred.any() else _dice(pred, ref)
    legacy_hd95 = _finite(surface_hd95(ref, pred, spacing_mm))
    pred_cc, _ = ndimage.label(pred, _CONNECTIVITY)
    ref_cc, _ = ndimage.label(ref, _CONNECTIVITY)
    dilated_cc, n_dilated = ndimage.label(ndimage.binary_dilation(ref, _DILATION, iterations=params.dilation), _CONNECTIVITY)
    merged = np.where(ref_cc > 0, dilated_cc, 0)
    matched: set[int] = set()
    dices, hds = [], []
    tp = fn = 0
    for lesion in range(1, n_dilated + 1):
        gt = merged == lesion
        if not gt.any():
            continue
        near = ndimage.binary_dilation(gt, _DILATION, iterations=params.dilation)
        hits = np.unique(pred_cc[near & (pred_cc > 0)])
        matched.update(int(h) for h in hits)
        found = np.isin(pred_cc, hits) if hits.size else np.zeros_like(gt)
        counted = gt.sum() * voxel_mm3 > params.min_volume
        if counted:
            dices.append(_dice(found, gt))
            hds.append(_finite(surface_hd95(gt, found, spacing_mm)))
            tp, fn = (tp + 1, fn) if hits.size else (tp, fn + 1)
    fp = len(set(np.unique(pred_cc[pred_cc > 0]).tolist()) - matched)
    n = len(dices) + fp
    return {
        "lesion_dice": float(sum(dices) / n) if n else 1.0,
        "lesion_hd95": float((sum(hds) + MISSED_HD95 * fp) / n) if n else 0.0,
        "legacy_dice": float(legacy_dice),
        "legacy_hd95": float(legacy_hd95),
        "num_tp": float(tp),
        "num_fp": float(fp),
        "num_fn": float(fn),
    }


def region_masks(labels: np.ndarray, regions: dict[str, tuple[int, ...]] | None) -> dict[str, np.ndarray]:
    """Each region's binary mask from a label map; without regions, one region ``tumor`` (labels > 0).

    Example:
        >>> sorted(region_masks(np.array([0, 1, 2, 3]), BRATS2023_REGIONS))
        ['ET', 'TC', 'WT']
    """
    if not regions:
        return {"tumor": np.asarray(labels) > 0}
    return {name: np.isin(labels, values) for name, values in regions.items()}


def brats2023_lesionwise(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing_mm: tuple[float, ...],
    regions: dict[str, tuple[int, ...]] | None = None,
    params: LesionParams = BRATS2023_PARAMS["GLI"],
) -> dict[str, float]:
    """Lesion-wise scores per region, as columns ``<metric>_<region>``; the first region's also unsuffixed.

    Without ``regions``: one region, labels > 0, unsuffixed.

    Example:
        >>> brats2023_lesionwise(seg, pred, (1, 1, 1), BRATS2023_REGIONS)["lesion_dice_ET"]
        0.71
    """
    if not regions:
        return lesionwise_scores(np.asarray(reference) > 0, np.asarray(prediction) > 0, spacing_mm, params)
    ref_regions, pred_regions = region_masks(reference, regions), region_masks(prediction, regions)
    out: dict[str, float] = {}
    for i, name in enumerate(ref_regions):
        scores = lesionwise_scores(ref_regions[name], pred_regions[name], spacing_mm, params)
        if i == 0:
            out.update(scores)
        out.update({f"{k}_{name}": v for k, v in scores.items()})
    return out
