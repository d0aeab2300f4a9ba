"""The real-data protocols of docs/results.md: train, predict and evaluate with the public CLI.

Each protocol writes its datalists, runs, predictions and reports under ``--work`` (never into
the repository), scores the trivial baselines through the same ``evaluate`` code, and prints
one table plus ``results.json``. ``--quick`` runs the short version the ``realdata`` tests use.

    python benchmarks/realdata.py mri2ct   # mridir_phantom, slab split both ways   (~2 x 28 min)
    python benchmarks/realdata.py seg      # brats2015_deepmedic 4-fold rotation    (~4 x 7 min)
    python benchmarks/realdata.py inpaint  # kirby21 + BraTS train, stroke_cstar + BraTS test

Data: ``$MEDP2P_SHARED_DATA`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medp2p.types import Volume

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDP2P_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
CONFIGS = ROOT / "configs"


@dataclass
class Result:
    """One protocol's figures: per split, the model's and the baselines' summary metrics."""

    task: str
    splits: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task": self.task, "splits": self.splits}, indent=2) + "\n")


def medp2p(*args: str, log: Path) -> float:
    """Run the public CLI (``python -m medp2p``); returns its wall time in seconds. Output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write("$ medp2p " + " ".join(args) + "\n")
        fh.flush()
        done = subprocess.run([sys.executable, "-m", "medp2p", *args], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"medp2p {args[0]} exited {done.returncode}; log {log}:\n{tail}")
    return time.perf_counter() - start


def write_datalist(path: Path, training: list[dict], test: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"training": training, **({"test": test} if test else {})}, indent=2) + "\n")
    return path


def summary(report: Path) -> dict[str, float]:
    """The mean of each metric in a ``medp2p evaluate`` report folder."""
    data = json.loads((report / "summary.json").read_text())
    if data["failures"] or data["missing"]:
        raise RuntimeError(f"{report}: failed or missing cases: {data['failures'] or data['missing']}")
    return {k: v["mean"] for k, v in data["metrics"].items()}


#: Reuse finished runs (``--reuse``): only predict and evaluate again.
REUSE = False
#: Config overrides added to every training (``--set KEY=VALUE``), for experiments beside the shipped config.
EXTRA_SETS: list[str] = []
#: Options added to every ``medp2p predict`` (``--tta``).
PREDICT_OPTIONS: list[str] = []


def train_predict_evaluate(
    task: str, config: Path, train_list: Path, test_list: Path, out: Path, sets: list[str], eval_args: list[str]
) -> dict[str, Any]:
    """``medp2p train`` -> ``predict`` -> ``evaluate``; returns the report's means and the wall times."""
    log = out / "log.txt"
    cmd = ["train", "--task", task, "--config", str(config), "--data", str(train_list), "--out", str(out / "run"), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    if REUSE and (out / "run" / "train_s.txt").exists():
        train_s = float((out / "run" / "train_s.txt").read_text())
    else:
        train_s = medp2p(*cmd, log=log)
        (out / "run" / "train_s.txt").write_text(f"{train_s:.1f}\n")
    predict_s = medp2p(
        "predict", "--model", str(out / "run"), "-i", str(test_list), "-o", str(out / "pred"), "--overwrite", *PREDICT_OPTIONS, log=log
    )
    medp2p("evaluate", "--task", task, "--pred", str(out / "pred"), "--ref", str(test_list), "-o", str(out / "report"), *eval_args, log=log)
    import torch

    steps = int(torch.load(out / "run" / "last.pt", map_location="cpu", weights_only=True)["step"])  # train.minutes may fit fewer
    return {
        "metrics": summary(out / "report"),
        "train_s": round(train_s, 1),
        "steps": steps,
        "predict_s": round(predict_s, 1),
        "command": "medp2p " + " ".join(cmd),
    }


def evaluate_baseline(task: str, name: str, predictions: dict[str, Any], test_list: Path, out: Path, **kwargs: Any) -> dict[str, float]:
    """Write a baseline's volumes as a prediction folder and score it with the same ``evaluate``."""
    from medp2p.eval import evaluate
    from medp2p.io import write_volume
    from medp2p.tasks import get_task

    folder = out / "baselines" / name
    for cid, volume in predictions.items():
        write_volume(volume, folder / cid / get_task(task).output_name)
    evaluate(task, folder, test_list, out / "baselines" / f"{name}_report", montages=False, **kwargs)
    return summary(out / "baselines" / f"{name}_report")


# --------------------------------------------------------------------------------------------- mri2ct
MRIDIR_SPLITS = (("lower_to_upper", (0.0, 0.5), (0.5, 1.0)), ("upper_to_lower", (0.5, 1.0), (0.0, 0.5)))


def run_mri2ct(work: Path, quick: bool = False, splits: tuple[str, ...] = ("lower_to_upper", "upper_to_lower")) -> Result:
    """mridir_phantom: train on one half of the z range, score the other half inside CT > -500 HU."""
    from medp2p.data.geometry import slab_mask
    from medp2p.data.intensity import ct_body
    from medp2p.eval import IntensityLookup, mean_hu
    from medp2p.io import read_volume

    work = work.resolve()
    folder = SHARED / "mridir_phantom"
    case = {"id": "mridir", "mr": str(folder / "t2.nii.gz"), "ct": str(folder / "ct_in_t2space.nii.gz")}
    datalist = write_datalist(work / "mri2ct" / "mridir.json", [case])
    mr, ct = read_volume(case["mr"]), read_volume(case["ct"])
    result = Result("mri2ct")
    quick_sets = ["train.steps=150", "data.image_size=[64, 64]", "model.depth=6", "model.base_channels=16", "model.disc_channels=16"]
    for name, train_range, test_range in MRIDIR_SPLITS:
        if name not in splits:
            continue
        out = work / "mri2ct" / name
        sets = [f"data.slice_range=[{train_range[0]}, {train_range[1]}]", *(quick_sets if quick else []), *EXTRA_SETS]
        eval_args = ["--slice-range", str(test_range[0]), str(test_range[1])]
        row = train_predict_evaluate("mri2ct", CONFIGS / "mri2ct_mridir.yaml", datalist, datalist, out, sets, eval_args)
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
        row.update(split=name, train_slab=list(train_range), test_slab=list(test_range))
        result.splits.append(row)
    result.save(work / "mri2ct" / "results.json")
    return result


# ------------------------------------------------------------------------------------------------ seg
BRATS = ("brats_2013_pat0001_1", "brats_2013_pat0002_1", "brats_2013_pat0003_1", "brats_2013_pat0004_1")


def brats_case(name: str) -> dict[str, str]:
    folder = SHARED / "brats2015_deepmedic" / name
    return {
        "id": name,
        "flair": str(folder / "Flair_subtrMeanDivStd.nii.gz"),
        "t1c": str(folder / "T1c_subtrMeanDivStd.nii.gz"),
        "tumor": str(folder / "OTMultiClass.nii.gz"),
        "brain": str(folder / "brainmask.nii.gz"),
    }


def run_seg(work: Path, quick: bool = False, folds: tuple[int, ...] = (0, 1, 2, 3)) -> Result:
    """brats2015_deepmedic: train on 3 patients, score the 4th (whole tumour = label > 0); every rotation.

    Each fold's model is also scored on pyradiomics_brain (out of distribution: one post-contrast
    T1 per case, given as both input channels) and against a FLAIR-threshold baseline.
    """
    from medp2p.eval import ThresholdSegmenter
    from medp2p.io import read_volume

    work = work.resolve()
    result = Result("seg")
    ood = [
        {
            "id": f"brain{i}",
            "flair": str(SHARED / "pyradiomics_brain" / f"brain{i}_image.nrrd"),
            "t1c": str(SHARED / "pyradiomics_brain" / f"brain{i}_image.nrrd"),
            "tumor": str(SHARED / "pyradiomics_brain" / f"brain{i}_label.nrrd"),
        }
        for i in (1, 2)
    ]
    ood_list = write_datalist(work / "seg" / "pyradiomics.json", ood)
    quick_sets = ["train.steps=200", "data.image_size=[96, 96]", "model.depth=5", "model.base_channels=16"]
    for fold in folds:
        test = brats_case(BRATS[fold])
        training = [brats_case(n) for i, n in enumerate(BRATS) if i != fold]
        out = work / "seg" / f"fold{fold}"
        train_list = write_datalist(out / "train.json", training)
        test_list = write_datalist(out / "test.json", [test])
        row = train_predict_evaluate(
            "seg", CONFIGS / "seg_brats.yaml", train_list, test_list, out, [*(quick_sets if quick else []), *EXTRA_SETS], []
        )
        threshold = ThresholdSegmenter.fit(
            [(read_volume(c["flair"]), read_volume(c["tumor"]), read_volume(c["brain"]).array) for c in training]
        )
        guess = threshold.predict(read_volume(test["flair"]), read_volume(test["brain"]).array)
        row["baselines"] = {"flair_threshold": evaluate_baseline("seg", "flair_threshold", {test["id"]: guess}, test_list, out)}
        medp2p("predict", "--model", str(out / "run"), "-i", str(ood_list), "-o", str(out / "ood_pred"), "--overwrite", log=out / "log.txt")
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
            log=out / "log.txt",
        )
        row["pyradiomics"] = summary(out / "ood_report")
        row.update(fold=fold, test_case=test["id"])
        result.splits.append(row)
    result.save(work / "seg" / "results.json")
    return result


