"""The three tasks as data: which case keys are source, target and mask.

A task is a value, not a subclass: a new task is a new :class:`Task` in :data:`TASKS`.

Example:
    >>> TASKS["mri2ct"].required_keys
    ('mr', 'ct', 'mask')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """What a task reads from each case.

    Args:
        name: the task's name on the command line.
        source_keys: case keys stacked as the generator's input channels.
        target_key: case key the generator learns to produce.
        mask_key: case key of the mask the loss and metrics are restricted to (body mask for
            mri2ct), or None.
        description: one line for help texts.
    """

    name: str
    source_keys: tuple[str, ...]
    target_key: str
    mask_key: str | None
    description: str

    @property
    def required_keys(self) -> tuple[str, ...]:
        """Keys every training case needs, in order, without repeats."""
        keys = [*self.source_keys, self.target_key] + ([self.mask_key] if self.mask_key else [])
        return tuple(dict.fromkeys(keys))


MRI2CT = Task("mri2ct", ("mr",), "ct", "mask", "MRI -> synthetic CT in HU")
SEG = Task("seg", ("mr",), "tumor", None, "MRI -> tumour mask")
INPAINT = Task("inpaint", ("mr",), "mr", None, "MRI with a corrupted region -> restored MRI")

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
