"""Inpainting: train on kirby21 and 3 BraTS patients; fill healthy boxes in unseen volumes (stroke_cstar, a 4th BraTS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medp2p.data.cases import case_seed
from medp2p.data.corruption import corrupt_volume
from medp2p.data.intensity import body_mask
from medp2p.eval.baseline import mean_fill
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
from medp2p.io import read_volume, write_volume
from medp2p.types import Volume

QUICK_SETS = ["train.steps=200", "data.image_size=[96, 96]", "model.depth=5", "model.base_channels=16"]
#: Gaussian widths (voxels) of the blurred-truth rows that put the inpainting target in scale.
ORACLE_SIGMAS = (1.0, 2.0)


def zero_background(path: str, out: Path) -> str:
    """A z-scored BraTS volume shifted so that its background (its minimum) is 0, as in raw MR.

    The DeepMedic volumes are z-scored inside the brain: half the brain is negative and the
    background is a constant minimum (about -5). BraTS-Inpainting's normalisation clips at
    ``max(p0.5, 0)``, which would flatten every negative voxel, and its voided value 0 would sit
    mid-brain instead of at background. The shift changes neither contrast nor structure.
    """
    if not out.exists():
        image = read_volume(path)
        write_volume(image.with_array((image.array - image.array.min()).astype(np.float32)), out)
    return str(out)


def inpaint_cases(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and test volumes (no subject in both); BraTS ones shifted to a 0 background under ``folder``."""
    kirby, stroke = shared_data() / "kirby21_113", shared_data() / "stroke_cstar"
    training: list[dict[str, Any]] = [
        {"id": "kirby21_t1", "mr": str(kirby / "113-02-MPRAGE_processed_reg.nii.gz")},
        {"id": "kirby21_t2", "mr": str(kirby / "113-02-T2w_processed_reg.nii.gz")},
        {"id": "kirby21_flair", "mr": str(kirby / "113-02-FLAIR_processed_reg.nii.gz")},
    ]

    def brats(name: str, tumour: bool = False) -> list[dict[str, Any]]:
        c = brats_case(name)
        return [
            {"id": f"{name}_{k}", "mr": zero_background(c[k], folder / f"{name}_{k}.nii.gz"), **({"tumor": c["tumor"]} if tumour else {})}
            for k in ("flair", "t1c")
        ]

    for name in BRATS[:3]:
        training += brats(name)
    test: list[dict[str, Any]] = [{"id": f"stroke_{k.lower()}", "mr": str(stroke / f"{k}.nii.gz")} for k in ("T1", "T2", "FLAIR")]
    test += brats(BRATS[3], tumour=True)
    return training, test


def healthy_boxes(test: list[dict[str, Any]], folder: Path, seed: int = 1234) -> list[dict[str, Any]]:
    """BraTS-Inpainting-style test inputs: a box of healthy tissue voided per volume (tumour kept out)."""
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


def blurred_reference(reference: Volume, voided: Volume, region: np.ndarray, sigma: float) -> Volume:
    """An oracle fill, not a baseline: the true image blurred by a Gaussian of ``sigma`` voxels, inside the region.

    It sees the answer. Its score says how exact a fill has to be for a given SSIM: a model can
    predict the box only from what surrounds it, so detail finer than what that context
    determines is out of its reach.
    """
    inside = np.asarray(region) > 0
    blurred = ndimage.gaussian_filter(reference.array.astype(np.float32), sigma)
    return voided.with_array(np.where(inside, blurred, voided.array).astype(np.float32))


def run_inpaint(opts: ProtocolOptions) -> Result:
    """``configs/inpaint_brain.yaml`` beside the mean fill, and blurred-truth oracles that put the score in scale."""
    out = opts.work.resolve() / "inpaint"
    out.mkdir(parents=True, exist_ok=True)
    training, test = inpaint_cases(out)
    if opts.quick:
        training, test = training[:3], test[:1]
    train_list = write_datalist(out / "train.json", training)
    test_list = write_datalist(out / "test.json", healthy_boxes(test, out / "test_inputs"))
    row = train_predict_evaluate(opts, "inpaint", "inpaint_brain.yaml", train_list, test_list, out, QUICK_SETS if opts.quick else [], [])
    cases = json.loads(test_list.read_text())["training"]
    fills = {c["id"]: mean_fill(read_volume(c["voided"]), read_volume(c["region"]).array) for c in cases}
    row["baselines"] = {"mean_fill": evaluate_baseline("inpaint", "mean_fill", fills, test_list, out)}
    row["oracles"] = {}
    volumes = {c["id"]: (read_volume(c["mr"]), read_volume(c["voided"]), read_volume(c["region"]).array) for c in cases}
    for sigma in ORACLE_SIGMAS:
        name = f"truth_blurred_{sigma:g}"
        blurred = {cid: blurred_reference(truth, voided, region, sigma) for cid, (truth, voided, region) in volumes.items()}
        row["oracles"][name] = evaluate_baseline("inpaint", name, blurred, test_list, out)
    row["per_case_csv"] = (out / "report" / "metrics.csv").read_text()
    rescore("inpaint", row, out, test_list)
    result = Result("inpaint", [row])
    result.save(out / "results.json")
    return result
