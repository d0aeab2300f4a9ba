"""``medp2p predict``: a trained model over many inputs, each written beside nothing it should not touch.

Per case: ``OUT_DIR/<case>/<the task's output name>`` (``sct.nii.gz``, ``mask.nii.gz``,
``inpainted.nii.gz``, ``synth.nii.gz``) with the source's header; with ``--format dicom|rtstruct|both|all``
also the task's DICOM outputs (``sct_dicom/``: a CT series; ``mask_seg.dcm``: a DICOM SEG;
``mask_rtstruct.dcm``: an RT Structure Set). A case that fails is reported and the others go on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medp2p import __version__
from medp2p.data import safe_case_id
from medp2p.data.case_reader import CaseVolumes, collected_warnings, error_text, read_case
from medp2p.data.checks import ReadOptions, count_non_finite
from medp2p.data.corruption import seeded_corruption
from medp2p.data.geometry import MIRROR_DIMS
from medp2p.data.intensity import looks_like_ct
from medp2p.infer.ensemble import DEFAULT_SHIFT, Combined, Pass, check_members, finish_combined, run_members, tta_passes
from medp2p.infer.inputs import partition, resolve_inputs
from medp2p.infer.model import Model, load_model
from medp2p.infer.pipeline import default_workers, pipeline_settings, run_pipeline
from medp2p.infer.records import PredictReport, part_file, record_settings, write_lists
from medp2p.infer.volume import ModelInput, finish_prediction, prepare_input, run_slices
from medp2p.io import VolumeWriteError, write_nifti
from medp2p.io.atomic import atomic_path
from medp2p.tasks.task import FORMAT_KINDS, DicomOutput
from medp2p.types import Volume

FORMATS = tuple(FORMAT_KINDS)
#: Beside each case's uncertainty maps: the members, passes and their kinds.
UNCERTAINTY_JSON = "uncertainty.json"


class OutputExistsError(FileExistsError):
    """An output is already there and ``overwrite`` was not asked for."""


class ModalityMismatchError(ValueError):
    """The input is not the kind of image the model was trained on (a CT given to an MR model)."""


def _inside(root: Path, path: Path) -> Path:
    resolved = path.resolve()
    if root.resolve() not in resolved.parents and resolved != root.resolve():
        raise ValueError(f"{path}: would be written outside {root}")
    return path


def _check_modality(model: Model, case: CaseVolumes, force: bool) -> None:
    """Refuse a CT given to a model trained on MR sources (and back), unless ``force``."""
    if force or model.source_is_ct is None or not case.sources:
        return
    first = case.sources[0]
    is_ct = looks_like_ct(first)
    if is_ct == model.source_is_ct:
        return
    modality = first.meta.get("modality")
    seen = f"DICOM Modality {modality}" if modality else ("values in HU (air below -500)" if is_ct else "no HU air (an MR)")
    trained = "CTs in HU" if model.source_is_ct else "MR images (not HU)"
    raise ModalityMismatchError(
        f"{first.path}: the input looks like {'a CT' if is_ct else 'an MR image'} ({seen}), but the {model.task.name} model was "
        f"trained on {trained}; pass --force to predict anyway"
    )


@dataclass
class PreparedCase:
    """A case read, checked and put into model space: what the generator and the writer need."""

    case: dict[str, Any]
    case_dir: Path
    nifti_path: Path | None
    dicom: list[tuple[DicomOutput, Path]]
    planned: list[Path]
    inp: ModelInput
    dicom_source: Volume
    extras: list[tuple[str, Volume, type]]
    uncertainty: bool = False


def prepare_case(
    model: Model, case: dict[str, Any], out_dir: Path, fmt: str = "nifti", overwrite: bool = False,
    options: ReadOptions = ReadOptions(), force: bool = False, uncertainty: bool = False,
) -> PreparedCase:  # fmt: skip
    """Read and check one case as every command reads it (:func:`read_case`), and prepare its input.

    Refuses existing outputs (without ``overwrite``) before reading anything; ``uncertainty``:
    the uncertainty maps and ``uncertainty.json`` are outputs too.
    """
    task, prep = model.task, model.prep
    case_dir = _inside(out_dir, out_dir / safe_case_id(case["id"]))
    with_nifti, outputs = task.outputs_for(fmt)
    nifti_path = case_dir / task.output_name if with_nifti else None
    dicom = [(o, case_dir / o.name) for o in outputs]
    planned = ([nifti_path] if nifti_path else []) + [path for _, path in dicom]
    if uncertainty:
        planned += [case_dir / n for n in (*task.uncertainty_names, UNCERTAINTY_JSON)]
        planned += [case_dir / o.uncertainty_name for o, _ in dicom if o.uncertainty_name]
    existing = [p for p in planned if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]}: already exists; pass --overwrite to replace it")
    volumes = read_case(case, model.keys, "predict", None, options)
    _check_modality(model, volumes, force)
    sources = list(volumes.sources)
    region = volumes.region
    if region is not None and volumes.voided is not None:
        sources = [volumes.voided, *sources[1:]] if len(sources) == prep.n_sources else [volumes.voided, *sources]
    extras: list[tuple[str, Volume, type]] = []
    if task.region_key is not None and region is None:
        # no region given: void a seeded box, and keep what was voided beside the output
        base = volumes.voided or sources[0]
        voided, region = seeded_corruption(base, str(case["id"]), model.cfg.inpaint.eval_seed)
        sources = [voided, *sources[1:]] if sources else [voided]
        extras = [("voided.nii.gz", voided, np.float32), ("region.nii.gz", region, np.uint8)]
    inp = prepare_input(sources, prep, region)
    return PreparedCase(case, case_dir, nifti_path, dicom, planned, inp, sources[0], extras, uncertainty)


def write_case(model: Model, p: PreparedCase, out: torch.Tensor | Combined, overwrite: bool = False) -> list[Path]:
    """Take the generator's output back to the input's grid and write the case's outputs; returns the paths.

    ``out``: one generator's model-space output, or what an ensemble and its passes gave
    (:func:`~medp2p.infer.ensemble.run_members`; with ``p.uncertainty`` its maps are written too).
    An output with NaN/Inf voxels is never written. A failed (or interrupted) write removes what
    this call created, the case folder included when it was new.
    """
    if isinstance(out, Combined):
        prediction, maps = finish_combined(out, p.inp, model.task, model.prep, p.uncertainty)
    else:
        prediction, maps = finish_prediction(out, p.inp, model.prep), []
    bad = count_non_finite(prediction.array)
    if bad:
        raise ValueError(
            f"{model.path}: the model produced {bad} NaN/Inf voxel(s) for case {p.case['id']!r} (its input had none); "
            "nothing was written: the checkpoint may have diverged (check its training losses)"
        )
    case_dir = p.case_dir
    new_dir = not case_dir.exists()
    created_before = {q for q in p.planned + [case_dir / name for name, _, _ in p.extras] if q.exists()}
    written: list[Path] = []
    try:
        for name, vol, dtype in p.extras:
            written.append(write_nifti(vol, case_dir / name, dtype=dtype))
        if p.nifti_path is not None:
            written.append(write_nifti(prediction, p.nifti_path, dtype=model.prep.codec.output_dtype))
        for name, vol in maps:
            written.append(write_nifti(vol, case_dir / name, dtype=np.float32))
        if maps and isinstance(out, Combined):
            with atomic_path(case_dir / UNCERTAINTY_JSON) as tmp:
                tmp.write_text(json.dumps(out.record(model.prep.codec.units, model.prep.codec.labels), indent=2) + "\n")
            written.append(case_dir / UNCERTAINTY_JSON)
        for output, path in p.dicom:
            output.write(prediction, path, p.dicom_source, f"medp2p {__version__}", overwrite)
            written.append(path)
            if maps and output.write_uncertainty is not None and output.uncertainty_name:
                output.write_uncertainty(
                    maps[-1][1], case_dir / output.uncertainty_name, p.dicom_source, f"medp2p {__version__}", overwrite, path
                )
                written.append(case_dir / output.uncertainty_name)
    except BaseException:
        for path in written:
            if path not in created_before:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if new_dir and case_dir.is_dir() and not any(case_dir.iterdir()):
            case_dir.rmdir()
        raise
    return written


def predict_case(
    model: Model,
    case: dict[str, Any],
    out_dir: Path,
    fmt: str = "nifti",
    overwrite: bool = False,
    options: ReadOptions = ReadOptions(),
    force: bool = False,
) -> list[Path]:
    """Predict one case and write its outputs under ``out_dir/<case>/``; returns the written paths.

    :func:`prepare_case`, the generator (:func:`run_slices`), :func:`write_case` in turn.
    """
    p = prepare_case(model, case, out_dir, fmt, overwrite, options, force)
    out = run_slices(model.generator, p.inp.stack, p.inp.extra, model.prep, model.options)
    p.inp.release()
    return write_case(model, p, out, overwrite)


def predict_cases(
    model: str | Path | Model | Sequence[str | Path | Model],
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    fmt: str = "nifti",
    num_parts: int = 1,
    part_id: int = 0,
    overwrite: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    on_case: Callable[[str], None] | None = None,
    compile: bool = False,
    tta: bool = False,
    read_options: ReadOptions = ReadOptions(),
    force: bool = False,
    pipelined: bool | None = None,
    on_written: Callable[[str, int], None] | None = None,
    on_cases: Callable[[int], None] | None = None,
    precision: str | None = None,
    uncertainty: bool = False,
    tta_shift: int | None = None,
    mc_samples: int = 0,
    workers: int | None = None,
) -> PredictReport:
    """Predict every case of ``inputs`` (this part's share of them) into ``out_dir``.

    What ran is recorded in ``out_dir/predict.json`` (``predict_part-K-of-N.json`` when split):
    the model, the resolved device and precision, batch size, TTA, the medp2p and torch versions.

    Args:
        model: a run folder, a checkpoint file, or a loaded :class:`Model`; several: an ensemble,
            their outputs averaged after each member's own decoding (probabilities for masks;
            members must share the task, target and input rules, :func:`check_members`).
        inputs: volume files, DICOM series folders, or datasets.
        out_dir: where ``<case>/`` folders go.
        fmt: ``nifti``, ``dicom``, ``rtstruct``, ``both`` (NIfTI and DICOM) or ``all`` (every
            output the task has). DICOM: mri2ct a CT series, seg a DICOM SEG; ``rtstruct``: seg
            an RT Structure Set.
        num_parts: split the sorted cases into this many parts...
        part_id: ...and predict this one (0-based).
        overwrite: replace existing outputs (refused otherwise, per case).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: slices per forward pass; None: 16 of 256x256, fewer for larger slices
            (:attr:`RunOptions.batch_size`).
        on_case: called with each case id as it goes to the generator (progress display).
        on_written: called with each written case's id and its number of slices (progress).
        on_cases: called once with the number of cases this part predicts.
        compile: frozen-weight ``torch.compile`` of the generator (see :func:`load_model`).
        tta: average with the left-right mirrored prediction (see :func:`load_model`).
        read_options: how inputs are read (``--affine-from``, ``--series-uid``).
        force: predict inputs that do not look like the model's training sources (a CT given
            to an MR model), which is refused otherwise.
        pipelined: read and prepare the next case and write the last one while the generator
            runs on this one (:func:`~medp2p.infer.pipeline.run_pipeline`); False: one case
            after the other; None: on a GPU pipelined, on the CPU pipelined unless the generator
            takes :data:`~medp2p.infer.pipeline.GENERATOR_BOUND` or more of the first case's time
            (recorded in ``predict.json`` and ``PredictReport.pipeline``).
        precision: the generator's precision (see :func:`load_model`; None: the run's).
        uncertainty: also write each case's uncertainty maps (``task.uncertainty_names``) and
            ``uncertainty.json``: the spread across members x test-time passes (the input, its
            left-right mirror where the slices hold one, four shifts by ``tta_shift`` voxels, and
            ``mc_samples`` MC-dropout samples); the output is then their mean.
        tta_shift: whole-voxel in-plane shift of the shifted passes (default 2 with
            ``uncertainty``, none without; 0: no shifted passes).
        mc_samples: MC-dropout passes per member (the generator needs dropout layers).
        workers: cases read and prepared at once, and cases written at once, beside the
            generator (threads; at most ``2 * workers + 1`` cases in memory); None:
            :func:`~medp2p.infer.pipeline.default_workers` for the model's device.

    Returns:
        The report; failed cases are also written to ``failures.csv`` (``failures_part-K-of-N.csv``
        when split), with the case, its input and the error.

    Example:
        >>> report = predict_cases("runs/mri2ct", ["patients/"], "out/", fmt="both")
        >>> report.failures
        []
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    given = [model] if isinstance(model, str | Path | Model) else list(model)
    members = [m if isinstance(m, Model) else load_model(m, device, batch_size, compile, tta, precision) for m in given]
    check_members(members)
    model = members[0]
    passes = _passes(model, len(members), tta, uncertainty, tta_shift, mc_samples)
    model.task.outputs_for(fmt)  # refuses a DICOM kind the task lacks before any case is read
    cases = resolve_inputs(inputs, model.task, model.prep, model.keys)
    mine = partition(cases, num_parts, part_id)
    if on_cases is not None:
        on_cases(len(mine))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictReport(total_cases=len(cases))
    accelerated = model.options.device.type != "cpu"
    workers = default_workers(accelerated) if workers is None else workers
    pipelined = True if pipelined is None and accelerated else pipelined  # a GPU leaves the host's cores to the readers
    settings_json = part_file(out_dir, "predict", ".json", num_parts, part_id)
    report.pipeline = pipeline_settings(pipelined, workers)
    record_settings(settings_json, members, passes, report.pipeline)
    stages = _CaseStages(model, out_dir, fmt, overwrite, read_options, force, report, on_written, members, passes, uncertainty)

    def chosen(share: float) -> None:  # the choice made from the first case, recorded before the rest run
        report.pipeline = pipeline_settings(None, workers, share)
        record_settings(settings_json, members, passes, report.pipeline)

    try:
        announce = (lambda c: on_case(str(c["id"]))) if on_case else None
        run_pipeline(mine, stages, on_case=announce, pipelined=pipelined, workers=workers, on_choice=chosen)
    except KeyboardInterrupt:
        report.interrupted = True
    write_lists(report, out_dir, num_parts, part_id)
    return report


