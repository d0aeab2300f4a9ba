"""Metrics, defined once, the way the public challenges define them (numpy in, floats out).

Example:
    >>> from medp2p.metrics import synthrad_metrics
    >>> synthrad_metrics(ct, sct, body_mask)["mae"]
"""

from medp2p.metrics.brasyn import brasyn_brain_metrics, brasyn_metrics, own_percentile_scale
from medp2p.metrics.lesionwise import brats2023_lesionwise, lesionwise_scores
from medp2p.metrics.segmentation import dice, hd95_mm, segmentation_metrics
from medp2p.metrics.synthesis import (
    SYNTHRAD_HU_RANGE,
    TISSUE_HU,
    brats_inpainting_metrics,
    inpainting_metrics,
    inpainting_scaled,
    mae_hu,
    percentile_normalize,
    psnr_hu,
    ssim_hu,
    synthrad_metrics,
    tissue_mae_hu,
)
from medp2p.metrics.synthrad2025 import ms_ssim_synthrad2025, synthrad2025_metrics

__all__ = [
    "brasyn_brain_metrics",
    "brasyn_metrics",
    "brats2023_lesionwise",
    "brats_inpainting_metrics",
    "lesionwise_scores",
    "ms_ssim_synthrad2025",
    "synthrad2025_metrics",
    "own_percentile_scale",
    "SYNTHRAD_HU_RANGE",
    "TISSUE_HU",
    "dice",
    "hd95_mm",
    "inpainting_metrics",
    "inpainting_scaled",
    "mae_hu",
    "percentile_normalize",
    "psnr_hu",
    "segmentation_metrics",
    "ssim_hu",
    "synthrad_metrics",
    "tissue_mae_hu",
]
