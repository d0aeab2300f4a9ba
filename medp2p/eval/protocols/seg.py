"""Tumour masks on ``brats2015_deepmedic``: train on 3 patients, score the 4th, every rotation."""

from __future__ import annotations

from medp2p.eval.baseline import ThresholdSegmenter
from medp2p.eval.protocols.common import (
    ProtocolOptions,
    Result,
    evaluate_baseline,
    medp2p,
    rescore,
    shared_data,
    summary,
    train_predict_evaluate,
    write_datalist,
)
from medp2p.io import read_volume

BRATS = ("brats_2013_pat0001_1", "brats_2013_pat0002_1", "brats_2013_pat0003_1", "brats_2013_pat0004_1")
QUICK_SETS = ["train.steps=200", "data.image_size=[96, 96]", "model.depth=5", "model.base_channels=16"]


def brats_case(name: str) -> dict[str, str]:
    """One DeepMedic BraTS 2015 patient as a case: FLAIR, T1c (z-scored in the brain), 4-class tumour, brain mask."""
    folder = shared_data() / "brats2015_deepmedic" / name
    return {
        "id": name,
        "flair": str(folder / "Flair_subtrMeanDivStd.nii.gz"),
        "t1c": str(folder / "T1c_subtrMeanDivStd.nii.gz"),
        "tumor": str(folder / "OTMultiClass.nii.gz"),
        "brain": str(folder / "brainmask.nii.gz"),
    }


def run_seg(opts: ProtocolOptions, folds: tuple[int, ...] = (0, 1, 2, 3)) -> Result:
    """Whole tumour (label > 0) with ``configs/seg_brats.yaml``, beside a FLAIR threshold.

    Each fold's model is also scored on pyradiomics_brain (out of distribution: one post-contrast
    T1 per case, given as both input channels).
    """
    work = opts.work.resolve()
    result = Result("seg")
    radiomics = shared_data() / "pyradiomics_brain"
    ood = [
        {"id": f"brain{i}", "flair": str(radiomics / f"brain{i}_image.nrrd"), "t1c": str(radiomics / f"brain{i}_image.nrrd"),
         "tumor": str(radiomics / f"brain{i}_label.nrrd")}
        for i in (1, 2)
    ]  # fmt: skip
    ood_list = write_datalist(work / "seg" / "pyradiomics.json", ood)
    for fold in folds:
        test = brats_case(BRATS[fold])
        training = [brats_case(n) for i, n in enumerate(BRATS) if i != fold]
        out = work / "seg" / f"fold{fold}"
        train_list = write_datalist(out / "train.json", training)
        test_list = write_datalist(out / "test.json", [test])
        row = train_predict_evaluate(opts, "seg", "seg_brats.yaml", train_list, test_list, out, QUICK_SETS if opts.quick else [], [])
        threshold = ThresholdSegmenter.fit(
            [(read_volume(c["flair"]), read_volume(c["tumor"]), read_volume(c["brain"]).array) for c in training]
        )
        guess = threshold.predict(read_volume(test["flair"]), read_volume(test["brain"]).array)
        row["baselines"] = {"flair_threshold": evaluate_baseline("seg", "flair_threshold", {test["id"]: guess}, test_list, out)}
        rescore("seg", row, out, test_list)
        log = out / "log.txt"
        medp2p("predict", "--model", str(out / "run"), "-i", str(ood_list), "-o", str(out / "ood_pred"), "--overwrite", log=log)
        medp2p(
            "evaluate",
            "--task",
            "seg",
            "--pred",
            str(out / "ood_pred"),
            "--ref",
            str(ood_list),
            "-o",
            str(out / "ood_report"),
            "--overwrite",
            log=log,
        )
        row["pyradiomics"] = summary(out / "ood_report")
        row.update(fold=fold, test_case=test["id"])
        result.splits.append(row)
    result.save(work / "seg" / "results.json")
    return result