# -------------------------------------------------------------------------------------------- inpaint
def zero_background(path: str, out: Path) -> str:
    """A z-scored BraTS volume shifted so that its background (its minimum) is 0, as in raw MR.

    The DeepMedic volumes are z-scored inside the brain: half the brain is negative and the
    background is a constant minimum (about -5). BraTS-Inpainting's normalisation clips at
    ``max(p0.5, 0)``, which would flatten every negative voxel, and its voided value 0 would sit
    mid-brain instead of at background. The shift changes neither contrast nor structure.
    """
    from medp2p.io import read_volume, write_volume

    if not out.exists():
        image = read_volume(path)
        write_volume(image.with_array((image.array - image.array.min()).astype(np.float32)), out)
    return str(out)


def inpaint_cases(folder: Path) -> tuple[list[dict], list[dict]]:
    """Training and test volumes (no subject in both); BraTS ones shifted to a 0 background under ``folder``."""
    kirby, stroke = SHARED / "kirby21_113", SHARED / "stroke_cstar"
    training = [
        {"id": "kirby21_t1", "mr": str(kirby / "113-02-MPRAGE_processed_reg.nii.gz")},
        {"id": "kirby21_t2", "mr": str(kirby / "113-02-T2w_processed_reg.nii.gz")},
        {"id": "kirby21_flair", "mr": str(kirby / "113-02-FLAIR_processed_reg.nii.gz")},
    ]

    def brats(name: str, tumour: bool = False) -> list[dict]:
        c = brats_case(name)
        return [
            {"id": f"{name}_{k}", "mr": zero_background(c[k], folder / f"{name}_{k}.nii.gz"), **({"tumor": c["tumor"]} if tumour else {})}
            for k in ("flair", "t1c")
        ]

    for name in BRATS[:3]:
        training += brats(name)
    test = [{"id": f"stroke_{k.lower()}", "mr": str(stroke / f"{k}.nii.gz")} for k in ("T1", "T2", "FLAIR")]
    test += brats(BRATS[3], tumour=True)
    return training, test


