"""``medp2p evaluate``: per-case challenge metrics of a prediction folder against reference data.

Cases are matched by id (the sanitised case id names the prediction folder). Each task says what
its metrics see (``task.scoring``: mri2ct the body, seg the labels, inpaint the filled region,
mr2mr the brain) and computes them with its metric definition, named by challenge
(:mod:`medp2p.tasks.scoring`); the definition's text goes into ``summary.json``.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medp2p.config import load_config
from medp2p.data import DataLayoutError, load_datalist, safe_case_id
from medp2p.data.case_reader import error_text, read_case
from medp2p.data.checks import ReadOptions, check_volume, choose_affine, compare_grids
from medp2p.data.geometry import slab_mask
from medp2p.eval.html import HTML_NAME, write_report_page
from medp2p.eval.montage import case_montage
from medp2p.io import read_volume
from medp2p.io.atomic import atomic_path, remove_outputs
from medp2p.metrics.uncertainty import calibration_metrics
from medp2p.plan import Plan, build_plan
from medp2p.tasks import MetricDefinition, ScoreContext, Scored
from medp2p.types import Volume
from medp2p.viz.calibration import save_calibration_plot


@dataclass
class EvalReport:
    """What :func:`evaluate` found: per-case rows, summary statistics, missing and failed cases."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every reference case was scored."""
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
REPORT_FILES = ("metrics.csv", "summary.json", HTML_NAME)
#: A case's calibration plot: ``<case>_uncertainty.png``.
UNCERTAINTY_PLOT = "_uncertainty.png"
#: What the calibration columns mean (``summary.json``'s ``calibration``, the HTML report).
CALIBRATION = (
    "Where the prediction folder holds an uncertainty map (predict --uncertainty: <output>_std.nii.gz; masks: "
    "mask_entropy.nii.gz), inside the scored mask (masks: reference, prediction and voxels with entropy > 0.01 bit): "
    "spearman = Spearman rank correlation of uncertainty and |prediction - reference| (MR: both normalised as the "
    "metric definition normalises them, BraSyn's each by its own percentiles; HU and labels as they are); "
    "top10_error_ratio = mean error of the 10% most uncertain voxels / mean error; ause = area under the sparsification error curve "
    "(Ilg et al. 2018): mean error left after removing the most uncertain fraction f minus that after removing "
    "the largest errors first, both over the mean error, integrated over f = 0..0.99 (0: a perfect ranking)."
)


