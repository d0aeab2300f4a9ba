"""Is the MRI -> CT error between mridir_phantom's slabs an MR intensity drift? An N4 check.

The model trained on the upper slab predicts the lower slab's soft tissue too high (docs/results.md).
If that came from a smooth intensity drift along z (coil sensitivity, which N4 estimates and
removes), correcting the T2 would move the soft-tissue bias of the 1D intensity lookup, which has
nothing but intensity to go on. This script corrects the T2 with SimpleITK's N4 (mask: Otsu of the
shrunk T2) and prints, per slab split and for the raw and the corrected T2: the median T2 of
each slab's soft tissue (CT 0..80 HU), and the lookup's MAE overall, on bone (> 300 HU) and on
soft tissue (-100..100 HU, narrower than ``evaluate``'s -500..300 class) with its signed bias,
inside CT > -500 HU of the test slab, as ``medp2p evaluate`` scores.

    python benchmarks/mridir_bias_field.py [--runs runs/realdata]   # about 2 minutes on 2 cores

Data: ``$MEDP2P_SHARED_DATA`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from medp2p.data.geometry import slab_mask
from medp2p.data.intensity import ct_body
from medp2p.eval import IntensityLookup
from medp2p.io import read_volume
from medp2p.io.itk import n4_corrected
from medp2p.metrics.synthesis import mae_hu
from medp2p.types import Volume

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDP2P_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
SPLITS = (("lower_to_upper", (0.0, 0.5), (0.5, 1.0)), ("upper_to_lower", (0.5, 1.0), (0.0, 0.5)))
SOFT_TISSUE = (-100.0, 100.0)


def errors(ct: Volume, sct: np.ndarray, test: tuple[float, float]) -> dict[str, float]:
    """MAE overall, on bone and on soft tissue, and the soft-tissue bias, inside the ``test`` slab's body."""
    test_body = ct_body(ct.array) & slab_mask(ct.shape, ct.affine, "axial", test)
    soft = test_body & (ct.array >= SOFT_TISSUE[0]) & (ct.array < SOFT_TISSUE[1])
    return {
        "mae": mae_hu(ct.array, sct, test_body),
        "mae_bone": mae_hu(ct.array, sct, test_body & (ct.array > 300)),
        "mae_soft": mae_hu(ct.array, sct, soft),
        "bias_soft": float((sct[soft].astype(np.float64) - ct.array[soft]).mean()),
    }


def lookup_sct(mr: Volume, ct: Volume, train: tuple[float, float]) -> np.ndarray:
    """The lookup's synthetic CT, fitted on the ``train`` slab's body."""
    train_body = ct_body(ct.array) & slab_mask(ct.shape, ct.affine, "axial", train)
    return IntensityLookup.fit([(mr, ct, train_body)]).predict(mr).array


def soft_tissue_median(mr: Volume, ct: Volume, slab: tuple[float, float]) -> float:
    """Median T2 of the slab's soft tissue (CT 0..80 HU)."""
    m = slab_mask(ct.shape, ct.affine, "axial", slab) & (ct.array > 0) & (ct.array < 80)
    return float(np.median(mr.array[m]))


def row(label: str, medians: str, split: str, e: dict[str, float]) -> str:
    return f"| {label} | {medians} | {split} | {e['mae']:.1f} | {e['mae_bone']:.1f} | {e['mae_soft']:.1f} | {e['bias_soft']:+.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, help="A realdata.py mri2ct --work folder: also score its models' sCTs the same way.")
    args = parser.parse_args()
    folder = SHARED / "mridir_phantom"
    if not folder.is_dir():
        sys.exit(f"mridir_phantom not found at {folder} (set MEDP2P_SHARED_DATA)")
    mr, ct = read_volume(folder / "t2.nii.gz"), read_volume(folder / "ct_in_t2space.nii.gz")
    start = time.perf_counter()
    corrected = n4_corrected(mr)
    print(f"N4: {time.perf_counter() - start:.0f} s")
    print("| T2, prediction | median T2 at 0..80 HU, lower / upper slab | split | MAE | bone | -100..100 HU | its bias |")
    print("|---|---|---|---|---|---|---|")
    for label, image in (("raw", mr), ("N4", corrected)):
        medians = f"{soft_tissue_median(image, ct, (0.0, 0.5)):.0f} / {soft_tissue_median(image, ct, (0.5, 1.0)):.0f}"
        for name, train, test in SPLITS:
            print(row(f"{label}, lookup", medians, name, errors(ct, lookup_sct(image, ct, train), test)))
    for name, _, test in SPLITS if args.runs else ():
        path = args.runs / "mri2ct" / name / "pred" / "mridir" / "sct.nii.gz"
        if path.exists():
            print(row("raw, medp2p model", "-", name, errors(ct, read_volume(path).array, test)))


if __name__ == "__main__":
    main()
