"""Review pictures of one evaluated case: three planes at true aspect, a strip of slices, a slice browser, histograms.

Volumes come in canonical (RAS+) array order, ``(X, Y, Z)`` running left to right, posterior to
anterior, inferior to superior, with their voxel spacing (:class:`ReviewVolumes`). Every plane is
drawn with anterior or superior up and the patient's left on the image's left (the neurological
convention), and each pixel as tall as its voxel is long (``aspect`` = row spacing / column
spacing), so anisotropic voxels are not stretched. What a task adds to its montage panels
(the outline, prediction vs reference contours, which histogram) is a :class:`ReviewSpec`.

Example:
    >>> vols = ReviewVolumes(mr, sct, ct, body, spacing_mm=(1.0, 1.0, 3.0))
    >>> fig = plane_views(vols, MRI2CT.panels, MRI2CT.review)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medp2p.viz.panels import HU_DISPLAY, Panel, PanelSpec, display_window, draw_panels

#: ``plane: (axis sliced, axis down the rows, axis along the columns)`` of a canonical volume.
PLANES: dict[str, tuple[int, int, int]] = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}
#: Histogram kinds: ``hu`` fixed HU bins (synthetic CT), ``intensity`` bins over both images'
#: 0.1..99.9th percentiles, ``area`` foreground area and Dice per axial slice (masks).
HISTOGRAMS = ("hu", "intensity", "area")
#: Contour colours of a mask review: prediction, reference.
CONTOUR_COLOURS = ("red", "lime")


@dataclass(frozen=True)
class ReviewSpec:
    """What a task's review shows besides its montage panels, as data.

    Args:
        outline: what the scored mask is, named in titles (``body``, ``inpainting region``...);
            its edge is drawn in yellow on every panel.
        histogram: one of :data:`HISTOGRAMS`.
        contours: add a panel with the prediction's (red) and the reference's (green)
            foreground contours over the source image (masks).

    Example:
        >>> ReviewSpec("body", "hu").histogram
        'hu'
    """

    outline: str
    histogram: str
    contours: bool = False

    def __post_init__(self) -> None:
        if self.histogram not in HISTOGRAMS:
            raise ValueError(f"ReviewSpec histogram must be one of {HISTOGRAMS}, got {self.histogram!r}")


@dataclass(frozen=True)
class ReviewVolumes:
    """One case's volumes in canonical (RAS+) array order, on the reference's grid.

    Args:
        source: what the model saw (the MR, the voided input).
        prediction: the prediction (a 0/1 mask for masks).
        reference: the reference (a 0/1 mask for masks).
        mask: where the metrics were taken (already cut to the scored slab), or None.
        spacing_mm: voxel size along the canonical axes.
    """

    source: np.ndarray
    prediction: np.ndarray
    reference: np.ndarray
    mask: np.ndarray | None
    spacing_mm: tuple[float, float, float]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The images the montage panels name."""
        return {"source": self.source, "prediction": self.prediction, "reference": self.reference}

    @property
    def scored(self) -> np.ndarray:
        """The scored voxels (all of them without a mask)."""
        return np.ones(self.reference.shape, bool) if self.mask is None else self.mask > 0


def aspect(spacing_mm: Sequence[float], plane: str) -> float:
    """A plane's pixel height over width: its row axis's spacing over its column axis's.

    Example:
        >>> aspect((1.0, 1.0, 3.0), "coronal")
        3.0
    """
    _, rows, cols = PLANES[plane]
    return float(spacing_mm[rows]) / float(spacing_mm[cols])


