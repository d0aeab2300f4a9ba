"""The challenges' metric definitions against independent computations.

- BraTS-Inpainting's deployed scorer and BraSyn: torchmetrics 0.11.4 (the version the deployed
  scorer pins), called the way their code calls it, on float32 ``(1, 1, X, Y, Z)`` tensors.
- SynthRAD2025's MS-SSIM: a direct numpy / scipy transcription of the steps their
  ``image_metrics.py`` takes (``uniform_filter``, ``fftconvolve``, ``crop``), written here from the
  published description, plus the check that it differs from a textbook MS-SSIM where it should.
- BraTS 2023 lesion-wise: hand-built lesions whose scores follow from the rules.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.ndimage import uniform_filter
from scipy.signal import fftconvolve

from medp2p.data.phantom import PhantomSpec, make_phantom_case
from medp2p.metrics import brasyn_metrics, brats2023_lesionwise, brats_inpainting_metrics, lesionwise_scores, synthrad2025_metrics
from medp2p.metrics.lesionwise import BRATS2023_REGIONS, MISSED_HD95, LesionParams
from medp2p.metrics.synthrad2025 import SCALE_WEIGHTS, TEXTBOOK_LUMINANCE, ms_ssim_synthrad2025

pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # numpy functions on tensors, as their code calls them

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torchmetrics 0.11 imports pkg_resources
    import torchmetrics
    from torchmetrics import MeanSquaredError
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure


def test_the_pinned_torchmetrics_is_the_deployed_scorers() -> None:
    assert torchmetrics.__version__ == "0.11.4"  # Sage-Bionetworks-Challenges/brats2023 evaluation/inpainting/requirements.txt


# ---- BraTS-Inpainting, deployed ---------------------------------------------------------------


def _percentile_clip(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    lo, hi = np.percentile(reference, [0.5, 99.5])
    lo = max(lo, 0)
    return (np.clip(x, lo, hi) - lo) / (hi - lo)


def _deployed_inpainting(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``evaluation_utils.compute_metrics`` as score.py calls it: tensors from get_fdata, the mask as bool."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.Tensor(a).unsqueeze(0).unsqueeze(0)

    gt_t, pred_t, m = t(gt), t(pred), t(mask).bool()
    pred_in, gt_in = pred_t * m, gt_t * m
    reference = gt_t * ~m
    gt_in, pred_in = _percentile_clip(gt_in, reference), _percentile_clip(pred_in, reference)
    _, full = StructuralSimilarityIndexMeasure(return_full_image=True)(preds=pred_in, target=gt_in)
    g, p = gt_in[m], pred_in[m]
    return {
        "ssim": float(full[m].mean()),
        "mse": float(MeanSquaredError()(preds=p, target=g)),
        "psnr": float(PeakSignalNoiseRatio(data_range=1.0)(preds=p, target=g)),
    }


def _inpainting_cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    cases = []
    for shape in ((24, 30, 28), (33, 21, 26)):
        gt = ndimage.gaussian_filter(rng.uniform(0, 800, shape), 1.5)
        gt[:2] = 0  # background
        pred = gt + rng.normal(0, 40, shape)
        mask = np.zeros(shape)
        mask[6:18, 5:16, 7:20] = 1
        cases.append((gt, pred, mask))
    phantom = make_phantom_case(0, 1, PhantomSpec(shape=(40, 44, 24)))
    mr = phantom["mr"].array
    mask = np.zeros(mr.shape)
    mask[14:26, 16:28, 8:16] = 1
    blurred = ndimage.gaussian_filter(mr, 2.0)
    cases.append((mr, np.where(mask > 0, blurred, mr), mask))
    return cases


@pytest.mark.parametrize("case", range(3))
def test_brats_inpainting_matches_the_deployed_scorer(case: int) -> None:
    gt, pred, mask = _inpainting_cases()[case]
    got = brats_inpainting_metrics(gt, pred, mask)
    want = _deployed_inpainting(gt, pred, mask)
    assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-4)
    assert got["mse"] == pytest.approx(want["mse"], rel=1e-4)
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-3)


def test_the_deployed_inpainting_scorer_is_3d_not_per_plane() -> None:
    from medp2p.metrics import inpainting_metrics

    gt, pred, mask = _inpainting_cases()[0]
    three_d = brats_inpainting_metrics(gt, pred, mask)["ssim"]
    per_plane = inpainting_metrics(gt, pred, np.where(mask > 0, 0, gt), mask)["ssim"]
    assert abs(three_d - per_plane) > 0.01
    assert brats_inpainting_metrics(gt, gt, mask)["ssim"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):
        brats_inpainting_metrics(gt, pred, np.zeros_like(mask))


# ---- BraSyn ------------------------------------------------------------------------------------


def _brasyn_torchmetrics(gt: np.ndarray, pred: np.ndarray, seg: np.ndarray) -> tuple[float, float]:
    """BraSyn's ssim.py steps, reduced as torchmetrics reduces (the mean of the map cropped by the window radius)."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a[np.newaxis, np.newaxis].astype(np.float32))

    g, p = _percentile_clip(t(gt), t(gt)), _percentile_clip(t(pred), t(pred))
    m = t(seg)
    m[m > 0] = 1
    m = m.type(torch.int64)
    tumor = StructuralSimilarityIndexMeasure()(preds=p * m, target=g * m)
    non_tumor = StructuralSimilarityIndexMeasure()(preds=p * (1 - m), target=g * (1 - m))
    return float(tumor), float(non_tumor)


