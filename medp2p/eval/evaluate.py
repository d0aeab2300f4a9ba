"""``medp2p evaluate``: per-case challenge metrics of a prediction folder against reference data.

Cases are matched by id (the sanitised case id names the prediction folder). Per task:

- ``mri2ct``: SynthRAD2023 MAE / PSNR / SSIM inside the reference body mask (``mask``; when a
  case has none, reference CT > -500 HU), plus MAE per tissue class;
- ``seg``: Dice and HD95 (mm) of the predicted mask against reference label > 0;
- ``inpaint``: BraTS-Inpainting SSIM / PSNR / MSE inside the region (``region_healthy`` when
  present, else ``region``); cases without a voided input and region get the seeded box
  ``medp2p predict`` used (same ``seed``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medp2p.data import DataLayoutError, load_datalist, safe_case_id
from medp2p.data.case_reader import error_text, read_case
from medp2p.data.checks import ReadOptions, check_volume, choose_affine, compare_grids
from medp2p.data.corruption import seeded_corruption
from medp2p.data.geometry import slab_mask
from medp2p.data.intensity import ct_body
from medp2p.eval.montage import case_montage
from medp2p.io import read_volume
from medp2p.io.atomic import atomic_path, remove_outputs
from medp2p.metrics import inpainting_metrics, segmentation_metrics, synthrad_metrics
from medp2p.tasks import get_task

DEFINITIONS = {
    "mri2ct": "SynthRAD2023: MAE in HU over body-mask voxels (no clipping); PSNR with both volumes clipped to "
    "[-1024, 3000] HU, data range 4024, over mask voxels; SSIM (scikit-image, 7-voxel window) of the "
    "clipped volumes with outside-mask voxels set to -1024, shifted by +1024, data range 4024, averaged "
    "over the mask after a 3-voxel border crop. mae_air/soft_tissue/bone: MAE where the reference is "
    "< -500, -500..300, > 300 HU.",
    "seg": "Dice of prediction vs reference label > 0 (both empty: 1); HD95: 95th percentile symmetric surface "
    "distance in mm (MONAI), 0 when both are empty, the volume diagonal when one is.",
    "inpaint": "BraTS-Inpainting 2023: both images masked to the region, clipped to the 0.5/99.5 percentiles of the "
    "voided input (lower >= 0) and scaled to [0, 1]; SSIM (Gaussian sigma 1.5, 11x11, per (Y, Z) plane) "
    "averaged over the region; PSNR (reference-region range) and MSE over region voxels.",
}


@dataclass
class EvalReport:
    """What :func:`evaluate` found: per-case rows, summary statistics, missing and failed cases."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.failures


