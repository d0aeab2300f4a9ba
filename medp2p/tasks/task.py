"""What a task is: one :class:`Task` value carries everything that differs between tasks.

The keys it reads, its target codec, its default losses, its metric definitions, its montage, its
outputs. Code outside :mod:`medp2p.tasks` asks the value, never the task's name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medp2p.data.case_reader import CaseKeys, CaseVolumes
from medp2p.data.codecs import TargetCodec
from medp2p.types import Volume
from medp2p.viz import PanelSpec, ReviewSpec


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's loss terms (0 switches a term off; ``gan=0`` trains no discriminator)."""

    l1: float = 0.0
    gan: float = 0.0
    dice: float = 0.0
    bce: float = 0.0


@dataclass
class Scored:
    """What one case's metrics and montage are computed from, on the reference's grid.

    Args:
        reference: the reference volume's values (a 0/1 mask for labels).
        prediction: the prediction's values.
        source: what the montage shows as the input (the MR, the voided input).
        mask: where the metrics are taken (body, inpainting region, brain), already cut to the
            scored slab; None: the whole (slab of the) volume.
        voided: inpainting: the input the model saw (its percentiles normalise both images).
        spacing_mm: voxel size, for distances.
        labels: masks: the reference and predicted label maps as read (within the slab), for
            per-region and lesion-wise metrics.
        regions: masks: the label regions declared with the data (``{"WT": (1, 2, 3), ...}``).
        tumor: mr2mr: the case's tumour segmentation (labels > 0), when it has one (BraSyn
            splits its SSIM by it).
        affine: the reference's voxel-to-world (RAS+) matrix, for pictures in a canonical
            orientation (None: the arrays' own axes).
        uncertainty: the prediction's uncertainty map (``predict --uncertainty``), when present.
        calibration_mask: where the uncertainty was checked against the error.
        calibration_error: that error, ``|prediction - reference|`` in the definition's units.
    """

    reference: np.ndarray
    prediction: np.ndarray
    source: np.ndarray
    mask: np.ndarray | None = None
    voided: np.ndarray | None = None
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    labels: tuple[np.ndarray, np.ndarray] | None = None
    regions: dict[str, tuple[int, ...]] | None = None
    tumor: np.ndarray | None = None
    affine: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    calibration_mask: np.ndarray | None = None
    calibration_error: np.ndarray | None = None


@dataclass(frozen=True)
class ScoreContext:
    """How a case is scored: the slab kept, and an inpainting region given or to regenerate.

    Args:
        keep: 0/1 voxels scored (a slab of the volume); None: all.
        regions: masks: label regions declared with the data (the datalist's ``"regions"``).
        region: the region a prediction filled (validation knows it); else the case's, else seeded.
        voided: the voided input the model saw, with ``region``.
        seed: the seed of generated regions (``inpaint.eval_seed``).
        prediction_dir: the case's prediction folder, whose ``region.nii.gz`` must agree with the
            seeded one.
    """

    keep: np.ndarray | None = None
    regions: dict[str, tuple[int, ...]] | None = None
    region: Volume | None = None
    voided: Volume | None = None
    seed: int = 1234
    prediction_dir: Path | None = None


@dataclass(frozen=True)
class MetricDefinition:
    """A named metric definition, as a challenge computes it.

    Args:
        name: the definition's name (``synthrad2023``, ``brats-inpainting-2d``...).
        description: the computation in words, written into every report.
        columns: the metric names it reports, in order.
        compute: ``Scored -> {column: value}``.
        source: the code it follows (repository, file, commit).
        scaled: ``Scored -> (reference, prediction)`` in the intensity units the definition scores,
            where it normalises them (MR: each image by its own percentiles); the calibration
            error ``|prediction - reference|`` is taken in these units. None: the images' own
            units (HU, labels).
    """

    name: str
    description: str
    columns: tuple[str, ...]
    compute: Callable[[Scored], dict[str, float]]
    source: str = ""
    scaled: Callable[[Scored], tuple[np.ndarray, np.ndarray]] | None = None


