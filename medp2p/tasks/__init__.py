"""The three tasks as data: what a task reads, how its target is scaled, its losses and metrics.

A task is a value, not a subclass: a new task is a new :class:`Task` in :data:`TASKS`.

Example:
    >>> TASKS["mri2ct"].required_keys
    ('mr', 'ct', 'mask')
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def __post_init__(self) -> None:
        if self.target_kind not in TARGET_KINDS:
            raise ValueError(f"target_kind must be one of {TARGET_KINDS}, got {self.target_kind!r}")

    @property
    def required_keys(self) -> tuple[str, ...]:
        """Keys every training case needs, in order, without repeats."""
        keys = [*self.source_keys, self.target_key] + ([self.mask_key] if self.mask_key else [])
        return tuple(dict.fromkeys(keys))


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
