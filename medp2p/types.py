"""Core value types shared by every layer: :class:`Volume` and the batch keys.

World coordinates follow one convention throughout medp2p, the NIfTI/nibabel one:
``Volume.affine`` maps a voxel index ``(i, j, k, 1)`` of ``Volume.array`` to millimetres in
**RAS+** (the first world axis runs from the patient's left to their Right, the second from
posterior to Anterior, the third from inferior to Superior). DICOM and ITK use LPS+; the readers
in :mod:`medp2p.io` convert, so an affine read from a DICOM series, an ``.mha`` and a ``.nii.gz``
of the same scan agree.

The array is indexed ``(X, Y, Z)``: the NIfTI voxel axes, which for DICOM are (column index along
the row direction, row index along the column direction, slice index along the slice normal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Batch keys: defined once, used everywhere (``batch[TARGET]``, never ``batch["B"]``).
SOURCE = "source"
TARGET = "target"
MASK = "mask"
REGION = "region"

# Hounsfield units of reference tissues.
HU_AIR = -1000.0
HU_WATER = 0.0
HU_MIN = -1024.0
HU_MAX = 3000.0


@dataclass
class Volume:
    """A 3D image with its geometry and what is needed to write outputs back in kind.

    Args:
        array: voxel values, float32, shape ``(X, Y, Z)``.
        affine: 4x4 float64 matrix from voxel index to RAS+ millimetres.
        meta: source metadata handed back to the writers. Keys set by the readers:
            ``"path"`` (the file or folder read), ``"format"`` (``"nifti"``, ``"itk"`` or
            ``"dicom"``), ``"nifti_header"`` (a ``nibabel.Nifti1Header``), ``"qform"`` /
            ``"sform"`` (``(code, 4x4 affine)``), ``"dicom_datasets"`` (the series' per-slice
            datasets without pixel data, in array slice order) and ``"series_uid"``.

    Example:
        >>> import numpy as np
        >>> vol = Volume(np.zeros((4, 4, 2), np.float32), np.diag([0.5, 0.5, 2.0, 1.0]))
        >>> vol.spacing_mm
        (0.5, 0.5, 2.0)
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {self.affine.shape}")
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (X, Y, Z), got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(X, Y, Z)``."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along each array axis, in millimetres."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS+ directions of the array axes."""
        direction: np.ndarray = self.affine[:3, :3] / np.asarray(self.spacing_mm)
        return direction

    @property
    def origin_mm(self) -> np.ndarray:
        """RAS+ position of voxel ``(0, 0, 0)`` in millimetres."""
        origin: np.ndarray = self.affine[:3, 3].copy()
        return origin

    @property
    def path(self) -> Path | None:
        """The file or folder this volume was read from, if any."""
        p = self.meta.get("path")
        return Path(p) if p is not None else None

    def with_array(self, array: np.ndarray) -> Volume:
        """A new volume on the same grid (same affine and metadata) holding ``array``.

        Example:
            >>> mask = vol.with_array((vol.array > 0).astype(np.float32))
        """
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} != volume shape {self.shape}")
        return Volume(array, self.affine.copy(), dict(self.meta))