def _prepare_report_dir(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds files unless ``overwrite``; then remove only what a report wrote there."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ReportExistsError(f"{out}: already holds files; pass --overwrite to replace the report (only its own files are removed)")
    montages: list[str] = []
    with contextlib.suppress(OSError, ValueError, AttributeError):
        old = json.loads((out / "summary.json").read_text())
        montages = [str(m) for m in (*old.get("montages", []), *(old.get("uncertainty_plots") or {}).values())]
    remove_outputs(out, (*REPORT_FILES, *(Path(m).name for m in montages)))


def _read_prediction(path: Path, reference: Volume, options: ReadOptions) -> Volume:
    """The prediction volume, checked like any input: readable, finite, on the reference's grid."""
    pred = read_volume(path, options.series_uid)
    problems = check_volume(pred, str(path), options=options)
    if problems:
        raise ValueError(str(problems[0]))
    pred = choose_affine(pred, str(path), options)[0]
    diff = compare_grids(reference, pred)
    if diff is not None and (pred.shape != reference.shape or not np.allclose(pred.affine, reference.affine, atol=1e-3)):
        raise ValueError(f"{path}: prediction grid {pred.shape} does not match reference {reference.path} {reference.shape}: {diff}")
    return pred


def evaluate_case(
    plan: Plan,
    case: dict[str, Any],
    pred_dir: Path,
    seed: int = 1234,
    slab: Slab | None = None,
    datalist: dict[str, Any] | None = None,
    options: ReadOptions = ReadOptions(),
    metrics: str | None = None,
) -> tuple[dict[str, float], Scored]:
    """Metrics of one case, and what they (and the montage) were computed from.

    The reference case is read with the checks every command applies
    (:func:`~medp2p.data.case_reader.read_case`), the prediction with the same per-volume checks.
    ``slab`` ``(axis, (start, end))`` restricts scoring to those slices (see :func:`slab_mask`).
    ``metrics`` names the definition (default: the task's first); label regions declared in the
    datalist (``"regions": {"WT": [1, 2, 3], ...}``) go to the mask definitions.
    """
    task = plan.task
    volumes = read_case(case, plan.keys, "evaluate", datalist, options)
    reference = volumes.target
    assert reference is not None
    pred = _read_prediction(pred_dir / task.output_name, reference, options)
    keep = None if slab is None else slab_mask(reference.shape, reference.affine, *slab)
    definition = task.definition(metrics)
    regions = declared_regions(datalist)
    scored = task.scoring(volumes, pred, ScoreContext(keep=keep, regions=regions, seed=seed, prediction_dir=pred_dir))
    values = definition.compute(scored)
    uncertainty = pred_dir / task.uncertainty_names[-1]
    if uncertainty.exists():
        u = _read_prediction(uncertainty, reference, options).array
        domain = calibration_domain(scored, u, keep)
        error = calibration_error(scored, definition)
        values.update(calibration_metrics(u, error, domain))
        scored = replace(scored, uncertainty=u, calibration_mask=domain, calibration_error=error)
    return values, scored


def calibration_error(scored: Scored, definition: MetricDefinition) -> np.ndarray:
    """``|prediction - reference|`` in the units the definition scores (MR: as BraSyn or BraTS-Inpainting normalise).

    An MR prediction and its reference from another scanner differ by a scale the metrics
    normalise away; the raw difference would rank voxels by brightness instead of by error.
    """
    reference, prediction = (scored.reference, scored.prediction) if definition.scaled is None else definition.scaled(scored)
    error: np.ndarray = np.abs(prediction - reference)
    return error


#: Masks: an uncertainty (entropy, bits) above this marks a voxel the models were unsure of.
UNSURE_BITS = 0.01


def calibration_domain(scored: Scored, uncertainty: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """Where an uncertainty map is checked against the error: the scored mask (body, region, brain).

    Masks (their scored mask is the reference): the reference, the prediction, and every voxel
    whose entropy exceeds :data:`UNSURE_BITS`, within the scored slab.
    """
    if scored.labels is None:
        return np.ones(scored.reference.shape, bool) if scored.mask is None else scored.mask > 0
    domain = (scored.reference > 0) | (scored.prediction > 0) | (uncertainty > UNSURE_BITS)
    return domain & (keep > 0) if keep is not None else domain


def declared_regions(datalist: dict[str, Any] | None) -> dict[str, tuple[int, ...]] | None:
    """The label regions a datalist declares (``"regions": {"WT": [1, 2, 3], "ET": [3]}``), or None.

    Example:
        >>> declared_regions({"regions": {"WT": [1, 2, 3], "ET": 3}})
        {'WT': (1, 2, 3), 'ET': (3,)}
    """
    declared = (datalist or {}).get("regions")
    if not declared:
        return None
    if not isinstance(declared, dict):
        raise DataLayoutError(f"the datalist's 'regions' must map a region name to its label values, got {declared!r}")
    out = {}
    for name, values in declared.items():
        vals = values if isinstance(values, list | tuple) else [values]
        if not vals or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vals):
            raise DataLayoutError(f"the datalist's region {name!r} must list positive integer labels, got {values!r}")
        out[str(name)] = tuple(int(v) for v in vals)
    return out


def _plan_of(task: str | Plan, target_key: str | None) -> Plan:
    if isinstance(task, Plan):
        return task
    return build_plan(load_config(task, None, [f"data.target_key={target_key}"] if target_key else []))


def evaluate(
    task: str | Plan,
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
    workers: int = 1,
    metrics: str | None = None,
) -> EvalReport:
    """Score every reference case that has a prediction; write ``metrics.csv``, ``summary.json``, montages and ``index.html``.

    Args:
        task: a task name (``mri2ct``, ``seg``, ``inpaint``, ``mr2mr``) or a run's plan.
        pred: the ``medp2p predict`` output folder (``<case>/sct.nii.gz``...).
        ref: reference data, any layout ``medp2p validate`` reads.
        out: the report folder; one that holds files is refused unless ``overwrite``.
        target_key: the reference image key (default the task's: ``ct``, ``tumor``, ``mr``, ``target``).
        seed: inpainting: the seed of generated regions (``inpaint.eval_seed``).
        montages: write one PNG per case.
        on_case: called with each case id (progress display).
        slab: ``(axis, (start, end))``: score only that fraction of the slices, as
            ``data.slice_range`` selects them for training (slab splits of one volume).
        overwrite: replace the report in ``out`` (only the files a report writes are removed).
        read_options: how volumes are read (``--affine-from``, ``--series-uid``).
        workers: score this many cases at once in worker processes (memory: one case each).
        metrics: the metric definition's name (``synthrad2025``, ``brats-inpainting-2d``...;
            default: the task's first, see docs/metrics.md).

    Raises:
        ReportExistsError: ``out`` holds files and ``overwrite`` is False.
        DataLayoutError: ``pred`` is missing or matches no reference case.
        KeyError: ``metrics`` is not one of the task's definitions (the message lists them).

    Example:
        >>> report = evaluate("mri2ct", "out/", "data/test/", "report/")
        >>> report.summary["metrics"]["mae"]["mean"]
    """
    plan = _plan_of(task, target_key)
    spec = plan.task
    definition = spec.definition(metrics)
    pred, out = Path(pred), Path(out)
    if not pred.is_dir():
        raise DataLayoutError(f"{pred}: no such prediction folder")
    datalist = load_datalist(ref)
    declared_regions(datalist)  # a malformed declaration fails before any output
    cases = [c for s in ("training", "validation", "test") for c in datalist.get(s, [])]
    _prepare_report_dir(out, overwrite)
    report = EvalReport()
    written: dict[str, str] = {}
    matched = [c for c in cases if (pred / safe_case_id(str(c["id"])) / spec.output_name).exists()]
    report.missing = [str(c["id"]) for c in cases if c not in matched]
    if not matched:
        raise DataLayoutError(f"{pred}: no prediction matches a case of {ref} (expected <case>/{spec.output_name})")
    jobs = [_CaseJob(plan, case, pred, out, seed, slab, datalist, read_options, montages, definition.name) for case in matched]
    plots: dict[str, str] = {}
    for cid, values, (montage, plot), error in _score_all(jobs, workers, on_case):
        if error is not None:
            report.failures.append({"case": cid, "error": error})
            continue
        report.rows.append({"case": cid, **values})
        if montage is not None:
            written[cid] = montage
        if plot is not None:
            plots[cid] = plot
    _write_report(out, plan, report, slab, written, definition.name, seed, plots)
    return report


@dataclass(frozen=True)
class _CaseJob:
    """One case to score (plain values: it is pickled into a worker process)."""

    plan: Plan
    case: dict[str, Any]
    pred: Path
    out: Path
    seed: int
    slab: Slab | None
    datalist: dict[str, Any]
    options: ReadOptions
    montage: bool
    metrics: str | None = None

    @property
    def case_id(self) -> str:
        return str(self.case["id"])


#: ``(case id, metrics, [montage, uncertainty plot] file names (None: not drawn), error text or None)``.
_CaseResult = tuple[str, dict[str, float], list[str | None], str | None]


def _score(job: _CaseJob) -> _CaseResult:
    """Score one case and draw its montage; a failure is returned as its one-line text."""
    cid = job.case_id
    try:
        metrics, scored = evaluate_case(
            job.plan, job.case, job.pred / safe_case_id(cid), job.seed, job.slab, job.datalist, job.options, job.metrics
        )
        definition = job.plan.task.definition(job.metrics)
        path = job.out / f"{safe_case_id(cid)}.png"
        montage = case_montage(path, job.plan.task, cid, scored, metrics, definition).name if job.montage else None
        plot = None
        if job.montage and scored.uncertainty is not None and scored.calibration_mask is not None:
            assert scored.calibration_error is not None
            where = job.out / f"{safe_case_id(cid)}{UNCERTAINTY_PLOT}"
            title = f"{cid}: {job.plan.task.name}"
            plot = save_calibration_plot(where, scored.uncertainty, scored.calibration_error, scored.calibration_mask, title).name
        return cid, metrics, [montage, plot], None
    except Exception as exc:
        return cid, {}, [None, None], error_text(exc)


def _score_all(jobs: list[_CaseJob], workers: int, on_case: Callable[[str], None] | None) -> Iterator[_CaseResult]:
    """Each job's result in the jobs' order: here, or in ``workers`` processes (each holds one case at a time)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            if on_case is not None:
                on_case(job.case_id)
            yield _score(job)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"), initializer=_one_thread) as pool:
        futures = [pool.submit(_score, job) for job in jobs]
        for job, future in zip(jobs, futures, strict=True):
            if on_case is not None:
                on_case(job.case_id)
            yield future.result()


def _one_thread() -> None:
    """Workers share the cores: one BLAS / torch thread each."""
    import torch

    torch.set_num_threads(1)


def _write_report(
    out: Path, plan: Plan, report: EvalReport, slab: Slab | None, montages: dict[str, str], metrics: str | None = None, seed: int = 1234,
    plots: dict[str, str] | None = None,
) -> None:  # fmt: skip
    definition = plan.task.definition(metrics)
    names = list(definition.columns)
    for row in report.rows:  # per-region columns (dice_WT...) after the definition's own
        names += [k for k in row if k != "case" and k not in names]
    with atomic_path(out / "metrics.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["case", *names])
        writer.writeheader()
        for row in report.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in ("case", *names)})
    report.summary = {
        "task": plan.task.name, "target_key": plan.keys.target, "seed": seed,
        "cases": len(report.rows), "metrics": _summary(report.rows, names),
        "missing": report.missing, "failures": report.failures, "metric_definition": definition.name,
        "definitions": definition.description, "definition_source": definition.source,
        "slab": None if slab is None else {"axis": slab[0], "slice_range": list(slab[1])},
        "montages": list(montages.values()),
        "uncertainty_plots": plots or {},
        "calibration": CALIBRATION if any("spearman" in r for r in report.rows) else None,
    }  # fmt: skip
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(report.summary, indent=2) + "\n")
    write_report_page(out, report.summary, report.rows, names, montages)
