"""MRI -> CT on ``mridir_phantom``: train on one half of the z range, score the other half inside CT > -500 HU."""

from __future__ import annotations

import numpy as np

from medp2p.data.geometry import slab_mask
from medp2p.data.intensity import ct_body
from medp2p.eval.baseline import IntensityLookup, mean_hu
from medp2p.eval.protocols.common import (
    ProtocolOptions,
    Result,
    evaluate_baseline,
    rescore,
    shared_data,
    train_predict_evaluate,
    write_datalist,
)
from medp2p.io import read_volume

#: ``(name, training fraction, test fraction)`` of the axial range.
MRIDIR_SPLITS = (("lower_to_upper", (0.0, 0.5), (0.5, 1.0)), ("upper_to_lower", (0.5, 1.0), (0.0, 0.5)))
QUICK_SETS = ["train.steps=300", "data.image_size=[64, 64]", "model.depth=6", "model.base_channels=16", "model.disc_channels=16"]


def run_mri2ct(opts: ProtocolOptions, splits: tuple[str, ...] = ("lower_to_upper", "upper_to_lower")) -> Result:
    """Both slab splits (or ``splits``) with ``configs/mri2ct_mridir.yaml``, beside the lookup and mean-HU baselines.

    Example:
        >>> run_mri2ct(ProtocolOptions(Path("runs/realdata")), splits=("lower_to_upper",)).splits[0]["ratios"]
    """
    work = opts.work.resolve()
    folder = shared_data() / "mridir_phantom"
    case = {"id": "mridir", "mr": str(folder / "t2.nii.gz"), "ct": str(folder / "ct_in_t2space.nii.gz")}
    datalist = write_datalist(work / "mri2ct" / "mridir.json", [case])
    mr, ct = read_volume(case["mr"]), read_volume(case["ct"])
    result = Result("mri2ct")
    for name, train_range, test_range in MRIDIR_SPLITS:
        if name not in splits:
            continue
        out = work / "mri2ct" / name
        sets = [f"data.slice_range=[{train_range[0]}, {train_range[1]}]", *(QUICK_SETS if opts.quick else [])]
        eval_args = ["--slice-range", str(test_range[0]), str(test_range[1])]
        row = train_predict_evaluate(opts, "mri2ct", "mri2ct_mridir.yaml", datalist, datalist, out, sets, eval_args)
        train_body = ct_body(ct.array) & slab_mask(ct.shape, ct.affine, "axial", train_range)
        lookup = IntensityLookup.fit([(mr, ct, train_body)])
        constant = mr.with_array(np.full(mr.shape, mean_hu([(ct, train_body)]), np.float32))
        slab = ("axial", test_range)
        row["baselines"] = {
            "lookup": evaluate_baseline("mri2ct", "lookup", {"mridir": lookup.predict(mr)}, datalist, out, slab=slab),
            "mean_hu": evaluate_baseline("mri2ct", "mean_hu", {"mridir": constant}, datalist, out, slab=slab),
        }
        m, lk = row["metrics"], row["baselines"]["lookup"]
        row["ratios"] = {"mae": m["mae"] / lk["mae"], "mae_bone": m["mae_bone"] / lk["mae_bone"]}
        rescore("mri2ct", row, out, datalist, slab=slab)
        row.update(split=name, train_slab=list(train_range), test_slab=list(test_range))
        result.splits.append(row)
    result.save(work / "mri2ct" / "results.json")
    return result
