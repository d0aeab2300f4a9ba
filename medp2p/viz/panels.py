"""Rows of 2D panels (source | prediction | reference | difference) with fixed windows, saved as PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medp2p.io.atomic import atomic_path

#: Display windows shared by previews and evaluation montages (fixed, so pictures compare).
HU_DISPLAY = (-1000.0, 1500.0)
#: Difference window in HU (fixed, so pictures of different cases compare).
HU_DIFF_DISPLAY = (-500.0, 500.0)

#: ``(label, image, (vmin, vmax), colormap)``: one panel ready to draw.
Panel = tuple[str, np.ndarray, tuple[float, float], str]

#: What a panel may show: one of the montage's arrays, ``prediction - reference``, or
#: ``scaled_difference``: both first scaled by their own 0.5..99.5th percentiles to [0, 1] (images
#: in different intensity scales, as MR contrast synthesis scores them).
IMAGES = ("source", "prediction", "reference", "difference", "scaled_difference")
#: Windows: ``hu``/``hu_diff`` fixed in HU; ``unit`` [0, 1] and ``signed_unit`` [-1, 1] for masks;
#: ``own`` the panel's own 1st-99th percentiles; ``reference`` the reference volume's 0.5-99.5th
#: percentiles, ``reference_diff`` +-30% of that span (images compared in one scale).
WINDOWS = ("hu", "hu_diff", "unit", "signed_unit", "signed_half", "own", "reference", "reference_diff")


@dataclass(frozen=True)
class PanelSpec:
    """One panel of a task's montage, as data: a label, which image, which window, which colormap.

    Example:
        >>> PanelSpec("sCT - CT (HU)", "difference", "hu_diff", "coolwarm")
    """

    label: str
    image: str
    window: str
    cmap: str = "gray"

    def __post_init__(self) -> None:
        if self.image not in IMAGES:
            raise ValueError(f"PanelSpec image must be one of {IMAGES}, got {self.image!r}")
        if self.window not in WINDOWS:
            raise ValueError(f"PanelSpec window must be one of {WINDOWS}, got {self.window!r}")


def display_window(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """A robust grey-level window of ``image``: its percentiles, never empty.

    Example:
        >>> display_window(np.arange(100.0))
        (0.99, 98.01)
    """
    lo, hi = np.percentile(image, percentiles) if image.size else (0.0, 1.0)
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def middle_slice(mask: np.ndarray | None, depth_axis: int, depth: int) -> int:
    """The slice with the most of ``mask`` along ``depth_axis`` (the middle one when it is empty).

    Example:
        >>> middle_slice(None, 2, 48)
        24
    """
    if mask is None or not np.any(mask):
        return depth // 2
    other = tuple(a for a in range(mask.ndim) if a != depth_axis)
    counts = np.asarray(mask > 0).sum(axis=other)
    return int(np.argmax(counts))


def _window(kind: str, image: np.ndarray, reference: np.ndarray | None) -> tuple[float, float]:
    if kind == "hu":
        return HU_DISPLAY
    if kind == "hu_diff":
        return HU_DIFF_DISPLAY
    if kind == "unit":
        return (0.0, 1.0)
    if kind == "signed_unit":
        return (-1.0, 1.0)
    if kind == "signed_half":
        return (-0.5, 0.5)
    if kind == "own" or reference is None:
        return display_window(image)
    lo, hi = display_window(reference, (0.5, 99.5))
    return (lo, hi) if kind == "reference" else (-0.3 * (hi - lo), 0.3 * (hi - lo))


def _own_scale(volume: np.ndarray, image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(volume, (0.5, 99.5)) if volume.size else (0.0, 1.0)
    lo = max(float(lo), 0.0)
    scaled: np.ndarray = (np.clip(image, lo, hi) - lo) / max(float(hi) - lo, 1e-12)
    return scaled


def panel_images(arrays: dict[str, np.ndarray], z: int, axis: int = 2) -> dict[str, np.ndarray]:
    """Slice ``z`` along ``axis`` (default the last) of each volume in ``arrays``, plus the two differences of ``IMAGES``."""
    out = {k: np.take(v, z, axis=axis) for k, v in arrays.items()}
    if "prediction" in out and "reference" in out:
        out["difference"] = out["prediction"] - out["reference"]
        out["scaled_difference"] = _own_scale(arrays["prediction"], out["prediction"]) - _own_scale(arrays["reference"], out["reference"])
    return out


def draw_panels(specs: tuple[PanelSpec, ...] | list[PanelSpec], arrays: dict[str, np.ndarray], z: int, axis: int = 2) -> list[Panel]:
    """The panels ``specs`` describe, at slice ``z`` of the ``(X, Y, Z)`` volumes in ``arrays``.

    Args:
        specs: a task's montage.
        arrays: ``source``, ``prediction``, ``reference`` volumes (those the specs name).
        z: the slice shown.
        axis: the axis ``z`` runs along (2: axial slices of a canonical volume).

    Example:
        >>> panels = draw_panels(task.panels, {"source": mr, "prediction": sct, "reference": ct}, z=40)
    """
    images = panel_images(arrays, z, axis)
    reference = arrays.get("reference")
    return [(s.label, images[s.image], _window(s.window, images[s.image], reference), s.cmap) for s in specs]


def save_preview(
    path: str | Path,
    panels: list[Panel],
    title: str = "",
    outline: np.ndarray | None = None,
    colorbars: bool = False,
) -> Path:
    """A row of 2D images saved as a PNG, atomically.

    Args:
        path: the PNG to write.
        panels: ``(label, image, (vmin, vmax), colormap)`` each (:func:`draw_panels`).
        title: above the row.
        outline: a 2D mask whose edge is drawn (yellow) on every panel.
        colorbars: a colour bar beside each panel.

    Example:
        >>> save_preview("preview.png", [("MR", mr[:, :, 10], (0.0, 500.0), "gray")])
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 3.3 if colorbars else 3.2
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.6), squeeze=False)
    for ax, (label, image, (vmin, vmax), cmap) in zip(axes[0], panels, strict=True):
        shown = ax.imshow(np.rot90(image), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if outline is not None and np.any(outline) and not np.all(outline):
            ax.contour(np.rot90(outline.astype(float)), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
        if colorbars:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    return save_figure(fig, path, title)


def save_figure(fig: Any, path: str | Path, title: str = "") -> Path:
    """A matplotlib figure under its title, laid out, written atomically as PNG (90 dpi) and closed."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return Path(path)