@pytest.mark.parametrize("case", range(3))
def test_brasyn_matches_torchmetrics_called_as_brasyn_calls_it(case: int) -> None:
    gt, pred, mask = _inpainting_cases()[case]
    pred = pred * 1.7 + 30  # another scale: each image is normalised by its own percentiles
    got = brasyn_metrics(gt, pred, mask)
    tumor, non_tumor = _brasyn_torchmetrics(gt, pred, mask)
    assert got["ssim_tumor"] == pytest.approx(tumor, abs=1e-4)
    assert got["ssim_non_tumor"] == pytest.approx(non_tumor, abs=1e-4)


def test_brasyn_as_published_cannot_index_its_own_result() -> None:
    """Why medp2p takes torchmetrics' own reduction: ssim.py's indexing fails on every non-empty mask."""
    gt, pred, mask = _inpainting_cases()[0]
    full = StructuralSimilarityIndexMeasure(return_full_image=True)(
        preds=torch.tensor(pred[None, None], dtype=torch.float32), target=torch.tensor(gt[None, None], dtype=torch.float32)
    )
    m = torch.tensor(mask[None, None]).type(torch.int64)
    with pytest.raises(TypeError):
        full[m]  # a tuple
    with pytest.raises(IndexError):
        full[1][m]  # int64 indices select along the batch axis


# ---- SynthRAD2025 ------------------------------------------------------------------------------


def _crop(a: np.ndarray, p: int) -> np.ndarray:
    return a[tuple(slice(p, n - p) for n in a.shape)]