def healthy_boxes(test: list[dict], folder: Path, seed: int = 1234) -> list[dict]:
    """BraTS-Inpainting-style test inputs: a box of healthy tissue voided per volume (tumour kept out)."""
    from scipy import ndimage

    from medp2p.data.cases import case_seed
    from medp2p.data.corruption import corrupt_volume
    from medp2p.data.intensity import body_mask
    from medp2p.io import read_volume, write_volume

    cases = []
    for case in test:
        image = read_volume(case["mr"])
        healthy = body_mask(image.array)
        if "tumor" in case:
            healthy &= ~ndimage.binary_dilation(read_volume(case["tumor"]).array > 0, iterations=5)
        voided, region = corrupt_volume(image.array, healthy, case_seed(seed, case["id"]))
        cid = case["id"]
        voided_path = write_volume(image.with_array(voided), folder / cid / "voided.nii.gz")
        region_path = write_volume(image.with_array(region.astype(np.uint8)), folder / cid / "region.nii.gz")
        cases.append({"id": cid, "mr": case["mr"], "voided": str(voided_path), "region": str(region_path)})
    return cases


#: Gaussian widths (voxels) of the blurred-truth rows that put the inpainting target in scale.
ORACLE_SIGMAS = (1.0, 2.0)


def blurred_reference(reference: Volume, voided: Volume, region: np.ndarray, sigma: float) -> Volume:
    """An oracle fill, not a baseline: the true image blurred by a Gaussian of ``sigma`` voxels, inside the region.

    It sees the answer. Its score says how exact a fill has to be for a given SSIM: a model can
    predict the box only from what surrounds it, so detail finer than what that context
    determines is out of its reach.
    """
    from scipy import ndimage

    inside = np.asarray(region) > 0
    blurred = ndimage.gaussian_filter(reference.array.astype(np.float32), sigma)
    return voided.with_array(np.where(inside, blurred, voided.array).astype(np.float32))


