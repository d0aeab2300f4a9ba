"""`medp2p evaluate`: per-case CSV, summary JSON, montages; cases matched by id; missing cases counted."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.data.geometry import slab_mask
from medp2p.io import read_volume
from medp2p.metrics import synthrad_metrics

runner = CliRunner()


@pytest.fixture(scope="module")
def predictions(tiny_runs: dict, tiny_phantom: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pred")
    out = {}
    for task, run in tiny_runs.items():
        result = runner.invoke(app, ["predict", "--model", str(run), "-i", str(tiny_phantom), "-o", str(root / task)])
        assert result.exit_code == 0, result.output
        out[task] = root / task
    return out


@pytest.mark.parametrize(
    "task, metrics",
    [
        ("mri2ct", ["mae", "psnr", "ssim", "mae_air", "mae_soft_tissue", "mae_bone"]),
        ("seg", ["dice", "hd95"]),
        ("inpaint", ["ssim", "psnr", "mse"]),
    ],
)
def test_reports_per_case_and_summary(predictions: dict, tiny_phantom: Path, tmp_path: Path, task: str, metrics: list[str]) -> None:
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", "--task", task, "--pred", str(predictions[task]), "--ref", str(tiny_phantom), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["case"] for r in rows] == ["case_000", "case_001", "case_002"]
    assert list(rows[0]) == ["case", *metrics]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["missing"] == [] and summary["definitions"]
    first = metrics[0]
    values = [float(r[first]) for r in rows]
    assert summary["metrics"][first]["mean"] == pytest.approx(np.mean(values), rel=1e-4)
    assert summary["metrics"][first]["median"] == pytest.approx(np.median(values), rel=1e-4)
    assert summary["metrics"][first]["std"] == pytest.approx(np.std(values), rel=1e-3, abs=1e-6)
    assert sorted(p.name for p in out.glob("*.png")) == ["case_000.png", "case_001.png", "case_002.png"]


def test_mri2ct_values_are_the_synthrad_metrics(predictions: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    runner.invoke(
        app, ["evaluate", "--task", "mri2ct", "--pred", str(predictions["mri2ct"]), "--ref", str(tiny_phantom), "-o", str(tmp_path)]
    )
    row = next(csv.DictReader((tmp_path / "metrics.csv").open()))
    ct = read_volume(tiny_phantom / "case_000/ct.nii.gz").array
    sct = read_volume(predictions["mri2ct"] / "case_000/sct.nii.gz").array
    body = read_volume(tiny_phantom / "case_000/mask.nii.gz").array
    expected = synthrad_metrics(ct, sct, body)
    for key in ("mae", "psnr", "ssim"):
        assert float(row[key]) == pytest.approx(expected[key], rel=1e-5)


def test_missing_prediction_is_reported(predictions: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(predictions["seg"], pred)
    shutil.rmtree(pred / "case_001")
    result = runner.invoke(app, ["evaluate", "--task", "seg", "--pred", str(pred), "--ref", str(tiny_phantom), "-o", str(tmp_path / "r")])
    assert result.exit_code == 1 and "case_001" in result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["cases"] == 2 and summary["missing"] == ["case_001"]
    empty = tmp_path / "none"
    empty.mkdir()
    assert (
        runner.invoke(
            app, ["evaluate", "--task", "seg", "--pred", str(empty), "--ref", str(tiny_phantom), "-o", str(tmp_path / "r2")]
        ).exit_code
        == 2
    )


def test_inpaint_regions_must_match_the_seed(predictions: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--task",
            "inpaint",
            "--pred",
            str(predictions["inpaint"]),
            "--ref",
            str(tiny_phantom),
            "-o",
            str(tmp_path),
            "--seed",
            "99",
        ],
    )
    assert result.exit_code == 1 and "another region" in result.output


def test_slice_range_scores_only_that_slab(predictions: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    args = ["evaluate", "--task", "mri2ct", "--pred", str(predictions["mri2ct"]), "--ref", str(tiny_phantom), "--no-montages"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "upper"), "--slice-range", "0.5", "1.0"])
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader((tmp_path / "upper" / "metrics.csv").open()))
    ct_vol = read_volume(tiny_phantom / "case_000/ct.nii.gz")
    sct = read_volume(predictions["mri2ct"] / "case_000/sct.nii.gz").array
    body = read_volume(tiny_phantom / "case_000/mask.nii.gz").array > 0
    upper = slab_mask(ct_vol.shape, ct_vol.affine, "axial", (0.5, 1.0))
    assert upper.any() and not upper.all()
    expected = synthrad_metrics(ct_vol.array, sct, body & upper)
    assert float(row["mae"]) == pytest.approx(expected["mae"], rel=1e-5)
    assert json.loads((tmp_path / "upper" / "summary.json").read_text())["slab"] == {"axis": "axial", "slice_range": [0.5, 1.0]}
    bad = runner.invoke(app, [*args, "-o", str(tmp_path / "bad"), "--slice-range", "0.6", "0.2"])
    assert bad.exit_code == 2 and "--slice-range" in bad.output


def test_mri2ct_case_without_a_body_mask_uses_ct_above_minus_500(tiny_phantom: Path, tmp_path: Path) -> None:
    from medp2p.config import load_config
    from medp2p.data.case_reader import read_case
    from medp2p.data.prepare import prepare_case
    from medp2p.plan import build_plan

    case = {"id": "c", "mr": str(tiny_phantom / "case_000/mr.nii.gz"), "ct": str(tiny_phantom / "case_000/ct.nii.gz")}
    cfg = load_config("mri2ct", None, ["data.image_size=[32, 32]"])
    plan = build_plan(cfg)
    prepared = prepare_case(read_case(case, plan.keys), plan.prep)
    ct = read_volume(case["ct"]).array
    assert prepared.mask is not None and int(prepared.mask.sum()) == int((ct > -500).sum())


@pytest.mark.parametrize(
    "task, definition, columns",
    [
        ("mri2ct", "synthrad2025", ["mae", "psnr", "ms_ssim", "mae_air", "mae_soft_tissue", "mae_bone"]),
        ("seg", "brats2023-lesionwise", ["lesion_dice", "lesion_hd95", "legacy_dice", "legacy_hd95", "num_tp", "num_fp", "num_fn"]),
        ("inpaint", "brats-inpainting-2d", ["ssim", "psnr", "mse"]),
    ],
)
def test_metrics_names_a_definition(
    predictions: dict, tiny_phantom: Path, tmp_path: Path, task: str, definition: str, columns: list[str]
) -> None:
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        ["evaluate", "--task", task, "--pred", str(predictions[task]), "--ref", str(tiny_phantom), "-o", str(out), "--metrics", definition],
    )
    assert result.exit_code == 0, result.output
    with (out / "metrics.csv").open() as fh:
        assert next(csv.reader(fh)) == ["case", *columns]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric_definition"] == definition and summary["definition_source"] and summary["definitions"]
    assert definition in result.output


def test_the_default_definitions_and_an_unknown_name(predictions: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    from medp2p.tasks import TASKS

    assert [TASKS[t].definition().name for t in ("mri2ct", "seg", "inpaint", "mr2mr")] == [
        "synthrad2023",
        "dice-hd95",
        "brats-inpainting",
        "brasyn",
    ]
    result = runner.invoke(
        app,
        ["evaluate", "--task", "seg", "--pred", str(predictions["seg"]), "--ref", str(tiny_phantom), "-o", str(tmp_path / "r")]
        + ["--metrics", "synthrad2025"],
    )
    assert result.exit_code == 2 and "dice-hd95" in result.output and "brats2023-lesionwise" in result.output
    assert not (tmp_path / "r").exists()  # refused before any output


def test_regions_declared_in_the_datalist_add_per_region_columns(predictions: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    cases = sorted(p for p in tiny_phantom.iterdir() if p.is_dir())
    datalist = {
        "training": [{"id": c.name, "mr": str(c / "mr.nii.gz"), "tumor": str(c / "tumor.nii.gz")} for c in cases],
        "regions": {"WT": [1], "core": [1]},
    }
    (tmp_path / "list.json").write_text(json.dumps(datalist))
    for definition, first in (("dice-hd95", "dice"), ("brats2023-lesionwise", "lesion_dice")):
        out = tmp_path / definition
        result = runner.invoke(
            app,
            ["evaluate", "--task", "seg", "--pred", str(predictions["seg"]), "--ref", str(tmp_path / "list.json"), "-o", str(out)]
            + ["--metrics", definition],
        )
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader((out / "metrics.csv").open()))
        assert f"{first}_WT" in rows[0] and f"{first}_core" in rows[0]
        assert all(r[first] == r[f"{first}_WT"] == r[f"{first}_core"] for r in rows)  # one label: every region the same mask
    datalist["regions"] = {"WT": ["one"]}
    (tmp_path / "bad.json").write_text(json.dumps(datalist))
    result = runner.invoke(
        app,
        ["evaluate", "--task", "seg", "--pred", str(predictions["seg"]), "--ref", str(tmp_path / "bad.json"), "-o", str(tmp_path / "b")],
    )
    assert result.exit_code == 2 and "region 'WT'" in result.output
