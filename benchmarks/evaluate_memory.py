"""Peak memory of ``medp2p evaluate`` on one 512x512x300 mri2ct case, against the whole-volume computation.

The case is the phantom of 256x256x150 at 2x2x2 mm, upsampled by 2 along each axis (512x512x300
at 1 mm), with a prediction of CT + smooth noise. ``medp2p evaluate`` runs in its own process;
beside it, in another, the same metrics as SynthRAD2023's code computes them on whole volumes
(scikit-image's SSIM over the whole array: what medp2p did before its SSIM went to slabs). Printed:
each one's peak RSS and the largest difference between their metrics; then ``evaluate --metrics
synthrad2025`` (the masked MS-SSIM, every scale in slabs) on the same case, its peak RSS and wall time.

    python benchmarks/evaluate_memory.py [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import _machine, _mb, watch  # noqa: E402

from medp2p.data.phantom import PhantomSpec, make_phantom_case  # noqa: E402
from medp2p.io import write_nifti  # noqa: E402
from medp2p.types import Volume  # noqa: E402

_WHOLE = """
import json, sys
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop
sys.path.insert(0, {root!r})
from medp2p.io import read_volume
ct, sct, m = (read_volume({d!r} + f).array for f in ("/ref/case/ct.nii.gz", "/pred/case/sct.nii.gz", "/ref/case/mask.nii.gz"))
m = m > 0
out = {{"mae": float(np.abs(ct[m].astype(np.float64) - sct[m].astype(np.float64)).mean())}}
out["psnr"] = float(peak_signal_noise_ratio(np.clip(ct[m].astype(np.float64), -1024, 3000),
                                            np.clip(sct[m].astype(np.float64), -1024, 3000), data_range=4024))
ref = np.where(m, np.clip(ct.astype(np.float64), -1024, 3000), -1024) + 1024
pred = np.where(m, np.clip(sct.astype(np.float64), -1024, 3000), -1024) + 1024
_, smap = structural_similarity(ref, pred, data_range=4024, full=True)
out["ssim"] = float(crop(smap, 3)[crop(m, 3)].mean(dtype=np.float64))
print(json.dumps(out))
"""


def make_case(work: Path) -> None:
    """``work/ref/case/{ct,mask}.nii.gz`` and ``work/pred/case/sct.nii.gz`` at 512x512x300."""
    if (work / "pred" / "case" / "sct.nii.gz").is_file():
        return
    small = make_phantom_case(0, 0, PhantomSpec((256, 256, 150), (2.0, 2.0, 2.0)))
    up = np.diag([0.5, 0.5, 0.5, 1.0])
    ct = small["ct"]
    big = Volume(np.repeat(np.repeat(np.repeat(ct.array, 2, 0), 2, 1), 2, 2), ct.affine @ up, {})
    big_mask = big.with_array(np.repeat(np.repeat(np.repeat(small["mask"].array, 2, 0), 2, 1), 2, 2).astype(np.uint8))
    del small
    noise = np.random.default_rng(0).normal(0, 80, (64, 64, 38)).astype(np.float32)
    smooth = np.repeat(np.repeat(np.repeat(noise, 8, 0), 8, 1), 8, 2)[:512, :512, :300]
    for path, vol in ((work / "ref" / "case" / "ct.nii.gz", big), (work / "ref" / "case" / "mask.nii.gz", big_mask)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_nifti(vol, path)
    (work / "pred" / "case").mkdir(parents=True, exist_ok=True)
    write_nifti(big.with_array(big.array + smooth), work / "pred" / "case" / "sct.nii.gz")


def main() -> None:
    """Build the case, run both computations, print their peaks and differences as one JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        make_case(work)
        cmd = [sys.executable, "-m", "medp2p.cli", "evaluate", "--task", "mri2ct", "--pred", str(work / "pred"), "--ref", str(work / "ref")]
        ours = watch([*cmd, "--out", str(work / "report"), "--overwrite", "--no-montages"])
        metrics = json.loads((work / "report" / "summary.json").read_text())["metrics"]
        code = _WHOLE.format(root=str(ROOT), d=str(work))
        whole = watch([sys.executable, "-c", code])
        expected = json.loads(whole["output"].strip().splitlines()[-1])
        diffs = {k: abs(metrics[k]["mean"] - v) for k, v in expected.items()}
        ms = watch([*cmd, "--out", str(work / "report2025"), "--overwrite", "--no-montages", "--metrics", "synthrad2025"])
        ms_ssim = json.loads((work / "report2025" / "summary.json").read_text())["metrics"]["ms_ssim"]["mean"]
        result = {
            "machine": _machine(),
            "shape": [512, 512, 300],
            "evaluate_peak_rss_mb": _mb(ours["peaks"][ours["pid"]][1]),
            "evaluate_wall_s": round(ours["wall_s"], 1),
            "whole_volume_peak_rss_mb": _mb(whole["peaks"][whole["pid"]][1]),
            "metrics": {k: metrics[k]["mean"] for k in expected},
            "whole_volume_metrics": expected,
            "largest_difference": max(diffs.values()),
            "synthrad2025_peak_rss_mb": _mb(ms["peaks"][ms["pid"]][1]),
            "synthrad2025_wall_s": round(ms["wall_s"], 1),
            "synthrad2025_ms_ssim": ms_ssim,
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
