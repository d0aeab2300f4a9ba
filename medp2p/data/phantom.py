"""A deterministic synthetic head phantom with paired MR-like and CT (HU) contrast and a tumour.

The phantom is medp2p's embedded default dataset: the demo and most tests run on it, so nothing
has to be downloaded. Each case is a head built from nested, randomly posed ellipsoids:

============  ===========================  =======================
tissue        CT (HU)                      MR (T1-like, a.u.)
============  ===========================  =======================
air           -1000                        ~0 (noise floor)
scalp fat     about -100                   bright
skull         700-1500 (diploe to tables)  dark
CSF           about 10                     dark
grey matter   about 40                     mid
white matter  about 30                     bright
tumour        about 55                     darker than brain
sinus (air)   -1000                        dark
============  ===========================  =======================

Bone and air are both dark in the MR, so no intensity lookup can tell them apart: a model has to
use shape and context, as on real scans. The MR gets a smooth bias field and Rician noise; the CT
gets Gaussian noise and bone density texture. Every case is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medp2p.io import write_nifti
from medp2p.io.atomic import default_mode, replace_folder
from medp2p.types import HU_AIR, Volume

#: Phantom generator version, written beside the cases so results can be traced to it.
PHANTOM_VERSION = 1


@dataclass(frozen=True)
class PhantomSpec:
    """Grid of the generated cases.

    Args:
        shape: voxels ``(X, Y, Z)``; the head fills about 80% of the field of view.
        spacing_mm: voxel size in millimetres.
    """

    shape: tuple[int, int, int] = (96, 112, 48)
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 3.0)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 4:
            raise ValueError(f"phantom shape must be 3 sizes of at least 4 voxels, got {self.shape}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"phantom spacing must be 3 positive sizes in mm, got {self.spacing_mm}")

    @property
    def affine(self) -> np.ndarray:
        """RAS+ affine with the grid centred on the world origin."""
        aff = np.diag([*map(float, self.spacing_mm), 1.0])
        aff[:3, 3] = -(np.asarray(self.shape) - 1) / 2.0 * np.asarray(self.spacing_mm)
        return aff


def _rotation(rng: np.random.Generator, max_deg: tuple[float, float, float]) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(max_deg))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rotation: np.ndarray = rz @ ry @ rx
    return rotation


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Smooth noise with zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    normalised: np.ndarray = (field - field.mean()) / (field.std() + 1e-12)
    return normalised


def make_phantom_case(seed: int, index: int, spec: PhantomSpec = PhantomSpec()) -> dict[str, Volume]:
    """Generate one case: ``{"mr", "ct", "mask", "tumor"}`` volumes on one grid.

    Args:
        seed: dataset seed.
        index: case number; case ``index`` is the same whatever the number of cases generated.
        spec: grid shape and spacing.

    Returns:
        ``mr`` (float32, arbitrary units), ``ct`` (integral HU), ``mask`` (body, 0/1) and
        ``tumor`` (0/1), all sharing ``spec.affine``.

    Example:
        >>> case = make_phantom_case(seed=0, index=0, spec=PhantomSpec((32, 32, 8), (4.0, 4.0, 8.0)))
        >>> float(case["ct"].array.min()) >= -1024
        True
    """
    rng = np.random.default_rng([int(seed), int(index)])
    shape = tuple(int(s) for s in spec.shape)
    half = (np.asarray(shape) - 1) / 2.0 * np.asarray(spec.spacing_mm)  # half field of view, mm
    # Normalised head coordinates: the field of view spans [-1, 1] on every axis, then the head
    # is rotated and shifted a little (pose varies per case).
    axes = [np.linspace(-1.0, 1.0, n) * h for n, h in zip(shape, half, strict=True)]
    xyz = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (X, Y, Z, 3) mm
    scale = half.min()  # the head is sized relative to the smallest extent: stays inside the FOV
    rot = _rotation(rng, (6.0, 6.0, 12.0))
    shift = rng.uniform(-0.04, 0.04, 3) * half
    p = ((xyz - shift) @ rot) / scale  # rotated coordinates, unit = smallest half-extent

    semi = np.array([0.78, 0.90, 0.86]) * (half / scale) * rng.uniform(0.93, 1.03, 3)
    semi = np.minimum(semi, 0.95 * half / scale)

    def radius(center: np.ndarray, axes_: np.ndarray) -> np.ndarray:
        r: np.ndarray = np.sqrt((((p - center) / axes_) ** 2).sum(-1))
        return r

    r = radius(np.zeros(3), semi)
    skull_in = rng.uniform(0.80, 0.85)
    skull_out = skull_in + rng.uniform(0.08, 0.11)
    head = r <= 1.0
    scalp = head & (r > skull_out)
    skull = (r > skull_in) & (r <= skull_out)
    csf_rim = (r > skull_in - 0.03) & (r <= skull_in)
    brain = r <= skull_in - 0.03
    grey = brain & (r > skull_in - 0.12)
    white = brain & ~grey
    # Ventricles: two ellipsoids either side of the midline.
    v_axes = np.array([0.07, 0.20, 0.12]) * rng.uniform(0.8, 1.3) * semi
    ventricles = (radius(np.array([0.12, 0.0, 0.05]) * semi, v_axes) <= 1) | (radius(np.array([-0.12, 0.0, 0.05]) * semi, v_axes) <= 1)
    # A frontal sinus: air inside the skull's front, low in the head.
    sinus = radius(np.array([0.0, 0.88 * skull_in, -0.30]) * semi, np.array([0.22, 0.07, 0.10]) * semi) <= 1
    # The tumour: a lumpy sphere somewhere in the brain, away from the midline ventricles.
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    t_center = direction * rng.uniform(0.25, 0.45) * semi
    t_radius = rng.uniform(0.18, 0.28) * semi.min()
    lump = 1.0 + 0.25 * _smooth_field(rng, shape, sigma_vox=max(1.0, min(shape) / 10))
    tumor = (np.sqrt(((p - t_center) ** 2).sum(-1)) <= t_radius * lump) & brain

    # --- CT in HU --------------------------------------------------------------------------------
    ct = np.full(shape, HU_AIR)
    ct[scalp] = rng.uniform(-110, -80)
    depth = np.clip((r - skull_in) / (skull_out - skull_in), 0, 1)  # 0 inner table, 1 outer table
    tables = 1500 - 800 * np.exp(-(((depth - 0.5) / 0.22) ** 2))  # dense tables, lighter diploe
    density = 1.0 + 0.06 * _smooth_field(rng, shape, sigma_vox=1.5)
    ct[skull] = (tables * density)[skull]
    ct[csf_rim | ventricles] = 10.0
    ct[grey & ~ventricles] = 40.0
    ct[white & ~ventricles] = 30.0
    ct[tumor] = 55.0
    ct[sinus & head] = HU_AIR
    ct = ndimage.gaussian_filter(ct, 0.5) + rng.normal(0.0, 6.0, shape)
    ct[~head] = HU_AIR + rng.normal(0.0, 6.0, int((~head).sum()))
    ct = np.round(np.clip(ct, -1024, 3071))

    # --- MR, T1-like -----------------------------------------------------------------------------
    mr = np.zeros(shape)
    mr[scalp] = 0.95
    mr[skull] = 0.06 + 0.10 * (1 - np.abs(depth[skull] - 0.5) * 2)  # a little marrow signal
    mr[csf_rim | ventricles] = 0.18
    mr[grey & ~ventricles] = 0.55
    mr[white & ~ventricles] = 0.80
    mr[tumor] = 0.42 + 0.08 * rng.uniform()
    mr[sinus & head] = 0.02
    mr = ndimage.gaussian_filter(mr, 0.6)
    coords = p / np.abs(p).max()
    coef = rng.normal(0.0, 0.12, 3)
    bias = np.exp(coords @ coef + 0.05 * (coords[..., 0] * coords[..., 1]))
    sigma = 0.025
    mr = np.sqrt((mr * bias + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    mr = mr * rng.uniform(900.0, 1100.0)

    affine = spec.affine
    return {
        "mr": Volume(mr.astype(np.float32), affine.copy()),
        "ct": Volume(ct.astype(np.float32), affine.copy()),
        "mask": Volume(head.astype(np.float32), affine.copy()),
        "tumor": Volume(tumor.astype(np.float32), affine.copy()),
    }


#: On-disk types: CT as integer HU like scanners write it, masks as bytes.
_DTYPES = {"mr": np.float32, "ct": np.int16, "mask": np.uint8, "tumor": np.uint8}


def write_phantom(out: str | Path, cases: int = 4, seed: int = 0, spec: PhantomSpec = PhantomSpec(), overwrite: bool = False) -> list[Path]:
    """Write ``cases`` phantom cases to ``out`` in the SynthRAD layout (``<case>/mr|ct|mask|tumor.nii.gz``).

    The whole folder is built beside ``out`` and renamed into place at the end, so a failure
    leaves nothing behind; an existing non-empty ``out`` is refused unless ``overwrite``.

    Example:
        >>> write_phantom("phantom", cases=2, seed=0, spec=PhantomSpec((32, 32, 8), (4.0, 4.0, 8.0)))
        [PosixPath('phantom/case_000'), PosixPath('phantom/case_001')]
    """
    out = Path(out)
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty; pass overwrite=True (CLI: --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(default_mode("dir"))
    try:
        names = []
        for i in range(cases):
            name = f"case_{i:03d}"
            for key, vol in make_phantom_case(seed, i, spec).items():
                write_nifti(vol, staging / name / f"{key}.nii.gz", dtype=_DTYPES[key])
            names.append(name)
        info = {"generator": "medp2p.data.phantom", "version": PHANTOM_VERSION, "seed": seed, "cases": cases, **asdict(spec)}
        (staging / "phantom_info.json").write_text(json.dumps(info, indent=2) + "\n")
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / n for n in names]
