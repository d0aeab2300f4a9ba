"""The fourth task, MR contrast synthesis (``mr2mr``): one Task value plus a config, through every stage.

Shapes and grids as for the other tasks, the target contrast's window fitted on the training
targets and kept in the run, BraSyn metrics against an independent computation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.config import load_config
from medp2p.data.phantom import PhantomSpec
from medp2p.io import read_volume, write_nifti
from medp2p.metrics import brasyn_brain_metrics
from medp2p.plan import build_plan
from medp2p.tasks import MR2MR, TASKS
from tests.conftest import ROOT

runner = CliRunner()
TINY = str(ROOT / "configs" / "tiny.yaml")


def test_mr2mr_is_a_registered_value_with_its_own_codec_and_metric() -> None:
    assert TASKS["mr2mr"] is MR2MR and MR2MR.output_name == "synth.nii.gz"
    assert MR2MR.codec.fits_window and MR2MR.definition().name == "brasyn" and MR2MR.metric_names == ("ssim_tumor", "ssim_non_tumor")
    # training picks best.pt by medp2p's brain-mask SSIM, which the leaderboard's whole-map mean would blunt
    assert MR2MR.validation_definition().name == "brasyn-brain" and MR2MR.best_metric in MR2MR.validation_definition().columns
    plan = build_plan(load_config("mr2mr", TINY, ["data.context_slices=1"]))
    assert plan.keys.sources == ("mr",) and plan.keys.target == "target" and not plan.keys.mask_required
    assert plan.prep.in_channels == 3 and plan.generator.kwargs["final_activation"] == "tanh"
    keyed = build_plan(load_config("mr2mr", TINY, ["data.source_keys=[t1, flair]", "data.target_key=t2"]))
    assert keyed.keys.sources == ("t1", "flair") and keyed.prep.in_channels == 2
    assert plan.losses.l2 == 0.0  # BraSyn scores MSE: loss.l2 trains towards the mean instead of L1's median
    squared = build_plan(load_config("mr2mr", TINY, ["loss.l1=0", "loss.l2=100"])).losses
    assert (squared.l1, squared.l2) == (0.0, 100.0)


def test_mr2mr_trains_predicts_and_evaluates_from_the_cli(contrasts: Path, tmp_path: Path) -> None:
    run, pred, report = tmp_path / "run", tmp_path / "pred", tmp_path / "report"
    result = runner.invoke(
        app, ["train", "--task", "mr2mr", "--config", TINY, "--data", str(contrasts / "list.json"), "--out", str(run), "--steps", "3"]
    )
    assert result.exit_code == 0, result.output
    window = yaml.safe_load((run / "config.yaml").read_text())["data"]["target_window"]
    targets = [read_volume(contrasts / c / "t2.nii.gz").array for c in ("case_000", "case_001")]
    assert window[0] < window[1] <= max(float(t.max()) for t in targets)  # the training targets' scale, kept in the run
    result = runner.invoke(app, ["predict", "--model", str(run), "-i", str(contrasts / "list.json"), "-o", str(pred)])
    assert result.exit_code == 0, result.output
    out = read_volume(pred / "case_002" / "synth.nii.gz")
    ref = read_volume(contrasts / "case_002" / "t2.nii.gz")
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine) and out.array.dtype == np.float32
    span = window[1] - window[0]  # tanh outputs decode into the run's target window
    assert np.isfinite(out.array).all() and window[0] - 1e-3 * span <= out.array.min() and out.array.max() <= window[1] + 1e-3 * span
    result = runner.invoke(
        app, ["evaluate", "--task", "mr2mr", "--pred", str(pred), "--ref", str(contrasts / "list.json"), "-o", str(report)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["metric_definition"] == "brasyn" and summary["cases"] == 3 and "BraSyn" in summary["definition_source"]
    with (report / "metrics.csv").open() as fh:
        assert next(csv.reader(fh)) == ["case", "ssim_tumor", "ssim_non_tumor"]
    assert (report / "case_002.png").is_file()
    result = runner.invoke(
        app,
        ["evaluate", "--task", "mr2mr", "--pred", str(pred), "--ref", str(contrasts / "list.json"), "-o", str(report)]
        + ["--metrics", "brasyn-brain", "--overwrite"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["metric_definition"] == "brasyn-brain" and set(summary["metrics"]) == {"ssim", "psnr", "mse"}


def test_mr2mr_from_the_python_api(contrasts: Path, tmp_path: Path) -> None:
    from medp2p.eval import evaluate
    from medp2p.infer import load_model, predict_cases, predict_volume
    from medp2p.train import train

    cfg = load_config("mr2mr", TINY)
    result = train(cfg, contrasts / "list.json", tmp_path / "run", stop_step=2, progress=False)
    assert set(result.val_metrics) == {"ssim", "psnr", "mse"}
    model = load_model(tmp_path / "run")
    report = predict_cases(model, [contrasts / "list.json"], tmp_path / "pred")
    assert not report.failures and len(report.written) == 3
    case = json.loads((contrasts / "list.json").read_text())["training"][0]
    synth = predict_volume(model.generator, read_volume(case["mr"]), model.prep, options=model.options)
    assert synth.shape == read_volume(case["target"]).shape
    assert evaluate("mr2mr", tmp_path / "pred", contrasts / "list.json", tmp_path / "rep").ok


def _own_scale(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    lo = max(lo, 0.0)
    return (np.clip(image, lo, hi) - lo) / (hi - lo)


def _ssim_map(x: np.ndarray, y: np.ndarray, data_range: float, sigma: float = 1.5) -> np.ndarray:
    """Wang et al.'s SSIM map with Gaussian local statistics (population covariance), written out."""

    def g(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, truncate=3.5, mode="reflect")

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = g(x), g(y)
    vx, vy, cxy = g(x * x) - mx * mx, g(y * y) - my * my, g(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


@pytest.mark.parametrize("seed", [0, 1])
def test_brasyn_metrics_agree_with_an_independent_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (24, 26, 22)
    ref = ndimage.gaussian_filter(rng.uniform(0, 1000, shape), 2)
    pred = ref * 1.3 + rng.normal(0, 20, shape) + 50  # another scale: the own-percentile normalisation undoes it
    mask = np.zeros(shape, bool)
    mask[4:20, 5:21, 3:19] = True
    got = brasyn_brain_metrics(ref, pred, mask)
    r, p = _own_scale(ref) * mask, _own_scale(pred) * mask
    data_range = max(np.ptp(r), np.ptp(p))
    ssim = _ssim_map(r, p, data_range)[mask].mean()
    mse = np.mean((r[mask] - p[mask]) ** 2)
    assert got["ssim"] == pytest.approx(ssim, abs=1e-4)
    assert got["mse"] == pytest.approx(mse, rel=1e-6)
    assert got["psnr"] == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-6)
    assert brasyn_brain_metrics(ref, ref, mask)["ssim"] == pytest.approx(1.0)


