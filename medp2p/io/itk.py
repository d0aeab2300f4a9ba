"""MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) with SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medp2p.io.atomic import atomic_path, full_suffix
from medp2p.io.errors import VolumeReadError
from medp2p.io.geometry import affine_from_itk, itk_from_affine, shear
from medp2p.io.nifti import output_dtype, squeeze_to_3d
from medp2p.types import Volume

ITK_READ_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
#: Single-file formats only: a detached header plus data file cannot be replaced atomically.
ITK_WRITE_SUFFIXES = (".mha", ".nrrd")


def read_itk(path: str | Path) -> Volume:
    """Read an ``.mha``/``.mhd``/``.nrrd``/``.nhdr`` volume into a float32 :class:`Volume`.

    Example:
        >>> vol = read_itk("brain1_image.nrrd")
        >>> axis_codes(vol.affine)
        'LAS'
    """
    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise VolumeReadError(path, f"SimpleITK could not read it, the file is truncated or corrupt ({first})") from err
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeReadError(path, f"{img.GetNumberOfComponentsPerPixel()}-component pixels; medp2p reads scalar volumes")
    size = img.GetSize()
    shape3 = squeeze_to_3d(path, size)
    dim = img.GetDimension()
    if dim == 4:
        img = sitk.Extract(img, [*size[:3], 0], [0, 0, 0, 0])
    array = sitk.GetArrayFromImage(img).T.reshape(shape3).astype(np.float32)
    origin = np.zeros(3)
    spacing = np.ones(3)
    direction = np.eye(3)
    d = min(img.GetDimension(), 3)
    origin[:d] = img.GetOrigin()[:d]
    spacing[:d] = img.GetSpacing()[:d]
    direction[:d, :d] = np.asarray(img.GetDirection()).reshape(img.GetDimension(), -1)[:d, :d]
    meta = {
        "path": str(path),
        "format": "itk",
        "itk_metadata": {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()},
    }
    return Volume(np.ascontiguousarray(array), affine_from_itk(origin, spacing, direction), meta)


def write_itk(volume: Volume, path: str | Path, dtype: np.dtype | type | str | None = None) -> Path:
    """Write ``volume`` to ``.mha`` or ``.nrrd`` atomically (compressed), geometry in LPS+ as ITK expects.

    Example:
        >>> write_itk(sct, "out/case_000/sct.mha")
    """
    path = Path(path)
    if full_suffix(path) not in ITK_WRITE_SUFFIXES:
        raise ValueError(f"{path}: SimpleITK output must end in one of {ITK_WRITE_SUFFIXES}")
    if shear(volume.affine) > 1e-4:
        raise ValueError(f"{path}: the affine is sheared; ITK images cannot store it")
    out_dtype = output_dtype(volume.array, dtype, path)
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.astype(out_dtype).T))
    origin, spacing, direction = itk_from_affine(volume.affine)
    img.SetOrigin(origin.tolist())
    img.SetSpacing(spacing.tolist())
    img.SetDirection(direction.ravel().tolist())
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return path


def n4_corrected(mr: Volume, shrink: tuple[int, int, int] = (4, 4, 1), iterations: int = 50, levels: int = 4) -> Volume:
    """``mr`` divided by N4's bias field (SimpleITK), fitted on a shrunk copy inside its Otsu foreground.

    Args:
        mr: the MR volume.
        shrink: the fit runs on a copy shrunk by these factors per axis (the field is smooth).
        iterations: N4 iterations per level.
        levels: fitting levels.

    Example:
        >>> flat = n4_corrected(read_volume("t2.nii.gz"))
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(mr.array.transpose(2, 1, 0)).astype(np.float32))
    image.SetSpacing([float(s) for s in mr.spacing_mm])
    small = sitk.Shrink(image, list(shrink))
    mask = sitk.OtsuThreshold(small, 0, 1, 200)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([iterations] * levels)
    n4.Execute(small, mask)
    field = sitk.Exp(n4.GetLogBiasFieldAsImage(image))
    corrected = sitk.GetArrayFromImage(image / field).transpose(2, 1, 0)
    return mr.with_array(np.ascontiguousarray(corrected, dtype=np.float32))
