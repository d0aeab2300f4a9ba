"""The four tasks as data: what a task reads, its target codec, losses, metrics, montage and outputs.

A task is a value, not a subclass: a new task is a new :class:`Task` in :data:`TASKS` (plus a
config). Code outside this package never compares task names; it asks the value.

Example:
    >>> TASKS["mri2ct"].required_keys
    ('mr', 'ct')
    >>> TASKS["mr2mr"].codec.fits_window
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medp2p.data.codecs import HU, MASK, MR_SOURCE, MR_TARGET
from medp2p.io.dicom_write import write_ct_series, write_dicom_seg, write_uncertainty_series
from medp2p.io.rtstruct import write_rtstruct
from medp2p.tasks.scoring import (
    BRASYN,
    BRASYN_BRAIN,
    BRATS2023_LESIONWISE,
    BRATS_INPAINTING,
    BRATS_INPAINTING_2D,
    SEGMENTATION,
    SYNTHRAD2023,
    SYNTHRAD2025,
    body_scoring,
    brain_scoring,
    label_scoring,
    region_scoring,
)
from medp2p.tasks.task import DicomOutput, LossWeights, MetricDefinition, ScoreContext, Scored, Task
from medp2p.types import Volume
from medp2p.viz import PanelSpec, ReviewSpec


def _ct_series(prediction: Volume, path: Path, source: Volume, version: str, overwrite: bool) -> Any:
    return write_ct_series(prediction, path, source=source, software_version=version, overwrite=overwrite)


def _std_series(std: Volume, path: Path, source: Volume, version: str, overwrite: bool, ct_series: Path) -> Any:
    return write_uncertainty_series(std, path, source, version, overwrite, ct_series)


def _seg(prediction: Volume, path: Path, source: Volume, version: str, overwrite: bool) -> Any:
    return write_dicom_seg(prediction, path, source, software_version=version)


def _rtstruct(prediction: Volume, path: Path, source: Volume, version: str, overwrite: bool) -> Any:
    return write_rtstruct(prediction, path, source, names={1: "Tumour"}, software_version=version)


MRI2CT = Task(
    name="mri2ct",
    description="MRI -> synthetic CT in HU",
    source_keys=("mr",),
    target_key="ct",
    mask_key="mask",
    codec=HU,
    loss=LossWeights(l1=100.0, gan=1.0),
    metrics=(SYNTHRAD2023, SYNTHRAD2025),
    best_metric="mae",
    higher_is_better=False,
    output_name="sct.nii.gz",
    scoring=body_scoring,
    panels=(
        PanelSpec("MR", "source", "own"),
        PanelSpec("synthetic CT (HU)", "prediction", "hu"),
        PanelSpec("CT (HU)", "reference", "hu"),
        PanelSpec("sCT - CT (HU)", "difference", "hu_diff", "coolwarm"),
    ),
    review=ReviewSpec("body", "hu"),
    dicom_outputs=(DicomOutput("dicom", "sct_dicom", _ct_series, "sct_std_dicom", _std_series),),
    mask_required=False,
)
SEG = Task(
    name="seg",
    description="MRI -> tumour mask",
    source_keys=("mr",),
    target_key="tumor",
    mask_key=None,
    codec=MASK,
    loss=LossWeights(dice=1.0, bce=1.0),
    metrics=(SEGMENTATION, BRATS2023_LESIONWISE),
    best_metric="dice",
    higher_is_better=True,
    output_name="mask.nii.gz",
    scoring=label_scoring,
    panels=(
        PanelSpec("MR", "source", "own"),
        PanelSpec("predicted mask", "prediction", "unit"),
        PanelSpec("reference mask", "reference", "unit"),
        PanelSpec("pred - ref", "difference", "signed_unit", "coolwarm"),
    ),
    review=ReviewSpec("reference mask", "area", contours=True),
    dicom_outputs=(DicomOutput("dicom", "mask_seg.dcm", _seg), DicomOutput("rtstruct", "mask_rtstruct.dcm", _rtstruct)),
)
INPAINT = Task(
    name="inpaint",
    description="MRI with a corrupted region -> restored MRI",
    source_keys=("mr",),
    target_key="mr",
    mask_key=None,
    codec=MR_SOURCE,
    loss=LossWeights(l1=100.0, gan=1.0),
    metrics=(BRATS_INPAINTING, BRATS_INPAINTING_2D),
    best_metric="ssim",
    higher_is_better=True,
    output_name="inpainted.nii.gz",
    scoring=region_scoring,
    panels=(
        PanelSpec("voided input", "source", "reference"),
        PanelSpec("inpainted", "prediction", "reference"),
        PanelSpec("reference", "reference", "reference"),
        PanelSpec("inpainted - reference", "difference", "reference_diff", "coolwarm"),
    ),
    review=ReviewSpec("inpainting region", "intensity"),
    region_key="region",
    voided_key="voided",
    scored_region_keys=("region_healthy",),
    target_is_source=True,
)
MR2MR = Task(
    name="mr2mr",
    description="MR contrast(s) -> another MR contrast",
    source_keys=("mr",),
    target_key="target",
    mask_key="mask",
    codec=MR_TARGET,
    loss=LossWeights(l1=100.0, gan=1.0),
    metrics=(BRASYN, BRASYN_BRAIN),
    validation_metrics="brasyn-brain",
    scored_label_keys=("tumor",),
    best_metric="ssim",
    higher_is_better=True,
    output_name="synth.nii.gz",
    scoring=brain_scoring,
    panels=(
        PanelSpec("source MR", "source", "own"),
        PanelSpec("synthetic (its own scale)", "prediction", "own"),
        PanelSpec("reference", "reference", "own"),
        PanelSpec("synthetic - reference (each 0.5..99.5 %ile -> [0, 1])", "scaled_difference", "signed_half", "coolwarm"),
    ),
    review=ReviewSpec("brain mask", "intensity"),
    mask_required=False,
)

#: Every task, by name: the one list (the CLI and the config validate against it).
TASKS: dict[str, Task] = {t.name: t for t in (MRI2CT, SEG, INPAINT, MR2MR)}


def get_task(name: str) -> Task:
    """The task called ``name``; a miss names the choices.

    Example:
        >>> get_task("seg").target_key
        'tumor'
    """
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"Unknown task {name!r}; choose from {sorted(TASKS)}") from None


__all__ = [
    "INPAINT",
    "MR2MR",
    "MRI2CT",
    "SEG",
    "TASKS",
    "DicomOutput",
    "LossWeights",
    "MetricDefinition",
    "ScoreContext",
    "Scored",
    "Task",
    "get_task",
]
