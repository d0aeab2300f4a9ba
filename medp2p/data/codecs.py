"""Target codecs: how a task's target is put into model space for the generator and taken back out.

Three values cover the tasks: :data:`HU` (a CT's window [-1024, 3000] HU <-> [-1, 1]),
:data:`MASK` (0/1 labels, the generator emits logits) and MR (a percentile window:
:data:`MR_SOURCE` uses the first source's, as inpainting restores the source image;
:data:`MR_TARGET` the target contrast's own, fitted on the training targets and kept in the run,
as MR contrast synthesis writes another contrast). A task names its codec; nothing outside the
codec asks which one it is.

Example:
    >>> HU.final_activation, MASK.logits, MR_TARGET.fits_window
    ('tanh', True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medp2p.data.geometry import GridMap, from_model_space
from medp2p.data.intensity import HU_WINDOW, IntensityWindow, body_mask, ct_body, mr_window
from medp2p.types import Volume

#: Model-space value of background (and of voided voxels): the bottom of every window.
BACKGROUND = -1.0


@dataclass(frozen=True)
class TargetCodec:
    """Encode a target into model space and decode generator outputs back onto the input grid.

    Args:
        name: shown in run records (``hu``, ``mask``, ``mr``).
        interpolation: ``linear`` for images, ``nearest`` for labels (resampling into model space).
        pad_value: model-space value around each slice.
        final_activation: the generator's last activation (``tanh`` or ``none`` for logits).
        logits: the generator outputs logits, turned into images in [-1, 1] for the discriminator.
        output_dtype: the dtype predictions are written in.
        labels: the target is a label map (its values are checked as labels, kept by nearest
            neighbour, averaged as probabilities).
        units: what decoded values are in (uncertainty maps are in the same units).
    """

    name: str
    interpolation: str = "linear"
    pad_value: float = BACKGROUND
    final_activation: str = "tanh"
    logits: bool = False
    output_dtype: type = np.float32
    labels: bool = False
    units: str = "intensity (the output's scale)"

    @property
    def fits_window(self) -> bool:
        """Whether the codec's window is fitted on the training targets (kept in ``data.target_window``)."""
        return False

    def encode(
        self, target: Volume, source_windows: list[IntensityWindow], percentiles: tuple[float, float]
    ) -> tuple[np.ndarray, IntensityWindow | None]:
        """The target's values as the generator learns them, and the window used (None when fixed)."""
        raise NotImplementedError

    def decode(
        self, out: torch.Tensor, grid: GridMap, source_windows: list[IntensityWindow], target_window: IntensityWindow | None
    ) -> np.ndarray:
        """A ``(D, H, W)`` model-space output back on the input's grid, in the target's units."""
        raise NotImplementedError

    def decode_soft(
        self, out: torch.Tensor, grid: GridMap, source_windows: list[IntensityWindow], target_window: IntensityWindow | None
    ) -> np.ndarray:
        """:meth:`decode` before its last rounding: what ensembles and TTA passes average (masks: probabilities)."""
        return self.decode(out, grid, source_windows, target_window)

    def harden(self, soft: np.ndarray) -> np.ndarray:
        """The output :meth:`decode` gives from an (averaged) :meth:`decode_soft` value (masks: probability > 0.5)."""
        return soft

    def units_per_model_unit(self, source_windows: list[IntensityWindow], target_window: IntensityWindow | None) -> float:
        """How many output units one model-space unit is (a learned error scale's factor); labels have none."""
        raise ValueError(f"the {self.name} codec's outputs are labels: they have no intensity scale")

    def body_from_target(self, target: np.ndarray) -> np.ndarray | None:
        """The loss/metric mask of a case that has none, from its target (a CT's body); None if no rule."""
        return None

    def to_image(self, out: torch.Tensor) -> torch.Tensor:
        """What the discriminator sees of a generator output: an image in [-1, 1]."""
        return torch.sigmoid(out) * 2 - 1 if self.logits else out


