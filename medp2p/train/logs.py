"""What a run writes besides checkpoints: a metrics CSV, TensorBoard events, preview PNGs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medp2p.io.atomic import atomic_path

CSV_FIELDS = ("step", "phase", "metric", "value")


class MetricsLog:
    """Long-format ``metrics.csv`` (step, phase, metric, value) plus optional TensorBoard events.

    On resume, rows written after the checkpoint's step (by a run that was killed) are dropped,
    so the log matches the weights.
    """

    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        rows = []
        if resume_step and self.path.exists():
            with self.path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self._fh = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._fh, CSV_FIELDS)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step or None)

    def log(self, step: int, phase: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self._writer.writerow({"step": step, "phase": phase, "metric": name, "value": f"{value:.6g}"})
            if self.tb is not None:
                self.tb.add_scalar(f"{phase}/{name}", value, step)
        self._fh.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._fh.close()
        if self.tb is not None:
            self.tb.close()


#: Display windows shared by previews and evaluation montages (fixed, so pictures compare).
HU_DISPLAY = (-1000.0, 1500.0)


def display_window(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """A robust grey-level window of ``image``: its percentiles, never empty."""
    lo, hi = np.percentile(image, percentiles) if image.size else (0.0, 1.0)
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def middle_slice(mask: np.ndarray | None, depth_axis: int, depth: int) -> int:
    """The slice through the centre of ``mask`` (or of the volume) along ``depth_axis``."""
    if mask is None or not np.any(mask):
        return depth // 2
    other = tuple(a for a in range(mask.ndim) if a != depth_axis)
    counts = np.asarray(mask > 0).sum(axis=other)
    return int(np.argmax(counts))


def save_preview(
    path: Path,
    panels: list[tuple[str, np.ndarray, tuple[float, float]] | tuple[str, np.ndarray, tuple[float, float], str]],
    title: str = "",
    outline: np.ndarray | None = None,
    colorbars: bool = False,
) -> Path:
    """A row of 2D images saved as a PNG, atomically.

    Args:
        path: the PNG to write.
        panels: ``(label, image, (vmin, vmax))`` or ``(label, image, (vmin, vmax), colormap)``.
        title: above the row.
        outline: a 2D mask whose edge is drawn (yellow) on every panel.
        colorbars: a colour bar beside each panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 3.3 if colorbars else 3.2
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.6), squeeze=False)
    for ax, (label, image, (vmin, vmax), *cmap) in zip(axes[0], panels):
        shown = ax.imshow(np.rot90(image), cmap=cmap[0] if cmap else "gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        if outline is not None and np.any(outline) and not np.all(outline):
            ax.contour(np.rot90(outline.astype(float)), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
        if colorbars:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path
