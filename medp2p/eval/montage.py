"""One picture per case: source | prediction | reference | difference, fixed windows, mask outlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medp2p.train.logs import HU_DISPLAY, display_window, middle_slice, save_preview

#: Difference window (fixed, so pictures of different cases compare).
HU_DIFF_DISPLAY = (-500.0, 500.0)


def case_montage(
    path: Path,
    task: str,
    case_id: str,
    source: np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None,
    metrics: dict[str, float],
) -> Path:
    """The montage of one evaluated case at the slice with the most mask (or the middle slice)."""
    z = middle_slice(mask, 2, prediction.shape[2])
    src = source[:, :, z]
    src_win = display_window(src)
    out_mask = None if mask is None else mask[:, :, z]
    summary = ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if k in ("mae", "psnr", "ssim", "dice", "hd95", "mse"))
    title = f"{case_id} (slice {z}): {summary}"
    if task == "mri2ct":
        panels = [
            ("MR", src, src_win, "gray"),
            ("synthetic CT (HU)", prediction[:, :, z], HU_DISPLAY, "gray"),
            ("CT (HU)", reference[:, :, z], HU_DISPLAY, "gray"),
            ("sCT - CT (HU)", prediction[:, :, z] - reference[:, :, z], HU_DIFF_DISPLAY, "coolwarm"),
        ]
    elif task == "seg":
        panels = [
            ("MR", src, src_win, "gray"),
            ("predicted mask", prediction[:, :, z], (0.0, 1.0), "gray"),
            ("reference mask", (reference[:, :, z] > 0).astype(float), (0.0, 1.0), "gray"),
            ("pred - ref", prediction[:, :, z] - (reference[:, :, z] > 0), (-1.0, 1.0), "coolwarm"),
        ]
    else:
        ref = reference[:, :, z]
        win = display_window(reference, (0.5, 99.5))
        span = win[1] - win[0]
        panels = [
            ("voided input", src, win, "gray"),
            ("inpainted", prediction[:, :, z], win, "gray"),
            ("reference", ref, win, "gray"),
            ("inpainted - reference", prediction[:, :, z] - ref, (-0.3 * span, 0.3 * span), "coolwarm"),
        ]
    return save_preview(path, panels, title, outline=out_mask, colorbars=True)