def _passes(model: Model, n_members: int, tta: bool, uncertainty: bool, shift: int | None, mc_samples: int) -> list[Pass] | None:
    """The passes each member runs, or None for one model's plain prediction (the generator alone, flip TTA in it)."""
    if n_members == 1 and not uncertainty and not mc_samples and not shift:
        return None
    flip = tta or (uncertainty and MIRROR_DIMS[model.prep.axis] is not None)
    return tta_passes(model.prep, flip, shift if shift is not None else (DEFAULT_SHIFT if uncertainty else 0), mc_samples)


class _CaseStages:
    """The three stages of one case (read + prepare, the generator, decode + write) and its failures."""

    def __init__(
        self, model: Model, out_dir: Path, fmt: str, overwrite: bool, options: ReadOptions, force: bool, report: PredictReport,
        on_written: Callable[[str, int], None] | None = None, members: list[Model] | None = None,
        passes: list[Pass] | None = None, uncertainty: bool = False,
    ) -> None:  # fmt: skip
        self.model, self.out_dir, self.fmt, self.overwrite, self.options, self.force = model, out_dir, fmt, overwrite, options, force
        self.report, self.on_written = report, on_written
        self.members, self.passes, self.uncertainty = members or [model], passes, uncertainty
        self.slices: dict[str, int] = {}

    def read(self, case: dict[str, Any]) -> PreparedCase:
        with collected_warnings(str(case["id"])):
            return prepare_case(self.model, case, self.out_dir, self.fmt, self.overwrite, self.options, self.force, self.uncertainty)

    def generate(self, case: dict[str, Any], p: PreparedCase) -> torch.Tensor | Combined:
        m = self.model
        self.slices[str(case["id"])] = int(p.inp.stack.shape[1])
        with collected_warnings(str(case["id"])):
            if self.passes is not None:
                out: torch.Tensor | Combined = run_members(self.members, p.inp, self.passes)
            else:
                out = run_slices(m.generator, p.inp.stack, p.inp.extra, m.prep, m.options)
        p.inp.release()
        return out

    def write(self, case: dict[str, Any], p: PreparedCase, out: torch.Tensor | Combined) -> list[Path]:
        with collected_warnings(str(case["id"])):
            return write_case(self.model, p, out, self.overwrite)

    def done(self, case: dict[str, Any], paths: list[Path]) -> None:
        cid = str(case["id"])
        self.report.written[cid] = paths
        if self.on_written is not None:
            self.on_written(cid, self.slices.pop(cid, 0))

    def fail(self, case: dict[str, Any], exc: BaseException) -> bool:
        """Record a failed case; True when the run must stop (a full disk fails every case after it too)."""
        source = case.get(self.model.prep.source_keys[0]) or next((v for k, v in case.items() if k != "id"), "")
        self.report.failures.append({"case": str(case["id"]), "input": str(source), "error": error_text(exc)})
        stop = isinstance(exc, VolumeWriteError)
        if stop and self.report.stopped is None:
            self.report.stopped = f"writing case {case['id']} failed: {exc}"
        return stop
