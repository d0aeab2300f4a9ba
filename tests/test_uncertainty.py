"""Ensembles, test-time passes, uncertainty maps and their calibration check, K-fold runs.

Two identical members equal one model; flip and shift passes undo exactly; the maps sit on the
input's exact grid; planted disagreement gives a high Spearman value and independent noise one
near 0; AUSE and the top-10% ratio against brute-force computations; the std series joins the
synthetic CT's study; the folds are nnU-Net's (scikit-learn's KFold).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.config import load_config
from medp2p.data.codecs import HU
from medp2p.data.folds import kfold_splits
from medp2p.data.prepare import Prep
from medp2p.infer import load_model, predict_cases
from medp2p.infer.ensemble import Pass, Spread, binary_entropy, check_members, run_members, run_pass, tta_passes
from medp2p.infer.volume import RunOptions, prepare_input
from medp2p.io import read_volume, write_volume
from medp2p.metrics.uncertainty import ause, calibration_metrics, sparsification_curves, top_error_ratio
from medp2p.tasks import Scored
from medp2p.train.data import split_cases
from medp2p.types import Volume
from tests.test_dicom_output import dciodvfy_errors
from tests.test_io_volumes import AFFINES
from tests.test_predict import CentreChannel

runner = CliRunner()


def _cli(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("task", ["mri2ct", "seg"])
def test_an_ensemble_of_two_identical_checkpoints_equals_one_model(task: str, tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    run = tiny_runs[task]
    predict_cases(run, [tiny_phantom], tmp_path / "one")
    predict_cases([run, run], [tiny_phantom], tmp_path / "two")
    name = load_model(run).task.output_name
    for case in ("case_000", "case_001", "case_002"):
        one, two = read_volume(tmp_path / "one" / case / name), read_volume(tmp_path / "two" / case / name)
        assert np.array_equal(one.array, two.array) and np.array_equal(one.affine, two.affine)
    record = json.loads((tmp_path / "two" / "predict.json").read_text())
    assert len(record["ensemble"]) == 2 and record["passes"] == [{"kind": "identity"}]


def test_members_that_cannot_be_averaged_are_refused_naming_the_difference(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task seg vs mri2ct"):
        check_members([load_model(tiny_runs["mri2ct"]), load_model(tiny_runs["seg"])])
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(tiny_runs["mri2ct"]),
            "--model",
            str(tiny_runs["seg"]),
            "-i",
            str(tiny_phantom),
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "cannot be averaged" in result.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["LPS", "oblique"])
def test_flip_and_shift_passes_undo_exactly(rng: np.random.Generator, name: str) -> None:
    mr = Volume(rng.uniform(0, 1000, (13, 11, 7)).astype(np.float32), AFFINES[name])
    prep = Prep(("mr",), "ct", HU, context_slices=1, size_multiple=8)
    inp = prepare_input(mr, prep)
    options = RunOptions(batch_size=3)
    plain = run_pass(CentreChannel(1), inp, prep, options, Pass())
    for p in tta_passes(prep, flip=True, shift=3):
        assert torch.equal(run_pass(CentreChannel(1), inp, prep, options, p), plain), p
    with pytest.raises(ValueError, match="sagittal"):
        tta_passes(Prep(("mr",), "ct", HU, axis="sagittal"), flip=True)


class Bumped(CentreChannel):
    """A member that agrees with :class:`CentreChannel` except where the input is bright: there it adds 0.2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y + 0.2 * (y > 0.3)


def _member(generator: torch.nn.Module, prep: Prep, path: str) -> SimpleNamespace:
    return SimpleNamespace(generator=generator, prep=prep, options=RunOptions(batch_size=4), path=path)


def test_error_planted_where_the_members_disagree_is_found_and_independent_noise_is_not(rng: np.random.Generator) -> None:
    mr = Volume(rng.uniform(0, 1000, (24, 20, 9)).astype(np.float32), AFFINES["RAS"])
    prep = Prep(("mr",), "ct", HU)
    inp = prepare_input(mr, prep)
    truth = run_members([_member(CentreChannel(0), prep, "a")], inp, [Pass()]).mean
    combined = run_members([_member(CentreChannel(0), prep, "a"), _member(Bumped(0), prep, "b")], inp, [Pass()])
    assert combined.std.max() > 100 and (combined.std == 0).mean() > 0.2  # the members disagree on the bright voxels only
    noise = rng.normal(0, 20, truth.shape)
    planted = calibration_metrics(combined.std, np.abs(combined.mean - (truth + noise)))
    independent = calibration_metrics(combined.std, np.abs(noise))
    assert planted["spearman"] > 0.6 and planted["top10_error_ratio"] > 2.0 and planted["ause"] < independent["ause"]
    assert abs(independent["spearman"]) < 0.05 and abs(independent["top10_error_ratio"] - 1.0) < 0.1