def test_brasyn_splits_by_the_cases_tumour_segmentation_when_it_has_one(tmp_path: Path) -> None:
    from medp2p.data.phantom import make_phantom_case
    from medp2p.eval import evaluate
    from medp2p.metrics import brasyn_metrics

    cases, expected = [], {}
    for i in range(2):  # BraSyn crops 5 voxels at every border: volumes thicker than the tiny phantom's 8 slices
        vols = make_phantom_case(11, i, PhantomSpec(shape=(36, 32, 20)))
        cid, mr, brain, tumor = f"c{i}", vols["mr"], vols["mask"], vols["tumor"]
        target = mr.with_array(np.where(brain.array > 0, 3000.0 - 2.5 * mr.array, 0.0).astype(np.float32))
        pred = target.with_array(np.asarray(ndimage.gaussian_filter(target.array, 1.0), np.float32))
        case = {"id": cid}
        for key, vol in (("mr", mr), ("target", target), ("mask", brain)):
            write_nifti(vol, tmp_path / cid / f"{key}.nii.gz")
            case[key] = str(tmp_path / cid / f"{key}.nii.gz")
        write_nifti(pred, tmp_path / "pred" / cid / "synth.nii.gz")
        if i == 0:  # labels 0..3 as BraTS writes them: any non-negative integer is read
            write_nifti(tumor.with_array((tumor.array * 3).astype(np.float32)), tmp_path / cid / "seg.nii.gz")
            case["tumor"] = str(tmp_path / cid / "seg.nii.gz")
            split = tumor.array > 0
        else:
            split = brain.array > 0  # no tumour: the brain mask splits
        expected[cid] = brasyn_metrics(target.array, pred.array, split)
        cases.append(case)
    (tmp_path / "list.json").write_text(json.dumps({"training": cases}))
    report = evaluate("mr2mr", tmp_path / "pred", tmp_path / "list.json", tmp_path / "rep", montages=False)
    assert report.ok
    for row in report.rows:
        want = expected[row["case"]]
        assert np.isfinite(row["ssim_tumor"]) and row["ssim_tumor"] == pytest.approx(want["ssim_tumor"], abs=1e-9)
        assert row["ssim_non_tumor"] == pytest.approx(want["ssim_non_tumor"], abs=1e-9)
    assert report.rows[0]["ssim_tumor"] != pytest.approx(report.rows[1]["ssim_tumor"], abs=1e-3)