def run_inpaint(work: Path, quick: bool = False) -> Result:
    """Train on kirby21 (T1, T2, FLAIR) and 3 BraTS patients (FLAIR, T1c); fill healthy boxes in unseen volumes."""
    from medp2p.eval import mean_fill
    from medp2p.io import read_volume

    out = work.resolve() / "inpaint"
    out.mkdir(parents=True, exist_ok=True)
    training, test = inpaint_cases(out)
    if quick:
        training, test = training[:3], test[:1]
    train_list = write_datalist(out / "train.json", training)
    test_list = write_datalist(out / "test.json", healthy_boxes(test, out / "test_inputs"))
    quick_sets = ["train.steps=200", "data.image_size=[96, 96]", "model.depth=5", "model.base_channels=16"]
    row = train_predict_evaluate(
        "inpaint", CONFIGS / "inpaint_brain.yaml", train_list, test_list, out, [*(quick_sets if quick else []), *EXTRA_SETS], []
    )
    cases = json.loads(test_list.read_text())["training"]
    fills = {c["id"]: mean_fill(read_volume(c["voided"]), read_volume(c["region"]).array) for c in cases}
    row["baselines"] = {"mean_fill": evaluate_baseline("inpaint", "mean_fill", fills, test_list, out)}
    row["oracles"] = {}
    volumes = {c["id"]: (read_volume(c["mr"]), read_volume(c["voided"]), read_volume(c["region"]).array) for c in cases}
    for sigma in ORACLE_SIGMAS:
        name = f"truth_blurred_{sigma:g}"
        blurred = {cid: blurred_reference(truth, voided, region, sigma) for cid, (truth, voided, region) in volumes.items()}
        row["oracles"][name] = evaluate_baseline("inpaint", name, blurred, test_list, out)
    row["per_case"] = (out / "report" / "metrics.csv").read_text()
    result = Result("inpaint", [row])
    result.save(out / "results.json")
    return result


def table(result: Result) -> str:
    """A markdown table of the model's and baselines' means per split."""
    lines = []
    for row in result.splits:
        name = row.get("split") or (f"fold {row['fold']} (test {row['test_case']})" if "fold" in row else "test volumes")
        lines.append(f"\n### {result.task}: {name}  (train {row['train_s'] / 60:.1f} min, predict {row['predict_s']:.0f} s)")
        models = {
            "medp2p": row["metrics"],
            **row["baselines"],
            **({"pyradiomics (OOD)": row["pyradiomics"]} if "pyradiomics" in row else {}),
        }
        models.update({f"{name} (oracle: sees the truth)": metrics for name, metrics in row.get("oracles", {}).items()})
        keys = list(row["metrics"])
        lines.append("| | " + " | ".join(keys) + " |")
        lines.append("|---" * (len(keys) + 1) + "|")
        for label, metrics in models.items():
            lines.append(f"| {label} | " + " | ".join(f"{metrics.get(k, float('nan')):.4g}" for k in keys) + " |")
        if "ratios" in row:
            lines.append("ratios to the lookup: " + ", ".join(f"{k} {v:.2f}" for k, v in row["ratios"].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["mri2ct", "seg", "inpaint"])
    parser.add_argument("--work", type=Path, default=Path("runs/realdata"), help="Where runs, predictions and reports go.")
    parser.add_argument("--quick", action="store_true", help="The short protocol the realdata tests run.")
    parser.add_argument("--splits", nargs="+", default=[s[0] for s in MRIDIR_SPLITS], help="mri2ct: which slab splits.")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3], help="seg: which folds.")
    parser.add_argument(
        "--reuse", action="store_true", help="Keep runs that finished (WORK/.../run/train_s.txt): predict and evaluate only."
    )
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="Config override for every training (repeatable)."
    )
    parser.add_argument("--tta", action="store_true", help="Predict with medp2p predict --tta (left-right mirror averaging).")
    args = parser.parse_args()
    global REUSE
    REUSE = args.reuse
    EXTRA_SETS[:] = args.sets
    PREDICT_OPTIONS[:] = ["--tta"] if args.tta else []
    if not SHARED.is_dir():
        sys.exit(f"real data not found at {SHARED} (set MEDP2P_SHARED_DATA)")
    if args.task == "mri2ct":
        result = run_mri2ct(args.work, args.quick, tuple(args.splits))
    elif args.task == "seg":
        result = run_seg(args.work, args.quick, tuple(args.folds))
    else:
        result = run_inpaint(args.work, args.quick)
    print(table(result))


if __name__ == "__main__":
    main()
