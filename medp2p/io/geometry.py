"""Geometry helpers: RAS+/LPS+ conversion, ITK-style (origin, spacing, direction) <-> affine, checks.

medp2p affines are RAS+ (see :mod:`medp2p.types`); ITK and DICOM are LPS+, so both conversions
flip the sign of the first two world axes.
"""

from __future__ import annotations

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_itk(origin_lps: np.ndarray, spacing_mm: np.ndarray, direction_lps: np.ndarray) -> np.ndarray:
    """RAS+ affine from an ITK/DICOM origin, spacing and 3x3 direction (columns = axis directions).

    Example:
        >>> affine_from_itk(np.zeros(3), np.ones(3), np.eye(3))[:3, :3]
        array([[-1., -0.,  0.], [-0., -1.,  0.], [ 0.,  0.,  1.]])
    """
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(direction_lps, float).reshape(3, 3) * np.asarray(spacing_mm, float)[None, :]
    aff[:3, 3] = np.asarray(origin_lps, float)
    return LPS_TO_RAS @ aff


def itk_from_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`affine_from_itk`: ``(origin_lps, spacing_mm, direction_lps)``."""
    lps = LPS_TO_RAS @ np.asarray(affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing[None, :]
    return lps[:3, 3].copy(), spacing, direction


def shear(affine: np.ndarray) -> float:
    """Largest |cosine| between two voxel axes of ``affine``: 0 for an orthogonal grid.

    A sheared grid (axes not at right angles) cannot be stored in a NIfTI qform, an ITK image
    or a DICOM series, so medp2p treats values above ``1e-4`` as an error.
    """
    m = np.asarray(affine, float)[:3, :3]
    unit = m / np.linalg.norm(m, axis=0)[None, :]
    gram = unit.T @ unit
    return float(np.max(np.abs(gram - np.diag(np.diag(gram)))))


def axis_codes(affine: np.ndarray) -> str:
    """Orientation letters of the array axes in RAS+ terms, e.g. ``"RAS"``, ``"LPS"``, ``"LAS"``."""
    m = np.asarray(affine, float)[:3, :3]
    letters = (("L", "R"), ("P", "A"), ("I", "S"))
    out = []
    for col in m.T:
        world = int(np.argmax(np.abs(col)))
        out.append(letters[world][int(col[world] > 0)])
    return "".join(out)
