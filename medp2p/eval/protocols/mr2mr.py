"""MR contrast synthesis: train on some subjects' co-registered contrasts, synthesise another subject's.

Splits (the shared co-registered data): kirby21 -> stroke_cstar for T1 -> T2 and T1 -> FLAIR (one
healthy volunteer in training, a stroke patient from another scanner in test), and BraTS 2015
FLAIR -> T1c (3 glioma patients in training, the 4th in test). Baseline, scored by the same
``evaluate``: a 1D intensity lookup fitted on the training subjects (the source's normalised
percentile window -> the median target intensity).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medp2p.eval.baseline import IntensityLookup
from medp2p.eval.protocols.common import (
    ProtocolOptions,
    Result,
    evaluate_baseline,
    rescore,
    shared_data,
    train_predict_evaluate,
    write_datalist,
)
from medp2p.eval.protocols.seg import BRATS, brats_case
from medp2p.io import read_volume

#: The definition the mr2mr targets are stated in (SSIM and MSE in the brain).
PRIMARY = "brasyn-brain"

QUICK_SETS = ["train.steps=400", "data.image_size=[64, 64]", "model.depth=5", "model.base_channels=16", "data.spacing_mm=2.0"]


def _kirby(source: str, target: str) -> dict[str, Any]:
    folder = shared_data() / "kirby21_113"
    files = {
        "t1": "113-02-MPRAGE_processed_reg.nii.gz",
        "t2": "113-02-T2w_processed_reg.nii.gz",
        "flair": "113-02-FLAIR_processed_reg.nii.gz",
    }
    return {
        "id": "kirby21",
        "mr": str(folder / files[source]),
        "target": str(folder / files[target]),
        "mask": str(folder / "113-01-MPRAGE_mask.nii.gz"),
    }


def _stroke(source: str, target: str) -> dict[str, Any]:
    folder = shared_data() / "stroke_cstar"
    return {"id": "stroke_cstar", "mr": str(folder / f"{source.upper()}.nii.gz"), "target": str(folder / f"{target.upper()}.nii.gz")}


def _brats(name: str) -> dict[str, Any]:
    c = brats_case(name)
    return {"id": name, "mr": c["flair"], "target": c["t1c"], "mask": c["brain"], "tumor": c["tumor"]}  # BraSyn splits by the tumour


def mr2mr_splits() -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """``name -> (training cases, test cases)``, every case with keys ``mr``, ``target`` (and ``mask``, BraTS ``tumor``)."""
    return {
        "t1_to_t2": ([_kirby("t1", "t2")], [_stroke("t1", "t2")]),
        "t1_to_flair": ([_kirby("t1", "flair")], [_stroke("t1", "flair")]),
        "flair_to_t1c": ([_brats(n) for n in BRATS[:3]], [_brats(BRATS[3])]),
    }


def _lookup(training: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, Any]:
    """The 1D intensity lookup's synthetic contrast for each test case, fitted inside the training brains."""
    pairs = []
    for c in training:
        source, target = read_volume(c["mr"]), read_volume(c["target"])
        pairs.append((source, target, read_volume(c["mask"]).array > 0 if "mask" in c else None))
    lookup = IntensityLookup.fit(pairs)
    return {c["id"]: lookup.predict(read_volume(c["mr"])) for c in test}


def run_mr2mr(opts: ProtocolOptions, splits: tuple[str, ...] = ("t1_to_t2", "t1_to_flair", "flair_to_t1c")) -> Result:
    """Each split with ``configs/mr2mr_brain.yaml``; per held-out volume, the model's and the lookup's BraSyn figures."""
    work = opts.work.resolve()
    result = Result("mr2mr")
    for name, (training, test) in mr2mr_splits().items():
        if name not in splits:
            continue
        out = work / "mr2mr" / name
        train_list = write_datalist(out / "train.json", training)
        test_list = write_datalist(out / "test.json", test)
        # the targets were set on SSIM / MSE in the brain (brasyn-brain); BraSyn's own split comes from rescore
        row = train_predict_evaluate(
            opts, "mr2mr", "mr2mr_brain.yaml", train_list, test_list, out, QUICK_SETS if opts.quick else [], ["--metrics", PRIMARY]
        )
        row["baselines"] = {"lookup": evaluate_baseline("mr2mr", "lookup", _lookup(training, test), test_list, out, metrics=PRIMARY)}
        row["per_case"] = {**_per_case(out / "report", "medp2p"), **_per_case(out / "baselines" / "lookup_report", "lookup")}
        m, lk = row["metrics"], row["baselines"]["lookup"]
        row["ratios"] = {"mse": m["mse"] / lk["mse"], "ssim_gain": m["ssim"] - lk["ssim"]}
        rescore("mr2mr", row, out, test_list, PRIMARY)
        row.update(split=name, training=[c["id"] for c in training], test=[c["id"] for c in test])
        result.splits.append(row)
    result.save(work / "mr2mr" / "results.json")
    return result


def _per_case(report: Path, label: str) -> dict[str, dict[str, float]]:
    import csv

    with (report / "metrics.csv").open() as fh:
        return {f"{label} {r['case']}": {k: float(v) for k, v in r.items() if k != "case"} for r in csv.DictReader(fh)}
