"""One picture per case: source | prediction | reference | difference, fixed windows, mask outlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medp2p.train.logs import save_preview

#: Display windows (fixed, so pictures of different cases compare).
HU_DISPLAY = (-1000.0, 1500.0)
HU_DIFF_DISPLAY = (-500.0, 500.0)


def _best_slice(mask: np.ndarray | None, depth: int) -> int:
    if mask is None or not np.any(mask):
        return depth // 2
    return int(np.argmax(np.asarray(mask > 0).sum(axis=(0, 1))))


def case_montage(
    path: Path, task: str, case_id: str, source: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
    mask: np.ndarray | None, metrics: dict[str, float],
) -> Path:
    """The montage of one evaluated case at the slice with the most mask (or the middle slice)."""
    z = _best_slice(mask, prediction.shape[2])
    src = source[:, :, z]
    lo, hi = (np.percentile(src, [1, 99]) if src.size else (0.0, 1.0))
    src_win = (float(lo), float(hi) if hi > lo else float(lo) + 1)
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
        rlo, rhi = np.percentile(reference, [0.5, 99.5])
        win = (float(rlo), float(rhi) if rhi > rlo else float(rlo) + 1)
        span = win[1] - win[0]
        panels = [
            ("voided input", src, win, "gray"),
            ("inpainted", prediction[:, :, z], win, "gray"),
            ("reference", ref, win, "gray"),
            ("inpainted - reference", prediction[:, :, z] - ref, (-0.3 * span, 0.3 * span), "coolwarm"),
        ]
    return save_preview(path, panels, title, outline=out_mask, colorbars=True)
