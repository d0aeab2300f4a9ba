"""Short versions of the real-data protocols (medp2p.eval.protocols, ``benchmarks/realdata.py --quick``), end to end through the CLI.

Each trains a small model for a minute or two on real scans, predicts unseen data, scores it with
`medp2p evaluate`, and must beat the trivial baseline scored the same way. The full protocols and
their figures are in docs/results.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medp2p.eval.protocols import ProtocolOptions, run_inpaint, run_mr2mr, run_mri2ct, run_seg
from tests.conftest import shared

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_mri2ct_slab_split_beats_the_mean_hu_baseline(tmp_path: Path) -> None:
    shared("mridir_phantom", "t2.nii.gz")
    result = run_mri2ct(ProtocolOptions(tmp_path, quick=True), splits=("lower_to_upper",))
    (row,) = result.splits
    model, base = row["metrics"], row["baselines"]
    assert row["test_slab"] == [0.5, 1.0]
    # the lookup baseline is the one the issue measured on this split (74 HU overall, 715 on bone)
    assert 65 < base["lookup"]["mae"] < 85 and 600 < base["lookup"]["mae_bone"] < 800
    assert model["mae"] < base["mean_hu"]["mae"]
    assert json.loads((tmp_path / "mri2ct" / "results.json").read_text())["splits"][0]["split"] == "lower_to_upper"


def test_seg_fold_beats_the_flair_threshold(tmp_path: Path) -> None:
    shared("brats2015_deepmedic")
    result = run_seg(ProtocolOptions(tmp_path, quick=True), folds=(3,))
    (row,) = result.splits
    assert row["test_case"] == "brats_2013_pat0004_1"
    assert row["metrics"]["dice"] > row["baselines"]["flair_threshold"]["dice"] - 0.05
    assert row["metrics"]["dice"] > 0.5
    assert math.isfinite(row["pyradiomics"]["dice"])


def test_inpaint_on_an_unseen_subject_beats_mean_fill(tmp_path: Path) -> None:
    # The quick run measured SSIM 0.415 against the fill's 0.382 and MSE 0.042 against 0.058
    # (float32 CPU, before training's flip became left-right; docs/results.md). It still passes
    # after that fix (full suite, 2026-11-23); those figures were not recorded.
    shared("kirby21_113")
    shared("stroke_cstar")
    result = run_inpaint(ProtocolOptions(tmp_path, quick=True))
    (row,) = result.splits
    model, fill = row["metrics"], row["baselines"]["mean_fill"]
    assert model["ssim"] > fill["ssim"]  # the BraTS-Inpainting target metric
    assert model["mse"] < fill["mse"]
    # the blurred-truth oracles put the score in scale: the sharper truth scores higher, and both
    # beat a model that sees only the surroundings
    sharp, soft = row["oracles"]["truth_blurred_1"], row["oracles"]["truth_blurred_2"]
    assert sharp["ssim"] > soft["ssim"] > model["ssim"]
    assert sharp["mse"] < soft["mse"] < model["mse"]


def test_mr2mr_t1_to_t2_runs_end_to_end_and_scores_like_the_lookup(tmp_path: Path) -> None:
    shared("kirby21_113")
    shared("stroke_cstar")
    result = run_mr2mr(ProtocolOptions(tmp_path, quick=True), splits=("t1_to_t2",))
    (row,) = result.splits
    assert row["test"] == ["stroke_cstar"] and set(row["metrics"]) == {"ssim", "psnr", "mse"}
    model, lookup = row["metrics"], row["baselines"]["lookup"]
    # 400 steps of a tiny model on one subject: it must at least produce a plausible contrast
    assert 0.3 < model["ssim"] <= 1.0 and 0.3 < lookup["ssim"] <= 1.0 and model["mse"] < 0.1
    synth = tmp_path / "mr2mr" / "t1_to_t2" / "pred" / "stroke_cstar" / "synth.nii.gz"
    assert synth.is_file()


def test_mri2ct_ensemble_with_uncertainty_scores_members_and_their_calibration(tmp_path: Path) -> None:
    shared("mridir_phantom", "t2.nii.gz")
    # what is checked is the plumbing (members, passes, maps, calibration columns), not quality: 100
    # steps each, and prediction on a 2 mm grid (a quarter of the quick version's voxels, times 12 passes)
    cheap = ("train.steps=100", "data.spacing_mm=2.0")
    opts = ProtocolOptions(tmp_path, quick=True, sets=cheap, predict_options=("--uncertainty",), members=2)
    (row,) = run_mri2ct(opts, splits=("lower_to_upper",)).splits
    assert len(row["members"]) == 2 and {"spearman", "top10_error_ratio", "ause"} <= set(row["metrics"])
    assert (tmp_path / "mri2ct" / "lower_to_upper" / "pred" / "mridir" / "sct_std.nii.gz").is_file()
    record = json.loads((tmp_path / "mri2ct" / "lower_to_upper" / "pred" / "mridir" / "uncertainty.json").read_text())
    assert len(record["members"]) == 2 and record["passes_per_member"] == 6
    assert row["train_s"] == pytest.approx(sum(m["train_s"] for m in row["members"]), abs=0.2)


def test_protocols_train_their_3d_configs_with_dims_3(tmp_path: Path) -> None:
    opts = ProtocolOptions(tmp_path, quick=True, dims=3)
    path, sets = opts.config("mri2ct_mridir.yaml", ["data.slice_range=[0.0, 0.5]", "data.image_size=[64, 64]", "model.depth=6"])
    assert path.name == "mri2ct_mridir_3d.yaml" and path.is_file()
    assert sets == ["data.slice_range=[0.0, 0.5]", "model.depth=6", "data.patch_size=[64, 64, 16]"]
    assert ProtocolOptions(tmp_path).config("seg_brats.yaml", ["data.image_size=[64, 64]"])[1] == ["data.image_size=[64, 64]"]
    for name in ("mri2ct_mridir", "seg_brats", "inpaint_brain", "mr2mr_brain"):
        assert (opts.configs / f"{name}_3d.yaml").is_file()


def test_mri2ct_slab_split_in_3d_beats_the_mean_hu_baseline(tmp_path: Path) -> None:
    shared("mridir_phantom", "t2.nii.gz")
    (row,) = run_mri2ct(ProtocolOptions(tmp_path, quick=True, dims=3), splits=("lower_to_upper",)).splits
    assert "mri2ct_mridir_3d.yaml" in row["command"] and "data.patch_size=[64, 64, 16]" in row["command"]
    assert row["metrics"]["mae"] < row["baselines"]["mean_hu"]["mae"]