@dataclass(frozen=True)
class _HU(TargetCodec):
    def encode(
        self, target: Volume, source_windows: list[IntensityWindow], percentiles: tuple[float, float]
    ) -> tuple[np.ndarray, IntensityWindow | None]:
        return HU_WINDOW.forward(target.array), None

    def decode(
        self, out: torch.Tensor, grid: GridMap, source_windows: list[IntensityWindow], target_window: IntensityWindow | None
    ) -> np.ndarray:
        back = from_model_space(out, grid)
        return HU_WINDOW.inverse(back, out=back)

    def body_from_target(self, target: np.ndarray) -> np.ndarray | None:
        return ct_body(target)

    def units_per_model_unit(self, source_windows: list[IntensityWindow], target_window: IntensityWindow | None) -> float:
        return HU_WINDOW.half_width


@dataclass(frozen=True)
class _Mask(TargetCodec):
    def encode(
        self, target: Volume, source_windows: list[IntensityWindow], percentiles: tuple[float, float]
    ) -> tuple[np.ndarray, IntensityWindow | None]:
        return (target.array > 0).astype(np.float32), None

    def decode(
        self, out: torch.Tensor, grid: GridMap, source_windows: list[IntensityWindow], target_window: IntensityWindow | None
    ) -> np.ndarray:
        return self.harden(self.decode_soft(out, grid, source_windows, target_window))

    def decode_soft(
        self, out: torch.Tensor, grid: GridMap, source_windows: list[IntensityWindow], target_window: IntensityWindow | None
    ) -> np.ndarray:
        return from_model_space(torch.sigmoid(out), grid)

    def harden(self, soft: np.ndarray) -> np.ndarray:
        return (soft > 0.5).astype(np.float32)


@dataclass(frozen=True)
class _MR(TargetCodec):
    """``window``: ``source`` (the first source's window: the target is the source image) or ``target``."""

    window: str = "source"

    @property
    def fits_window(self) -> bool:
        return self.window == "target"

    def encode(
        self, target: Volume, source_windows: list[IntensityWindow], percentiles: tuple[float, float]
    ) -> tuple[np.ndarray, IntensityWindow | None]:
        if self.window == "source":
            return source_windows[0].forward(target.array), None
        own = mr_window(target.array, body_mask(target.array), percentiles)
        return own.forward(target.array), own

    def decode(
        self, out: torch.Tensor, grid: GridMap, source_windows: list[IntensityWindow], target_window: IntensityWindow | None
    ) -> np.ndarray:
        back = from_model_space(out, grid)
        return self._window(source_windows, target_window).inverse(back, out=back)

    def units_per_model_unit(self, source_windows: list[IntensityWindow], target_window: IntensityWindow | None) -> float:
        return self._window(source_windows, target_window).half_width

    def _window(self, source_windows: list[IntensityWindow], target_window: IntensityWindow | None) -> IntensityWindow:
        window = source_windows[0] if self.window == "source" else target_window
        if window is None:
            raise ValueError("this model writes the target contrast's scale, but the run holds no data.target_window")
        return window


#: A CT in HU: [-1024, 3000] HU <-> [-1, 1]; a case without a body mask gets CT > -500 HU.
HU: TargetCodec = _HU("hu", units="HU")
#: 0/1 labels (values > 0), nearest-neighbour resampling, logits out, uint8 on disk.
MASK: TargetCodec = _Mask(
    "mask",
    interpolation="nearest",
    pad_value=0.0,
    final_activation="none",
    logits=True,
    output_dtype=np.uint8,
    labels=True,
    units="foreground probability",
)
#: The source image itself (inpainting): the first source's percentile window.
MR_SOURCE: TargetCodec = _MR("mr", window="source")
#: Another MR contrast (contrast synthesis): its own percentile window, fitted on the training targets.
MR_TARGET: TargetCodec = _MR("mr", window="target")


def fitted_window(windows: list[IntensityWindow], percentiles: tuple[float, float]) -> IntensityWindow:
    """The run's target window: the median of the training targets' own windows.

    Example:
        >>> fitted_window([IntensityWindow(0, 100), IntensityWindow(10, 120)], (0.5, 99.5)).to_dict()
        {'lo': 5.0, 'hi': 110.0}
    """
    if not windows:
        raise ValueError("no training target to fit the target window on")
    lo = float(np.median([w.lo for w in windows]))
    hi = float(np.median([w.hi for w in windows]))
    return IntensityWindow(lo, max(hi, lo + 1.0), clip=windows[0].clip)