def centre(vols: ReviewVolumes) -> tuple[int, int, int]:
    """The voxel at the scored mask's centroid (the volume's centre without one)."""
    where = np.argwhere(vols.scored)
    x, y, z = (s // 2 for s in vols.reference.shape) if not where.size else (int(round(c)) for c in where.mean(axis=0))
    return x, y, z


def strip_slices(mask: np.ndarray | None, depth: int, n: int, axis: int = 2) -> list[int]:
    """``n`` slices along ``axis`` spread evenly over those holding ``mask`` (over all without it).

    Example:
        >>> m = np.zeros((4, 4, 20), bool); m[..., 5:11] = True
        >>> strip_slices(m, 20, 3)
        [5, 8, 10]
    """
    if mask is not None and np.any(mask):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        held = np.flatnonzero(np.asarray(mask > 0).any(axis=other))
        first, last = int(held[0]), int(held[-1])
    else:
        first, last = 0, depth - 1
    return sorted({int(round(v)) for v in np.linspace(first, last, max(1, n))})


def _show(ax: Any, image: np.ndarray, window: tuple[float, float], cmap: str, ratio: float) -> Any:
    return ax.imshow(np.rot90(image), cmap=cmap, vmin=window[0], vmax=window[1], interpolation="nearest", aspect=ratio)


def _contour(ax: Any, mask: np.ndarray, colour: str, width: float = 0.8) -> None:
    if np.any(mask) and not np.all(mask):
        ax.contour(np.rot90(mask.astype(float)), levels=[0.5], colors=colour, linewidths=width)


def plane_panels(vols: ReviewVolumes, specs: Sequence[PanelSpec], spec: ReviewSpec, plane: str, index: int) -> list[Panel]:
    """The task's panels at slice ``index`` of ``plane``, plus the contour panel when ``spec.contours``."""
    axis = PLANES[plane][0]
    panels = draw_panels(list(specs), vols.arrays, index, axis)
    if spec.contours:
        source = np.take(vols.source, index, axis=axis)
        panels.append(("prediction (red) vs reference (green)", source, display_window(source), "gray"))
    return panels


def draw_plane(axes: Sequence[Any], vols: ReviewVolumes, specs: Sequence[PanelSpec], spec: ReviewSpec, plane: str, index: int) -> None:
    """Draw :func:`plane_panels` into ``axes`` (one each), the scored mask outlined, at the plane's true aspect."""
    axis = PLANES[plane][0]
    ratio = aspect(vols.spacing_mm, plane)
    outline = None if vols.mask is None else np.take(vols.mask > 0, index, axis=axis)
    panels = plane_panels(vols, specs, spec, plane, index)
    for ax, (label, image, window, cmap) in zip(axes, panels, strict=True):
        _show(ax, image, window, cmap, ratio)
        if outline is not None:
            _contour(ax, outline, "yellow", 0.7)
        ax.set_title(f"{label} ({plane} {index})", fontsize=8)
        ax.axis("off")
    if spec.contours:
        last = axes[len(panels) - 1]
        for volume, colour in zip((vols.prediction, vols.reference), CONTOUR_COLOURS, strict=True):
            _contour(last, np.take(volume > 0.5, index, axis=axis), colour, 1.0)


def _grid(rows: int, cols: int, width: float = 3.0, height: float = 3.0) -> tuple[Any, np.ndarray]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return fig, axes


def _columns(specs: Sequence[PanelSpec], spec: ReviewSpec) -> int:
    return len(specs) + int(spec.contours)


def plane_views(
    vols: ReviewVolumes, specs: Sequence[PanelSpec], spec: ReviewSpec, at: tuple[int, int, int] | None = None, title: str = ""
) -> Any:
    """The task's panels in the axial, coronal and sagittal planes through ``at`` (default: the mask's centre)."""
    at = centre(vols) if at is None else at
    fig, axes = _grid(3, _columns(specs, spec))
    for row, plane in enumerate(PLANES):
        draw_plane(axes[row], vols, specs, spec, plane, at[PLANES[plane][0]])
    fig.suptitle(title or f"through the {spec.outline} centre {at}; yellow: {spec.outline}", fontsize=10)
    fig.tight_layout()
    return fig


def slice_strip(
    vols: ReviewVolumes, specs: Sequence[PanelSpec], spec: ReviewSpec, n: int = 5, plane: str = "axial", title: str = ""
) -> Any:
    """``n`` slices of ``plane`` spread over the scored mask's extent, one row each: the static slice browser."""
    axis = PLANES[plane][0]
    indices = strip_slices(vols.mask, vols.reference.shape[axis], n, axis)
    fig, axes = _grid(len(indices), _columns(specs, spec), height=2.8)
    for row, index in enumerate(indices):
        draw_plane(axes[row], vols, specs, spec, plane, index)
    fig.suptitle(title or f"{len(indices)} {plane} slices through the {spec.outline}", fontsize=10)
    fig.tight_layout()
    return fig


def _hist_pair(ax: Any, values: dict[str, np.ndarray], bins: np.ndarray, xlabel: str) -> None:
    for label, v in values.items():
        ax.hist(v, bins=bins, histtype="step", label=label, density=True)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)