def _summary(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for m in metrics:
        values = np.array([r[m] for r in rows if m in r and np.isfinite(r[m])], float)
        if values.size:
            out[m] = {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "median": float(np.median(values)),
                "min": float(values.min()),
                "max": float(values.max()),
                "n": int(values.size),
            }
    return out


#: ``(axis, (start, end))``: a fraction of the slices along a canonical axis (``data.slice_range``).
Slab = tuple[str, tuple[float, float]]


class ReportExistsError(FileExistsError):
    """The report folder already holds files and ``overwrite`` was not asked for."""


#: What a report folder holds besides one montage PNG per case (listed in ``summary.json``).
REPORT_FILES = ("metrics.csv", "summary.json")


def _prepare_report_dir(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds files unless ``overwrite``; then remove only what a report wrote there."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ReportExistsError(f"{out}: already holds files; pass --overwrite to replace the report (only its own files are removed)")
    montages: list[str] = []
    try:
        montages = [str(m) for m in json.loads((out / "summary.json").read_text()).get("montages", [])]
    except (OSError, ValueError):
        pass
    remove_outputs(out, (*REPORT_FILES, *(Path(m).name for m in montages)))


def _read_prediction(path: Path, reference_path: str, reference, options: ReadOptions):
    """The prediction volume, checked like any input: readable, finite, on the reference's grid."""
    pred = read_volume(path, options.series_uid)
    problems = check_volume(pred, str(path), options=options)
    if problems:
        raise ValueError(str(problems[0]))
    pred = choose_affine(pred, str(path), options)[0]
    diff = compare_grids(reference, pred)
    if diff is not None and (pred.shape != reference.shape or not np.allclose(pred.affine, reference.affine, atol=1e-3)):
        raise ValueError(f"{path}: prediction grid {pred.shape} does not match reference {reference_path} {reference.shape}: {diff}")
    return pred


def evaluate_case(
    task_name: str,
    case: dict[str, Any],
    pred_dir: Path,
    target_key: str,
    seed: int,
    slab: Slab | None = None,
    datalist: dict[str, Any] | None = None,
    options: ReadOptions = ReadOptions(),
) -> tuple[dict[str, float], tuple]:
    """Metrics of one case, and what its montage shows ``(source, prediction, reference, mask)``.

    The reference case is read with the checks every command applies
    (:func:`~medp2p.data.case_reader.read_case`), the prediction with the same per-volume checks.
    ``slab`` ``(axis, (start, end))`` restricts scoring to those slices (see :func:`slab_mask`).
    """
    task = get_task(task_name)
    keys = task.case_keys(target_key=target_key)
    volumes = read_case(case, keys, "evaluate", datalist, options)
    reference = volumes.target
    assert reference is not None
    pred = _read_prediction(pred_dir / task.output_name, str(case[target_key]), reference, options)
    keep = np.ones(reference.shape, bool) if slab is None else slab_mask(reference.shape, reference.affine, *slab)
    source = volumes.sources[0].array if volumes.sources else reference.array
    if task_name == "mri2ct":
        mask = volumes.mask.array > 0 if volumes.mask is not None else ct_body(reference.array)
        mask &= keep
        return synthrad_metrics(reference.array, pred.array, mask), (source, pred.array, reference.array, mask)
    if task_name == "seg":
        ref, predicted = (reference.array > 0) & keep, (pred.array > 0) & keep
        return segmentation_metrics(ref, predicted, reference.spacing_mm), (source, pred.array, reference.array, ref)
    scored = volumes.scored_region if volumes.scored_region is not None else volumes.region
    if scored is not None and volumes.voided is not None:
        region, voided = scored.array, volumes.voided.array
    else:
        voided_vol, region_vol = seeded_corruption(reference, str(case["id"]), seed)
        region, voided = region_vol.array, voided_vol.array
        used = pred_dir / "region.nii.gz"
        if used.exists() and not np.array_equal(read_volume(used).array > 0, region > 0):
            raise ValueError(f"{used}: the prediction was made with another region than seed {seed} gives; pass the seed it used (--seed)")
    region = (region > 0) & keep
    return inpainting_metrics(reference.array, pred.array, voided, region), (voided, pred.array, reference.array, region)


def evaluate(
    task: str,
    pred: str | Path,
    ref: str | Path,
    out: str | Path,
    target_key: str | None = None,
    seed: int = 1234,
    montages: bool = True,
    on_case: Callable[[str], None] | None = None,
    slab: Slab | None = None,
    overwrite: bool = False,
    read_options: ReadOptions = ReadOptions(),
) -> EvalReport:
    """Score every reference case that has a prediction; write ``metrics.csv``, ``summary.json`` and montages.

    Args:
        task: ``mri2ct``, ``seg`` or ``inpaint``.
        pred: the ``medp2p predict`` output folder (``<case>/sct.nii.gz``...).
        ref: reference data, any layout ``medp2p validate`` reads.
        out: the report folder; one that holds files is refused unless ``overwrite``.
        target_key: the reference image key (default the task's: ``ct``, ``tumor``, ``mr``).
        seed: inpainting: the seed of generated regions (``inpaint.eval_seed``).
        montages: write one PNG per case.
        on_case: called with each case id (progress display).
        slab: ``(axis, (start, end))``: score only that fraction of the slices, as
            ``data.slice_range`` selects them for training (slab splits of one volume).
        overwrite: replace the report in ``out`` (only the files a report writes are removed).
        read_options: how volumes are read (``--affine-from``, ``--series-uid``).

    Raises:
        ReportExistsError: ``out`` holds files and ``overwrite`` is False.
        DataLayoutError: ``pred`` is missing or matches no reference case.

    Example:
        >>> report = evaluate("mri2ct", "out/", "data/test/", "report/")
        >>> report.summary["metrics"]["mae"]["mean"]
    """
    spec = get_task(task)
    target_key = target_key or spec.target_key
    pred, out = Path(pred), Path(out)
    if not pred.is_dir():
        raise DataLayoutError(f"{pred}: no such prediction folder")
    datalist = load_datalist(ref)
    cases = [c for s in ("training", "validation", "test") for c in datalist.get(s, [])]
    _prepare_report_dir(out, overwrite)
    report = EvalReport()
    matched = 0
    written: list[str] = []
    for case in cases:
        cid = str(case["id"])
        case_dir = pred / safe_case_id(cid)
        if not (case_dir / spec.output_name).exists():
            report.missing.append(cid)
            continue
        matched += 1
        if on_case is not None:
            on_case(cid)
        try:
            metrics, shown = evaluate_case(task, case, case_dir, target_key, seed, slab, datalist, read_options)
            report.rows.append({"case": cid, **metrics})
            if montages:
                written.append(case_montage(out / f"{safe_case_id(cid)}.png", task, cid, *shown, metrics).name)
        except Exception as exc:
            report.failures.append({"case": cid, "error": error_text(exc)})
    if matched == 0:
        raise DataLayoutError(f"{pred}: no prediction matches a case of {ref} (expected <case>/{spec.output_name})")
    metric_names = list(spec.metrics)
    with atomic_path(out / "metrics.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["case", *metric_names])
        writer.writeheader()
        for row in report.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in ("case", *metric_names)})
    report.summary = {
        "task": task,
        "cases": len(report.rows),
        "metrics": _summary(report.rows, metric_names),
        "missing": report.missing,
        "failures": report.failures,
        "definitions": DEFINITIONS[task],
        "slab": None if slab is None else {"axis": slab[0], "slice_range": list(slab[1])},
        "montages": written,
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(report.summary, indent=2) + "\n")
    return report
