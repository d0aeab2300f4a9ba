"""One picture per case: the task's montage panels at the slice with the most mask, with the mask outlined."""

from __future__ import annotations

from pathlib import Path

from medp2p.tasks import MetricDefinition, Scored, Task
from medp2p.viz import draw_panels, middle_slice, save_preview

#: Metrics shown in a montage's title without a definition, when present.
TITLE_METRICS = ("mae", "psnr", "ssim", "dice", "hd95", "mse")


def case_montage(
    path: Path, task: Task, case_id: str, scored: Scored, metrics: dict[str, float], definition: MetricDefinition | None = None
) -> Path:
    """The montage of one evaluated case (``task.panels``) at the slice with the most scored mask.

    The title shows the definition's first four columns and its name (without one,
    :data:`TITLE_METRICS`).

    Example:
        >>> case_montage(Path("report/case_000.png"), MRI2CT, "case_000", scored, {"mae": 74.2})
    """
    z = middle_slice(scored.mask, 2, scored.prediction.shape[2])
    arrays = {"source": scored.source, "prediction": scored.prediction, "reference": scored.reference}
    panels = draw_panels(task.panels, arrays, z)
    shown = definition.columns[:4] if definition is not None else TITLE_METRICS
    summary = ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if k in shown)
    if definition is not None:
        summary += f" [{definition.name}]"
    outline = None if scored.mask is None else scored.mask[:, :, z]
    return save_preview(path, panels, f"{case_id} (slice {z}): {summary}", outline=outline, colorbars=True)