def _transcribed_ms_ssim(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, luminance: tuple[float, ...] = SCALE_WEIGHTS) -> float:
    """SynthRAD2025 image_metrics.py's ms_ssim, step by step with the functions it calls."""
    lo, hi = -1024.0, 3071.0
    gt = np.where(mask == 0, -1024, gt).astype(np.float64)
    pred = np.where(mask == 0, -1024, pred).astype(np.float64)
    gt, pred = np.clip(gt, lo, hi), np.clip(pred, lo, hi)
    mask = np.where(mask > 0, 1.0, 0.0)
    gt, pred = np.where(mask == 0, lo, gt) - lo, np.where(mask == 0, lo, pred) - lo
    r = hi - lo
    pads = [(max((97 - d) // 2, 0), max(97 - d - (97 - d) // 2, 0)) for d in gt.shape]
    gt, pred, mask = (np.pad(a, pads, mode="edge") for a in (gt, pred, mask))
    weights = np.array(SCALE_WEIGHTS)
    vals = []
    for level in range(5):
        f = lambda a: uniform_filter(a, size=7)  # noqa: E731
        n = 7**3
        cov = n / (n - 1)
        ux, uy = f(gt), f(pred)
        vx, vy = cov * (f(gt * gt) - ux * ux), cov * (f(pred * pred) - uy * uy)
        vxy = cov * (f(gt * pred) - ux * uy)
        sx, sy = np.clip(vx, 0, None) ** 0.5, np.clip(vy, 0, None) ** 0.5
        c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
        c3 = c2 / 2
        lum = np.clip((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0, None)
        con = np.clip((2 * sx * sy + c2) / (vx + vy + c2), 0, None)
        st = np.clip((vxy + c3) / (sx * sy + c3), 0, None)
        smap = lum ** luminance[level] * con ** weights[level] * st ** weights[level]
        vals.append(_crop(smap, 3)[_crop(mask, 3).astype(bool)].mean(dtype=np.float64))
        gt, pred = (fftconvolve(a, np.ones((2, 2, 2)) / 8, mode="same") for a in (gt, pred))
        gt, pred, mask = (a[::2, ::2, ::2] for a in (gt, pred, mask))
    return float(np.prod([np.clip(v, 0, 1) for v in vals]))


def _ct_cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(5)
    shape = (40, 50, 30)
    ct = ndimage.gaussian_filter(rng.uniform(-1024, 2000, shape), 2)
    m = np.zeros(shape)
    m[3:36, 5:46, 2:28] = 1
    phantom = make_phantom_case(2, 0, PhantomSpec(shape=(48, 56, 24)))
    pct = phantom["ct"].array
    psct = ndimage.gaussian_filter(pct, 1.0) + 40  # blurred and offset
    return [(ct, ct + rng.normal(0, 120, shape) - 80, m), (pct, psct, phantom["mask"].array), (pct, pct * 0.8 + 200, phantom["mask"].array)]


@pytest.mark.parametrize("case", range(3))
def test_synthrad2025_ms_ssim_matches_a_transcription_of_their_steps(case: int) -> None:
    ct, sct, mask = _ct_cases()[case]
    want = _transcribed_ms_ssim(ct, sct, mask)
    assert ms_ssim_synthrad2025(ct, sct, mask) == pytest.approx(want, abs=1e-4)
    assert ms_ssim_synthrad2025(ct, sct, mask, slab=3) == pytest.approx(want, abs=1e-10)  # slabs change nothing


def test_synthrad2025_luminance_differs_from_a_textbook_ms_ssim() -> None:
    ct, sct, mask = _ct_cases()[2]  # a gain and an offset: the luminance term matters
    theirs = ms_ssim_synthrad2025(ct, sct, mask)
    textbook = ms_ssim_synthrad2025(ct, sct, mask, luminance_weights=TEXTBOOK_LUMINANCE)
    assert textbook == pytest.approx(_transcribed_ms_ssim(ct, sct, mask, TEXTBOOK_LUMINANCE), abs=1e-4)
    assert theirs < textbook - 1e-3  # four more luminance factors below 1
    assert ms_ssim_synthrad2025(ct, ct, mask) == pytest.approx(1.0)


def test_synthrad2025_mae_and_psnr_follow_their_code() -> None:
    ct, sct, mask = _ct_cases()[0]
    sct = sct.copy()
    sct[0, 0, 0] = 5000  # outside the mask: ignored; above 3071 inside: clipped for PSNR only
    sct[10, 10, 10] = 5000
    got = synthrad2025_metrics(ct, sct, mask)
    m = mask > 0
    gt_m, pr_m = np.where(m, ct, -1024), np.where(m, sct, -1024)
    assert got["mae"] == pytest.approx(np.sum(np.abs(gt_m * m - pr_m * m)) / m.sum(), rel=1e-9)
    g, p = np.clip(gt_m, -1024, 3071)[m], np.clip(pr_m, -1024, 3071)[m]
    assert got["psnr"] == pytest.approx(10 * np.log10(4095.0**2 / np.mean((g - p) ** 2)), rel=1e-9)
    assert set(got) == {"mae", "psnr", "ms_ssim", "mae_air", "mae_soft_tissue", "mae_bone"}


# ---- BraTS 2023 lesion-wise --------------------------------------------------------------------


def _lesions() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((40, 40, 40), np.uint8)
    ref[2:8, 2:8, 2:8] = 1  # lesion A, 216 mm3: found, one face short
    ref[20:26, 20:26, 20:26] = 1  # lesion B, 216 mm3: missed
    ref[34:37, 34:37, 34:37] = 1  # lesion C, 27 mm3: at most 50 mm3, left out
    pred = np.zeros_like(ref)
    pred[2:8, 2:8, 3:8] = 1
    pred[30:33, 2:5, 2:5] = 1  # a false positive
    return ref, pred


def test_lesionwise_scores_follow_the_brats_rules() -> None:
    ref, pred = _lesions()
    got = lesionwise_scores(ref, pred, (1.0, 1.0, 1.0))
    dice_a = 2 * 180 / (216 + 180)
    assert got["lesion_dice"] == pytest.approx((dice_a + 0 + 0) / 3)  # A, missed B, the false positive
    assert got["lesion_hd95"] == pytest.approx((1.0 + MISSED_HD95 + MISSED_HD95) / 3)  # A's surface is 1 mm off
    assert (got["num_tp"], got["num_fn"], got["num_fp"]) == (1, 1, 1)
    assert got["legacy_dice"] == pytest.approx(2 * 180 / (int(ref.sum()) + int(pred.sum())))
    # with 0.5 mm voxels every lesion is 1/8 the volume: all fall under 50 mm3 and only the false positive counts
    small = lesionwise_scores(ref, pred, (0.5, 0.5, 0.5))
    assert (small["lesion_dice"], small["lesion_hd95"], small["num_fp"]) == (0.0, MISSED_HD95, 1)
    empty = lesionwise_scores(np.zeros_like(ref), np.zeros_like(ref), (1.0, 1.0, 1.0))
    assert (empty["lesion_dice"], empty["lesion_hd95"], empty["legacy_dice"], empty["legacy_hd95"]) == (1.0, 0.0, 1.0, 0.0)


def test_lesions_closer_than_the_dilation_merge_and_share_their_match() -> None:
    ref = np.zeros((30, 30, 30), np.uint8)
    ref[5:12, 5:12, 5:12] = 1
    ref[5:12, 5:12, 16:23] = 1  # 4 voxels apart: one lesion after 3 dilations, two after 1
    pred = ref.copy()
    got = lesionwise_scores(ref, pred, (1.0, 1.0, 1.0))
    assert (got["num_tp"], got["num_fn"], got["num_fp"], got["lesion_dice"], got["lesion_hd95"]) == (1, 0, 0, 1.0, 0.0)
    apart = lesionwise_scores(ref, pred, (1.0, 1.0, 1.0), params=LesionParams(dilation=1, min_volume=50.0))
    assert apart["num_tp"] == 2
    with pytest.raises(ValueError, match="dilation"):
        LesionParams(dilation=0, min_volume=50.0)  # scipy would dilate until nothing changes


def test_regions_follow_the_label_convention() -> None:
    ref = np.zeros((30, 30, 30), np.uint8)
    ref[5:20, 5:20, 5:20] = 2  # oedema
    ref[9:16, 9:16, 9:16] = 1  # necrosis
    ref[11:14, 11:14, 11:14] = 3  # enhancing, 27 mm3
    pred = ref.copy()
    pred[pred == 3] = 1  # the enhancing part called necrosis
    got = brats2023_lesionwise(ref, pred, (1.0, 1.0, 1.0), BRATS2023_REGIONS)
    assert got["lesion_dice_WT"] == 1.0 and got["lesion_dice_TC"] == 1.0 and got["lesion_dice"] == got["lesion_dice_WT"]
    assert got["legacy_dice_ET"] == 0.0 and got["legacy_hd95_ET"] == MISSED_HD95  # no enhancing predicted
    assert got["lesion_dice_ET"] == 1.0 and got["num_fn_ET"] == 0  # 27 mm3: below 50, not scored lesion-wise
