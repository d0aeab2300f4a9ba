"""The three tasks as data: what a task reads, how its target is scaled, its losses and metrics.

A task is a value, not a subclass: a new task is a new :class:`Task` in :data:`TASKS`.

Example:
    >>> TASKS["mri2ct"].required_keys
    ('mr', 'ct', 'mask')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medp2p.data.case_reader import CaseKeys

#: How a task's target is scaled for the network and restored afterwards.
#: ``hu``: CT window [-1024, 3000] <-> [-1, 1]; ``mask``: 0/1 labels, logits out;
#: ``mr``: the source's MR window (inpainting restores the source image).
TARGET_KINDS = ("hu", "mask", "mr")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's loss terms (0 switches a term off; ``gan=0`` trains no discriminator)."""

    l1: float = 0.0
    gan: float = 0.0
    dice: float = 0.0
    bce: float = 0.0


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
        target_kind: one of :data:`TARGET_KINDS`.
        loss: default loss weights.
        metrics: metric names reported at validation and evaluation.
        best_metric: the validation metric that picks ``best.pt``.
        higher_is_better: whether a larger ``best_metric`` is better.
        output_name: file name of a prediction, per case.
        region_key: inpainting: the case key of the region to fill at inference.
        voided_key: inpainting: the case key of the corrupted input at inference (falls back to
            the source key).
        mask_required: whether every training case needs ``mask_key`` (mri2ct: no; the CT's
            body, > -500 HU, stands in, the same rule in ``validate``, ``train`` and ``evaluate``).
        scored_region_keys: inpainting: the region ``evaluate`` scores, first present wins
            (BraTS ``mask-healthy``), else ``region_key``.

    Example:
        >>> MRI2CT.loss.l1, MRI2CT.output_name
        (100.0, 'sct.nii.gz')
    """

    name: str
    description: str
    source_keys: tuple[str, ...]
    target_key: str
    mask_key: str | None
    target_kind: str
    loss: LossWeights
    metrics: tuple[str, ...]
    best_metric: str
    higher_is_better: bool
    output_name: str
    region_key: str | None = None
    voided_key: str | None = None
    mask_required: bool = True
    scored_region_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(f"target_kind must be one of {TARGET_KINDS}, got {self.target_kind!r}")

    @property
    def required_keys(self) -> tuple[str, ...]:
        """Keys every training case needs, in order, without repeats."""
        keys = [*self.source_keys, self.target_key] + ([self.mask_key] if self.mask_key and self.mask_required else [])
        return tuple(dict.fromkeys(keys))

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
            target_is_label=self.target_kind == "mask",
            source_channels=tuple(source_channels) if source_channels else None,
            task=self.name,
            hint=hint,
        )


MRI2CT = Task(
    name="mri2ct",
    description="MRI -> synthetic CT in HU",
    source_keys=("mr",),
    target_key="ct",
    mask_key="mask",
    target_kind="hu",
    loss=LossWeights(l1=100.0, gan=1.0),
    metrics=("mae", "psnr", "ssim", "mae_air", "mae_soft_tissue", "mae_bone"),
    best_metric="mae",
    higher_is_better=False,
    output_name="sct.nii.gz",
    mask_required=False,
)
SEG = Task(
    name="seg",
    description="MRI -> tumour mask",
    source_keys=("mr",),
    target_key="tumor",
    mask_key=None,
    target_kind="mask",
    loss=LossWeights(dice=1.0, bce=1.0),
    metrics=("dice", "hd95"),
    best_metric="dice",
    higher_is_better=True,
    output_name="mask.nii.gz",
)
INPAINT = Task(
    name="inpaint",
    description="MRI with a corrupted region -> restored MRI",
    source_keys=("mr",),
    target_key="mr",
    mask_key=None,
    target_kind="mr",
    loss=LossWeights(l1=100.0, gan=1.0),
    metrics=("ssim", "psnr", "mse"),
    best_metric="ssim",
    higher_is_better=True,
    output_name="inpainted.nii.gz",
    region_key="region",
    voided_key="voided",
    scored_region_keys=("region_healthy",),
)

TASKS: dict[str, Task] = {t.name: t for t in (MRI2CT, SEG, INPAINT)}


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