def test_sparsification_and_top_ratio_agree_with_a_brute_force_computation(rng: np.random.Generator) -> None:
    u, e = rng.random(437), rng.random(437) ** 2
    fractions = np.arange(100) / 100
    ours, oracle = sparsification_curves(u, e, fractions)
    for curve, key in ((ours, u), (oracle, e)):
        ranked = [err for _, err in sorted(zip(-key, e, strict=True))]  # most uncertain (largest error) first
        brute = [np.mean(ranked[int(math.floor(f * len(e))) :]) / np.mean(e) for f in fractions]
        np.testing.assert_allclose(curve, brute, rtol=1e-9, atol=1e-12)  # a running sum against sums of slices
    area = sum((fractions[i + 1] - fractions[i]) * ((ours - oracle)[i] + (ours - oracle)[i + 1]) / 2 for i in range(99))
    assert ause(u, e) == pytest.approx(area, rel=1e-12)
    top = sorted(range(437), key=lambda i: -u[i])[:44]
    assert top_error_ratio(u, e) == pytest.approx(np.mean(e[top]) / np.mean(e), rel=1e-12)
    assert ause(e, e) == pytest.approx(0.0, abs=1e-12)  # uncertainty that ranks like the error is the oracle
    from scipy.stats import spearmanr

    tied = np.round(u * 5)
    assert calibration_metrics(tied, e)["spearman"] == pytest.approx(spearmanr(tied, e).statistic, rel=1e-10)


def test_spread_and_entropy() -> None:
    s = Spread()
    for v in (1.0, 2.0, 4.0):
        s.add(np.full(3, v))
    np.testing.assert_allclose(s.mean, 7 / 3, rtol=1e-6)
    np.testing.assert_allclose(s.std, np.std([1.0, 2.0, 4.0]), rtol=1e-6)
    np.testing.assert_allclose(binary_entropy(np.array([0.0, 0.5, 1.0, 0.1])), [0, 1, 0, 0.4689956], atol=1e-6)


def test_mc_dropout_needs_dropout_and_is_seeded(rng: np.random.Generator) -> None:
    mr = Volume(rng.uniform(0, 1000, (12, 10, 5)).astype(np.float32), AFFINES["RAS"])
    prep = Prep(("mr",), "ct", HU)
    inp = prepare_input(mr, prep)
    passes = tta_passes(prep, mc_samples=3)
    with pytest.raises(ValueError, match="needs dropout layers"):
        run_members([_member(CentreChannel(0), prep, "plain")], inp, passes)
    dropping = torch.nn.Sequential(CentreChannel(0), torch.nn.Dropout(0.5)).eval()
    first = run_members([_member(dropping, prep, "d")], inp, passes)
    again = run_members([_member(dropping, prep, "d")], inp, passes)
    assert first.std.max() > 0 and np.array_equal(first.std, again.std) and not dropping[1].training