@dataclass(frozen=True)
class DicomOutput:
    """A DICOM output: the ``--format`` kind that asks for it, its name in the case folder, and the writer.

    The writer is ``(prediction, path, source, version, overwrite) -> Any``. With
    ``--uncertainty``, an output with ``uncertainty_name`` also writes the uncertainty map there:
    ``write_uncertainty(map, path, source, version, overwrite, prediction_path)``, in the
    prediction's study and frame of reference.
    """

    kind: str
    name: str
    write: Callable[[Volume, Path, Volume, str, bool], Any]
    uncertainty_name: str | None = None
    write_uncertainty: Callable[[Volume, Path, Volume, str, bool, Path], Any] | None = None


#: ``--format`` values and the output kinds each asks for (``all``: every kind the task has).
FORMAT_KINDS: dict[str, frozenset[str]] = {
    "nifti": frozenset({"nifti"}),
    "dicom": frozenset({"dicom"}),
    "rtstruct": frozenset({"rtstruct"}),
    "both": frozenset({"nifti", "dicom"}),
    "all": frozenset({"nifti", "dicom", "rtstruct"}),
}


@dataclass(frozen=True)
class Task:
    """What a task reads from each case and how it is trained, scored and written.

    Args:
        name: the task's name on the command line.
        description: one line for help texts.
        source_keys: case keys stacked as the generator's input channels.
        target_key: case key the generator learns to produce.
        mask_key: case key of the mask losses and metrics are restricted to (the body for
            mri2ct), or None.
        codec: how the target goes to model space and back (:mod:`medp2p.data.codecs`).
        loss: default loss weights.
        metrics: the metric definitions; the first is ``medp2p evaluate``'s default.
        best_metric: the validation metric that picks ``best.pt``.
        higher_is_better: whether a larger ``best_metric`` is better.
        output_name: file name of a prediction, per case.
        scoring: ``(case, prediction, context) -> Scored``: what the metrics see.
        panels: the montage, as data (:class:`~medp2p.viz.PanelSpec`).
        review: what the review notebook adds to the panels (:class:`~medp2p.viz.ReviewSpec`:
            the outline's name, contours, which histogram).
        dicom_outputs: the DICOM outputs, one per ``--format`` kind (``dicom``, ``rtstruct``).
        region_key: inpainting: the case key of the region to fill at inference; a task with one
            gets the region as input channels, regions voided in training, and only the region
            replaced in its outputs.
        voided_key: inpainting: the case key of the corrupted input at inference.
        mask_required: whether every training case needs ``mask_key`` (mri2ct: no; the codec's
            rule stands in, the same in ``validate``, ``train`` and ``evaluate``).
        scored_region_keys: inpainting: the region ``evaluate`` scores, first present wins.
        target_is_source: the target is the source image itself (inpainting): it gets the
            source's intensity jitter.
        validation_metrics: the definition training validation uses (None: the first).
        scored_label_keys: label maps ``evaluate`` reads when a case has them (mr2mr: ``tumor``,
            which BraSyn splits its SSIM by).

    Example:
        >>> MRI2CT.loss.l1, MRI2CT.output_name
        (100.0, 'sct.nii.gz')
    """

    name: str
    description: str
    source_keys: tuple[str, ...]
    target_key: str
    mask_key: str | None
    codec: TargetCodec
    loss: LossWeights
    metrics: tuple[MetricDefinition, ...]
    best_metric: str
    higher_is_better: bool
    output_name: str
    scoring: Callable[[CaseVolumes, Volume, ScoreContext], Scored]
    panels: tuple[PanelSpec, ...]
    review: ReviewSpec = ReviewSpec("scored mask", "intensity")
    dicom_outputs: tuple[DicomOutput, ...] = ()
    region_key: str | None = None
    voided_key: str | None = None
    mask_required: bool = True
    scored_region_keys: tuple[str, ...] = ()
    target_is_source: bool = False
    validation_metrics: str | None = None
    scored_label_keys: tuple[str, ...] = ()

    def outputs_for(self, fmt: str) -> tuple[bool, tuple[DicomOutput, ...]]:
        """What ``--format fmt`` writes: (the NIfTI?, the DICOM outputs).

        Raises:
            ValueError: an unknown format, or one asking for a DICOM kind this task lacks
                (``all`` asks only for what the task has).
        """
        if fmt not in FORMAT_KINDS:
            raise ValueError(f"--format must be one of {', '.join(FORMAT_KINDS)}, got {fmt!r}")
        kinds = FORMAT_KINDS[fmt]
        has = {o.kind for o in self.dicom_outputs}
        missing = sorted(kinds - has - {"nifti"}) if fmt != "all" else []
        if missing:
            offered = ", ".join(["nifti", *(o.kind for o in self.dicom_outputs)])
            raise ValueError(f"--format {fmt}: the {self.name} task has no {missing[0]} output (it writes: {offered})")
        return "nifti" in kinds, tuple(o for o in self.dicom_outputs if o.kind in kinds)

    @property
    def required_keys(self) -> tuple[str, ...]:
        """Keys every training case needs, in order, without repeats."""
        keys = [*self.source_keys, self.target_key] + ([self.mask_key] if self.mask_key and self.mask_required else [])
        return tuple(dict.fromkeys(keys))

    @property
    def uncertainty_names(self) -> tuple[str, ...]:
        """What ``predict --uncertainty`` writes beside the output; evaluate reads the last.

        Masks: ``<stem>_prob.nii.gz`` (mean foreground probability) and ``<stem>_entropy.nii.gz``
        (its binary entropy, bits); images: ``<stem>_std.nii.gz`` (standard deviation, the
        output's units).

        Example:
            >>> MRI2CT.uncertainty_names, SEG.uncertainty_names
            (('sct_std.nii.gz',), ('mask_prob.nii.gz', 'mask_entropy.nii.gz'))
        """
        stem = self.output_name.removesuffix(".nii.gz")
        return (f"{stem}_prob.nii.gz", f"{stem}_entropy.nii.gz") if self.codec.labels else (f"{stem}_std.nii.gz",)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The columns of the default metric definition."""
        return self.metrics[0].columns

    def definition(self, name: str | None = None) -> MetricDefinition:
        """The metric definition called ``name`` (default: the task's first); a miss names the choices."""
        if name is None:
            return self.metrics[0]
        for d in self.metrics:
            if d.name == name:
                return d
        raise KeyError(f"Unknown metric definition {name!r} for {self.name}; choose from {[d.name for d in self.metrics]}")

    def validation_definition(self) -> MetricDefinition:
        """The definition training validation scores with (and ``best_metric`` is a column of)."""
        return self.definition(self.validation_metrics)

    def case_keys(
        self,
        source_keys: Sequence[str] | None = None,
        target_key: str | None = None,
        mask_key: str | None = None,
        source_channels: Sequence[int] | None = None,
        hint: str = "set",
    ) -> CaseKeys:
        """What the case reader reads for this task, with the config's key overrides (None: the task's).

        Example:
            >>> MRI2CT.case_keys().mask_required
            False
        """
        regions = (*self.scored_region_keys, self.region_key) if self.region_key else ()
        return CaseKeys(
            sources=tuple(source_keys or self.source_keys),
            target=target_key or self.target_key,
            mask=mask_key if mask_key is not None else self.mask_key,
            mask_required=self.mask_required,
            region=self.region_key,
            voided=self.voided_key,
            scored_regions=tuple(dict.fromkeys(regions)),
            scored_labels=self.scored_label_keys,
            target_is_label=self.codec.labels,
            source_channels=tuple(source_channels) if source_channels else None,
            task=self.name,
            hint=hint,
        )