def histograms(vols: ReviewVolumes, spec: ReviewSpec, title: str = "") -> Any:
    """Value and error histograms inside the scored mask (``hu``/``intensity``), or per-slice area and Dice (``area``)."""
    fig, axes = _grid(1, 2, width=5.0, height=3.5)
    inside = vols.scored
    ref, pred = vols.reference[inside], vols.prediction[inside]
    if spec.histogram == "area":
        _area_profile(axes[0], vols)
    else:
        if spec.histogram == "hu":
            bins, unit = np.linspace(HU_DISPLAY[0] - 100.0, 2000.0, 125), "HU"
        else:
            both = np.concatenate([ref, pred]) if ref.size else np.zeros(1)
            lo, hi = np.percentile(both, (0.1, 99.9))
            bins, unit = np.linspace(float(lo), float(hi) if hi > lo else float(lo) + 1.0, 100), "intensity"
        _hist_pair(axes[0, 0], {"reference": ref, "prediction": pred}, bins, unit)
        axes[0, 0].set_title(f"values inside the {spec.outline}", fontsize=9)
        error = pred - ref
        span = float(np.percentile(np.abs(error), 99.5)) if error.size else 1.0
        _hist_pair(
            axes[0, 1], {"prediction - reference": error}, np.linspace(-span, span, 100) if span > 0 else np.linspace(-1, 1, 3), unit
        )
        axes[0, 1].axvline(0.0, color="k", linewidth=0.6)
        mae = float(np.abs(error).mean()) if error.size else float("nan")
        axes[0, 1].set_title(f"error inside the {spec.outline}: mean |error| {mae:.4g}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _area_profile(axes: np.ndarray, vols: ReviewVolumes) -> None:
    """Foreground area per axial slice (mm^2) of prediction and reference, and the slice's Dice."""
    pixel = float(vols.spacing_mm[0] * vols.spacing_mm[1])
    pred, ref = vols.prediction > 0.5, vols.reference > 0.5
    z = np.arange(ref.shape[2])
    a_pred, a_ref = pred.sum(axis=(0, 1)) * pixel, ref.sum(axis=(0, 1)) * pixel
    axes[0].plot(z, a_ref, color=CONTOUR_COLOURS[1], label="reference")
    axes[0].plot(z, a_pred, color=CONTOUR_COLOURS[0], label="prediction")
    axes[0].set_xlabel("axial slice")
    axes[0].set_ylabel("foreground area (mm$^2$)")
    axes[0].legend(fontsize=8)
    overlap = (pred & ref).sum(axis=(0, 1)) * pixel
    either = a_pred + a_ref
    shown = either > 0
    axes[1].bar(z[shown], 2.0 * overlap[shown] / either[shown], color="tab:blue")
    axes[1].set_ylim(0.0, 1.0)
    axes[1].set_xlabel("axial slice")
    axes[1].set_title("Dice per slice (slices with foreground)", fontsize=9)


def metric_bars(rows: Sequence[dict[str, str]], columns: Sequence[str], case: str | None = None) -> Any:
    """One bar chart per metric column across the report's cases, ``case`` highlighted."""
    cols = [c for c in columns if rows and c in rows[0]][:8]
    fig, axes = _grid(1, max(1, len(cols)), width=max(2.5, 0.45 * len(rows) + 1.5), height=3.0)
    names = [r["case"] for r in rows]
    for ax, col in zip(axes[0], cols, strict=False):
        values = [float(r[col]) if r[col] not in ("", None) else float("nan") for r in rows]
        colours = ["tab:red" if n == case else "tab:gray" for n in names]
        ax.bar(range(len(rows)), values, color=colours)
        ax.set_xticks(range(len(rows)), names, rotation=90, fontsize=7)
        ax.set_title(col, fontsize=9)
    fig.tight_layout()
    return fig


def slice_browser(vols: ReviewVolumes, specs: Sequence[PanelSpec], spec: ReviewSpec) -> Any:
    """An ipywidgets browser: a plane selector and a slice slider redrawing :func:`draw_plane` (``pip install medp2p[notebooks]``).

    Raises:
        ImportError: ipywidgets is not installed (the message says how to get it).
    """
    try:
        import ipywidgets as widgets  # type: ignore[import-untyped]
        from IPython.display import display
    except ImportError as exc:  # pragma: no cover - the notebooks extra brings both
        raise ImportError("the slice browser needs ipywidgets: pip install 'medp2p[notebooks]'") from exc
    import matplotlib.pyplot as plt

    at = centre(vols)
    plane = widgets.ToggleButtons(options=list(PLANES), value="axial", description="plane")
    index = widgets.IntSlider(value=at[2], min=0, max=vols.reference.shape[2] - 1, description="slice", continuous_update=False)
    out = widgets.Output()

    def redraw(*_: Any) -> None:
        fig, axes = _grid(1, _columns(specs, spec))
        draw_plane(axes[0], vols, specs, spec, plane.value, index.value)
        fig.tight_layout()
        with out:
            out.clear_output(wait=True)
            display(fig)  # type: ignore[no-untyped-call]
        plt.close(fig)

    def new_plane(_: Any) -> None:
        axis = PLANES[plane.value][0]
        index.unobserve(redraw, "value")  # one redraw for the new plane, not one per changed trait
        index.max = vols.reference.shape[axis] - 1
        index.value = at[axis]
        index.observe(redraw, "value")
        redraw()

    plane.observe(new_plane, "value")
    index.observe(redraw, "value")
    redraw()
    return widgets.VBox([plane, index, out])