@pytest.mark.parametrize("name", ["LPS", "oblique"])
def test_uncertainty_maps_sit_on_the_inputs_exact_grid(name: str, tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    mr = read_volume(tiny_phantom / "case_000" / "mr.nii.gz")
    from medp2p.io import write_nifti

    src = tmp_path / "in" / "p01.nii.gz"
    write_nifti(Volume(mr.array[:, :, :7], AFFINES[name] @ np.diag([6.0, 7.0, 20.0, 1.0])), src)
    _cli("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(src), "-o", str(tmp_path / "out"), "--uncertainty")
    source = read_volume(src)
    std = read_volume(tmp_path / "out" / "p01" / "sct_std.nii.gz")
    assert std.shape == source.shape and np.allclose(std.affine, source.affine, atol=1e-5) and std.array.min() >= 0
    record = json.loads((tmp_path / "out" / "p01" / "uncertainty.json").read_text())
    assert record["kinds"] == ["flip", "identity", "shift"] and record["passes_per_member"] == 6 and record["units"] == "HU"
    assert {tuple(p.get("shift_voxels", ())) for p in record["passes"]} >= {(2, 0), (-2, 0), (0, 2), (0, -2)}


def test_seg_uncertainty_is_the_mean_probability_and_its_entropy(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    _cli(
        "predict",
        "--model",
        str(tiny_runs["seg"]),
        "--model",
        str(tiny_runs["seg"]),
        "-i",
        str(tiny_phantom),
        "-o",
        str(tmp_path),
        "--uncertainty",
    )
    case = tmp_path / "case_000"
    prob, entropy, mask = (read_volume(case / n).array for n in ("mask_prob.nii.gz", "mask_entropy.nii.gz", "mask.nii.gz"))
    assert prob.min() >= 0 and prob.max() <= 1 and np.array_equal(mask > 0, prob > 0.5)
    np.testing.assert_allclose(entropy, binary_entropy(prob), atol=1e-6)
    assert json.loads((case / "uncertainty.json").read_text())["members"] == [str(load_model(tiny_runs["seg"]).path)] * 2


def test_evaluate_checks_the_uncertainty_against_the_error_and_reports_it(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    pred, report = tmp_path / "pred", tmp_path / "report"
    _cli("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(pred), "--uncertainty")
    _cli("evaluate", "--task", "mri2ct", "--pred", str(pred), "--ref", str(tiny_phantom), "-o", str(report))
    with (report / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"spearman", "top10_error_ratio", "ause"} <= set(rows[0])
    summary = json.loads((report / "summary.json").read_text())
    assert "Spearman" in summary["calibration"] and set(summary["uncertainty_plots"]) == {"case_000", "case_001", "case_002"}
    means = [float(r["spearman"]) for r in rows]
    assert summary["metrics"]["spearman"]["mean"] == pytest.approx(np.mean(means), rel=1e-4)
    # the column is the computation on the files
    ct, sct = read_volume(tiny_phantom / "case_000/ct.nii.gz").array, read_volume(pred / "case_000/sct.nii.gz").array
    std, body = read_volume(pred / "case_000/sct_std.nii.gz").array, read_volume(tiny_phantom / "case_000/mask.nii.gz").array > 0
    assert float(rows[0]["ause"]) == pytest.approx(calibration_metrics(std, np.abs(sct - ct), body)["ause"], rel=1e-4)
    page = (report / "index.html").read_text()
    assert "<h2>Uncertainty</h2>" in page and 'src="case_000_uncertainty.png"' in page
    assert (report / "case_000_uncertainty.png").stat().st_size > 1000
    plain = tmp_path / "plain"  # a report replaced by one without uncertainty loses the old plots
    _cli("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(plain))
    _cli("evaluate", "--task", "mri2ct", "--pred", str(plain), "--ref", str(tiny_phantom), "-o", str(report), "--overwrite")
    assert not list(report.glob("*_uncertainty.png")) and "spearman" not in (report / "metrics.csv").read_text()


def _own_unit(x: np.ndarray) -> np.ndarray:
    """BraSyn's normalisation written out again: the image's own 0.5/99.5 percentiles (lower >= 0) to [0, 1]."""
    lo, hi = np.percentile(x, (0.5, 99.5))
    lo = max(lo, 0.0)
    return (np.clip(x, lo, hi) - lo) / (hi - lo)


def test_mr_calibration_takes_the_error_in_the_units_the_metric_scores(rng: np.random.Generator, tmp_path: Path) -> None:
    # Another scanner's reference: the prediction's scale is 1000x the reference's, as across sites.
    # Raw |prediction - reference| would rank voxels by brightness; the error BraSyn scores is planted
    # in one half of the brain, where the uncertainty map is high.
    shape = (20, 18, 16)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    brain = zz**2 + yy**2 + xx**2 < 0.8
    ref = np.where(brain, rng.uniform(20, 100, shape), 0.0).astype(np.float32)
    wrong = brain & (xx > 0)
    pred = (1000.0 * np.where(wrong, 120.0 - ref, ref)).astype(np.float32)  # the same range, half of it inverted
    std = (np.where(wrong, np.abs(120.0 - 2 * ref), 0.0) + rng.uniform(0, 5, shape)).astype(np.float32)
    case = tmp_path / "data" / "case_000"
    case.mkdir(parents=True)
    for name, arr in (("t1", ref), ("t2", ref), ("brain", brain.astype(np.uint8))):
        write_volume(Volume(arr, AFFINES["RAS"]), case / f"{name}.nii.gz")
    out = tmp_path / "pred" / "case_000"
    out.mkdir(parents=True)
    write_volume(Volume(pred, AFFINES["RAS"]), out / "synth.nii.gz")
    write_volume(Volume(std, AFFINES["RAS"]), out / "synth_std.nii.gz")
    datalist = tmp_path / "data.json"
    entry = {"id": "case_000", "mr": str(case / "t1.nii.gz"), "target": str(case / "t2.nii.gz"), "mask": str(case / "brain.nii.gz")}
    datalist.write_text(json.dumps({"training": [entry]}))
    report = tmp_path / "report"
    pred_dir = str(tmp_path / "pred")
    _cli("evaluate", "--task", "mr2mr", "--pred", pred_dir, "--ref", str(datalist), "-o", str(report), "--metrics", "brasyn-brain")
    row = next(csv.DictReader((report / "metrics.csv").open()))
    error = np.abs(_own_unit(pred) - _own_unit(ref))
    expected = calibration_metrics(std, error, brain)
    assert float(row["spearman"]) == pytest.approx(expected["spearman"], rel=1e-4) and expected["spearman"] > 0.6
    assert float(row["top10_error_ratio"]) == pytest.approx(expected["top10_error_ratio"], rel=1e-4)
    assert float(row["mse"]) == pytest.approx(np.mean(error[brain] ** 2), rel=1e-4)  # the error the metric scores
    assert calibration_metrics(std, np.abs(pred - ref), brain)["spearman"] < expected["spearman"] - 0.3  # raw units mislead


def test_inpainting_calibration_error_is_the_one_the_deployed_scorer_squares(rng: np.random.Generator) -> None:
    from medp2p.eval.evaluate import calibration_error
    from medp2p.metrics import brats_inpainting_metrics, inpainting_metrics
    from medp2p.tasks.scoring import BRATS_INPAINTING, BRATS_INPAINTING_2D

    ref = rng.uniform(0, 500, (14, 16, 12)).astype(np.float32)
    region = np.zeros(ref.shape, bool)
    region[4:10, 5:12, 3:9] = True
    pred = np.where(region, ref + rng.normal(0, 80, ref.shape), ref).astype(np.float32)
    voided = np.where(region, 0, ref).astype(np.float32)
    scored = Scored(ref, pred, voided, region, voided=voided)
    for definition, metric in ((BRATS_INPAINTING, brats_inpainting_metrics(ref, pred, region)),
                               (BRATS_INPAINTING_2D, inpainting_metrics(ref, pred, voided, region))):  # fmt: skip
        error = calibration_error(scored, definition)
        assert np.mean(error[region] ** 2) == pytest.approx(metric["mse"], rel=1e-5)


def test_the_std_map_is_a_second_ct_series_in_the_synthetic_cts_study(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    _cli("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(tmp_path), "--format", "both", "--uncertainty")
    case = tmp_path / "case_001"
    sct = [pydicom.dcmread(f) for f in sorted((case / "sct_dicom").glob("*.dcm"))]
    std = [pydicom.dcmread(f) for f in sorted((case / "sct_std_dicom").glob("*.dcm"))]
    assert len(std) == len(sct) and "Uncertainty" in std[0].SeriesDescription and "standard deviation" in std[0].DerivationDescription
    assert {d.StudyInstanceUID for d in std} == {sct[0].StudyInstanceUID} and std[0].FrameOfReferenceUID == sct[0].FrameOfReferenceUID
    assert std[0].SeriesInstanceUID != sct[0].SeriesInstanceUID and float(std[0].RescaleSlope) == pytest.approx(0.1)
    stored = np.stack([d.pixel_array.T * float(d.RescaleSlope) for d in std], axis=-1)
    np.testing.assert_allclose(stored, read_volume(case / "sct_std.nii.gz").array, atol=0.051)
    assert dciodvfy_errors(case / "sct_std_dicom" / "CT00001.dcm") == []


def test_folds_are_nnunets_splits_and_every_folds_run_records_the_same(tiny_phantom: Path, tmp_path: Path) -> None:
    sklearn = pytest.importorskip("sklearn.model_selection")
    ids = [f"case_{i:03d}" for i in (7, 3, 11, 0, 5, 9, 1)]
    expected = []
    keys = np.sort(ids)
    for train_idx, val_idx in sklearn.KFold(n_splits=3, shuffle=True, random_state=12345).split(keys):
        expected.append({"train": list(keys[train_idx]), "val": list(keys[val_idx])})
    assert kfold_splits(ids, 3) == expected
    cfg = load_config("mri2ct", None, ["data.folds=3", "data.fold=1"])
    train, val, _, _ = split_cases(cfg, tiny_phantom, None)
    split = kfold_splits(["case_000", "case_001", "case_002"], 3)[1]
    assert [c["id"] for c in train] == split["train"] and [c["id"] for c in val] == split["val"]
    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    _cli("train", "--task", "mri2ct", "--config", tiny, "--data", str(tiny_phantom), "--out", str(tmp_path / "f0"), "--steps", "1")
    for fold in (0, 2):
        args = ["train", "--task", "mri2ct", "--config", tiny, "--data", str(tiny_phantom), "--out", str(tmp_path / f"k{fold}")]
        _cli(*args, "--folds", "3", "--fold", str(fold), "--steps", "1")
    first, second = (json.loads((tmp_path / f"k{f}" / "splits.json").read_text()) for f in (0, 2))
    assert first == second == kfold_splits(["case_000", "case_001", "case_002"], 3)
    assert not (tmp_path / "f0" / "splits.json").exists()
    bad = runner.invoke(app, ["train", "--task", "mri2ct", "--data", str(tiny_phantom), "--out", str(tmp_path / "x"), "--fold", "1"])
    assert bad.exit_code == 2 and "--fold needs --folds" in bad.output
