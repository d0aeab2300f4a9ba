"""NIfTI reading and writing with nibabel, keeping the source header."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip

from medp2p.io.atomic import atomic_path, full_suffix
from medp2p.io.errors import VolumeReadError
from medp2p.io.geometry import shear
from medp2p.io.layout import c_order
from medp2p.types import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Default xform code when the source had none: 1 = scanner-anatomical coordinates.
_SCANNER = 1


def squeeze_to_3d(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3D shape of an image of ``shape``: 2D gains Z=1, trailing singleton axes go."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3:
        raise VolumeReadError(path, f"image of shape {tuple(shape)} is not a 3D volume; split the extra dimension first")
    return tuple(dims)  # type: ignore[return-value]


def read_nifti(path: str | Path) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file into a float32 :class:`Volume`, decoding every voxel.

    The affine is nibabel's (sform when its code is set, else qform). The header, qform and sform
    are kept in ``meta`` for :func:`write_nifti` and for validation.

    Example:
        >>> ct = read_nifti("case_000/ct.nii.gz")
        >>> ct.array.dtype, ct.spacing_mm
        (dtype('float32'), (1.0, 1.0, 2.0))
    """
    path = Path(path)
    fast = _read_gzipped(path) if full_suffix(path) == ".nii.gz" else None
    img, array = fast if fast is not None else _read_with_nibabel(path)
    header = img.header.copy()
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    meta = {
        "path": str(path),
        "format": "nifti",
        "nifti_header": header,
        "qform": (int(qcode), None if qform is None else np.asarray(qform, float)),
        "sform": (int(scode), None if sform is None else np.asarray(sform, float)),
    }
    return Volume(c_order(array), np.asarray(img.affine, float), meta)


def _read_with_nibabel(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Read with nibabel alone (any NIfTI, compressed or not), with one-line errors naming the file and the problem."""
    try:
        img = nib.load(str(path), mmap=False)
    except Exception as err:  # nibabel raises many types for garbage input
        raise VolumeReadError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeReadError(path, f"expected a NIfTI image, nibabel read a {type(img).__name__}")
    return img, _decoded(path, img)


def _decoded(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    """Every voxel of ``img`` as float32, in its 3D shape (nibabel's scaling)."""
    shape3 = squeeze_to_3d(path, img.shape)
    if np.dtype(img.get_data_dtype()).kind not in "biuf":
        raise VolumeReadError(path, f"voxel type {img.get_data_dtype()} is not a scalar number (RGB/complex?)")
    try:
        return np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape3)
    except Exception as err:
        raise VolumeReadError(
            path, f"voxel data could not be decoded, the file is truncated or corrupt ({type(err).__name__}: {err})"
        ) from err


def _read_gzipped(path: Path) -> tuple[nib.Nifti1Image, np.ndarray] | None:
    """A ``.nii.gz`` inflated by ISA-L as nibabel decodes it; None when anything fails (nibabel then reads it and names the problem).

    The same header and voxels as ``nib.load``, which inflates with zlib: ISA-L takes about 0.13 s
    against 0.20-0.35 s for a 512x512x94 int16 CT (docs/results.md), and the voxels stream into
    one buffer as nibabel's own reading does, so memory is the same.
    """
    try:
        with open(path, "rb") as raw, igzip.IGzipFile(fileobj=raw, mode="rb") as gz:
            image_cls = nib.Nifti2Image if nib.Nifti2Header.may_contain_header(gz.read(540)) else nib.Nifti1Image
            gz.seek(0)
            holder = nib.FileHolder(filename=str(path), fileobj=gz)
            img = image_cls.from_file_map({"image": holder, "header": holder})
            return img, _decoded(path, img)
    except Exception:  # noqa: BLE001 - garbage, truncated or unusual files: nibabel's reading reports them
        return None


def output_dtype(array: np.ndarray, dtype: np.dtype | type | str | None, path: Path) -> np.dtype:
    """The on-disk dtype for ``array`` (float32 by default); integer types need integral values that fit."""
    out = np.dtype(np.float32 if dtype is None else dtype)
    if out.kind in "iub":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{path}: integer output {out} asked for, but the array holds non-integer values")
        info = np.iinfo(out) if out.kind != "b" else None
        if info is not None and array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"{path}: values {array.min()}..{array.max()} do not fit {out}")
    elif out != np.float32 and out != np.float64:
        raise ValueError(f"{path}: unsupported output dtype {out}; use float32 or an integer type")
    return out


def write_nifti(volume: Volume, path: str | Path, dtype: np.dtype | type | str | None = None) -> Path:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) atomically, keeping its source header.

    The written file has the volume's shape and affine, qform and sform both set to that affine
    (with the source's codes, or scanner coordinates when it had none), and no intensity scaling:
    float32 data, or integer data (``dtype=np.uint8`` for masks) with slope 1 and intercept 0.
    The file appears complete or not at all; an older file at ``path`` survives a failed write.

    Args:
        volume: what to write; ``meta["nifti_header"]`` is reused when present.
        path: destination ending in ``.nii`` or ``.nii.gz``.
        dtype: on-disk type; float32 by default. Integer types require integral values.

    Example:
        >>> sct = mr.with_array(hu)                       # a prediction on the MR's grid
        >>> write_nifti(sct, "out/case_000/sct.nii.gz")
    """
    path = Path(path)
    if full_suffix(path) not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    if shear(volume.affine) > 1e-4:
        raise ValueError(f"{path}: the affine is sheared; NIfTI qform cannot store it")
    out_dtype = output_dtype(volume.array, dtype, path)
    source = volume.meta.get("nifti_header")
    image_cls: type[nib.Nifti1Image] = nib.Nifti2Image if isinstance(source, nib.Nifti2Header) else nib.Nifti1Image
    header = source.copy() if isinstance(source, nib.Nifti1Header) else None
    img = image_cls(volume.array.astype(out_dtype, copy=False), volume.affine, header=header)
    qcode = int(volume.meta.get("qform", (0, None))[0]) or _SCANNER
    scode = int(volume.meta.get("sform", (0, None))[0]) or qcode
    img.set_qform(volume.affine, code=qcode)
    img.set_sform(volume.affine, code=scode)
    img.set_data_dtype(out_dtype)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        if full_suffix(path) == ".nii.gz":
            _save_gzipped(img, tmp)
        else:
            nib.save(img, str(tmp))
    return path


def _save_gzipped(img: nib.Nifti1Image, path: Path) -> None:
    """``nib.save`` to ``.nii.gz``, deflated by ISA-L instead of zlib.

    The file holds nibabel's ``.nii`` bytes in one standard gzip member with no name and mtime 0,
    so the same volume always gives the same file. ISA-L's level 1 deflates many times faster
    than zlib's level 1 (nibabel's default) into a file no larger; docs/results.md has the figures.
    """
    with open(path, "wb") as raw, igzip.IGzipFile(filename="", mode="wb", compresslevel=1, fileobj=raw, mtime=0) as gz:
        img.to_file_map({"image": nib.FileHolder(filename=str(path), fileobj=gz)})
