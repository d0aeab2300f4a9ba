"""Prediction: outputs on the input's exact grid, batch CLI, parts, overwrite refusal, safe case ids."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.data.codecs import HU, MR_SOURCE
from medp2p.data.intensity import HU_WINDOW, body_mask, mr_window
from medp2p.data.prepare import Prep
from medp2p.infer import load_model, predict_volume
from medp2p.infer.volume import RunOptions
from medp2p.io import read_volume, write_nifti
from medp2p.types import Volume
from tests.test_io_volumes import AFFINES

runner = CliRunner()


class CentreChannel(torch.nn.Module):
    """A stand-in generator that returns its centre input channel: prediction = normalised input."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.k : self.k + 1]


@pytest.mark.parametrize("name", ["LAS", "LPS", "RAS", "oblique", "oblique_left_handed"])
@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_prediction_lands_voxel_for_voxel_on_the_input_grid(rng: np.random.Generator, name: str, axis: str) -> None:
    array = rng.uniform(0, 1000, (13, 11, 7)).astype(np.float32)
    mr = Volume(array, AFFINES[name])
    prep = Prep(("mr",), "ct", HU, axis=axis, context_slices=1, size_multiple=8)
    sct = predict_volume(CentreChannel(1), mr, prep, options=RunOptions(batch_size=3))
    assert sct.shape == mr.shape
    np.testing.assert_allclose(sct.affine, mr.affine, atol=1e-4)
    expected = HU_WINDOW.inverse(mr_window(array).forward(array))
    np.testing.assert_allclose(sct.array, expected, atol=1e-2)


def test_default_batch_holds_16_slices_of_256x256_worth_of_pixels(rng: np.random.Generator, monkeypatch) -> None:
    from medp2p.infer import volume as predict

    assert [RunOptions().batch_for(s, s) for s in (128, 256, 300, 512, 1024)] == [16, 16, 11, 4, 1]
    assert RunOptions(batch_size=7).batch_for(512, 512) == 7  # asked for: as asked

    class Recording(CentreChannel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[0])
            return super().forward(x)

    seen: list[int] = []
    monkeypatch.setattr(predict, "AUTO_BATCH_PIXELS", 3 * 16 * 16)  # 3 model-space slices of 16x16
    mr = Volume(rng.uniform(0, 1000, (13, 11, 7)).astype(np.float32), AFFINES["RAS"])
    prep = Prep(("mr",), "ct", HU, axis="axial", context_slices=1, size_multiple=16)
    predict_volume(Recording(1), mr, prep)
    assert seen == [3, 3, 1]
    seen.clear()
    predict_volume(Recording(1), mr, prep, options=RunOptions(batch_size=5))
    assert seen == [5, 2]


class SkewedCentre(CentreChannel):
    """The centre channel plus a left-right ramp (along ``H``): a generator that is not mirror-symmetric."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.linspace(-0.5, 0.5, x.shape[-2])[:, None]


@pytest.mark.parametrize("axis", ["axial", "coronal"])
def test_flip_tta_averages_each_slice_with_its_mirror_image(rng: np.random.Generator, axis: str) -> None:
    # With the mirrored pass averaged in, the left-right ramp cancels and the input comes back, on
    # every orientation: the mirrored axis is the one training flips (MIRROR_DIMS).
    array = rng.uniform(0, 1000, (13, 11, 7)).astype(np.float32)
    expected = HU_WINDOW.inverse(mr_window(array).forward(array))
    for name in ("LAS", "oblique"):
        mr = Volume(array, AFFINES[name])
        prep = Prep(("mr",), "ct", HU, axis=axis, context_slices=1, size_multiple=8)
        plain = predict_volume(SkewedCentre(1), mr, prep, options=RunOptions(batch_size=3))
        averaged = predict_volume(SkewedCentre(1), mr, prep, options=RunOptions(batch_size=3, flip_tta=True))
        assert np.abs(plain.array - expected).max() > 100
        np.testing.assert_allclose(averaged.array, expected, atol=1e-2)


def test_flip_tta_refuses_sagittal_slices() -> None:
    prep = Prep(("mr",), "ct", HU, axis="sagittal", context_slices=0, size_multiple=8)
    mr = Volume(np.ones((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="sagittal slices do not hold"):
        predict_volume(CentreChannel(0), mr, prep, options=RunOptions(flip_tta=True))


class MidGrey(torch.nn.Module):
    """A stand-in inpainting generator that predicts 0 everywhere (the middle of the MR window) and counts slices."""

    def __init__(self) -> None:
        super().__init__()
        self.slices = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.slices += x.shape[0]
        return torch.zeros_like(x[:, :1])


def test_inpainting_windows_ignore_the_voided_region(tiny_phantom: Path) -> None:
    # A voided box inside the head holds zeros; taken into the window's percentiles they pull its
    # low end to 0, and the model sees other input values than it was trained on (clean volumes).
    clean = read_volume(tiny_phantom / "case_000/mr.nii.gz")
    body = body_mask(clean.array)
    region = np.zeros(clean.shape, np.float32)
    cx, cy = (int(np.median(a)) for a in np.nonzero(body)[:2])
    region[cx - 2 : cx + 2, cy - 2 : cy + 2, :] = 1  # 4% of the body, as the real boxes: far above 0.5%
    region *= body
    voided = clean.with_array(np.where(region > 0, 0, clean.array).astype(np.float32))
    prep = Prep(("mr",), "mr", MR_SOURCE, context_slices=0, size_multiple=8, region=True)
    filled = predict_volume(MidGrey(), voided, prep, clean.with_array(region))
    np.testing.assert_array_equal(filled.array[region == 0], clean.array[region == 0])
    trained = mr_window(clean.array)  # the window the model saw in training
    spread = trained.hi - trained.lo
    np.testing.assert_allclose(filled.array[region > 0], (trained.lo + trained.hi) / 2, atol=0.01 * spread)
    assert mr_window(voided.array).lo == 0  # the window the voided volume would have had


def test_inpainting_predicts_only_the_slices_that_hold_region(tiny_phantom: Path) -> None:
    clean = read_volume(tiny_phantom / "case_000/mr.nii.gz")
    region = np.zeros(clean.shape, np.float32)
    region[10:14, 10:14, 2:5] = 1  # 3 of the axial slices
    generator = MidGrey()
    prep = Prep(("mr",), "mr", MR_SOURCE, context_slices=1, size_multiple=8, region=True)
    filled = predict_volume(generator, clean, prep, clean.with_array(region), RunOptions(batch_size=2))
    assert generator.slices == 3
    np.testing.assert_array_equal(filled.array[region == 0], clean.array[region == 0])
    assert not np.array_equal(filled.array[region > 0], clean.array[region > 0])


@pytest.mark.parametrize("name", ["LAS", "LPS", "oblique"])
def test_trained_model_predicts_files_on_their_grid(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path, name: str) -> None:
    src = read_volume(tiny_phantom / "case_000/mr.nii.gz")
    path = write_nifti(Volume(src.array, AFFINES[name]), tmp_path / "in" / f"{name}.nii.gz")
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    img = nib.load(tmp_path / "out" / name / "sct.nii.gz")
    assert img.shape == src.shape and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, AFFINES[name], atol=1e-4)
    np.testing.assert_allclose(img.header.get_qform(), img.header.get_sform(), atol=1e-4)
    assert img.get_fdata().min() >= -1024.5 and img.get_fdata().max() <= 3000.5


def test_seg_and_inpaint_outputs(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    assert runner.invoke(app, ["predict", "--model", str(tiny_runs["seg"]), "-i", str(tiny_phantom), "-o", str(out)]).exit_code == 0
    mask = nib.load(out / "case_001" / "mask.nii.gz")
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    out = tmp_path / "inp"
    assert runner.invoke(app, ["predict", "--model", str(tiny_runs["inpaint"]), "-i", str(tiny_phantom), "-o", str(out)]).exit_code == 0
    mr = read_volume(tiny_phantom / "case_002/mr.nii.gz").array
    inpainted = read_volume(out / "case_002/inpainted.nii.gz").array
    region = read_volume(out / "case_002/region.nii.gz").array > 0
    assert region.any()
    np.testing.assert_array_equal(inpainted[~region], mr[~region])  # untouched voxels are the input's
    assert not np.array_equal(inpainted[region], mr[region])


def test_predict_tta_option_reaches_the_generator_runs(
    tiny_runs: dict, tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medp2p.infer.batch as batch

    seen = []

    real = batch.run_slices

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(args[-1].flip_tta)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "run_slices", spy)
    for flag in ("--no-tta", "--tta"):
        result = runner.invoke(
            app, ["predict", "--model", str(tiny_runs["seg"]), "-i", str(tiny_phantom), "-o", str(tmp_path / flag), flag]
        )
        assert result.exit_code == 0, result.output
    n = len(seen) // 2
    assert n > 0 and seen == [False] * n + [True] * n


def test_predict_precision_is_chosen_and_recorded(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp32"
    result = runner.invoke(
        app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(out), "--precision", "fp32"]
    )
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "predict.json").read_text())
    assert settings["precision"] == "fp32" and settings["task"] == "mri2ct" and settings["device"] == "cpu"
    assert settings["tta"] is False and settings["model"].endswith(".pt")
    # the same volume as a float32 predict_volume through the Python API
    model = load_model(tiny_runs["mri2ct"], precision="fp32")
    assert model.options.dtype is None
    mr = read_volume(tiny_phantom / "case_000" / "mr.nii.gz")
    want = predict_volume(model.generator, mr, model.prep, options=model.options)
    np.testing.assert_allclose(read_volume(out / "case_000" / "sct.nii.gz").array, want.array, atol=1e-3)
    assert load_model(tiny_runs["mri2ct"], precision="bf16").options.dtype == torch.bfloat16
    default = load_model(tiny_runs["mri2ct"]).options.dtype  # the run's train.precision (auto)
    assert default in (None, torch.bfloat16)
    for bad, message in (("fp8", "--precision must be one of"), ("fp16", "fp16 needs a CUDA device")):
        result = runner.invoke(
            app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(tmp_path / bad), "--precision", bad]
        )
        assert result.exit_code == 2 and message in result.output
        assert not (tmp_path / bad).exists()


def test_model_loads_from_run_folder_or_file(tiny_runs: dict) -> None:
    a = load_model(tiny_runs["seg"])
    b = load_model(tiny_runs["seg"] / "last.pt")
    assert a.path.endswith("best.pt") and b.path.endswith("last.pt") and a.task.name == "seg"
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["seg"] / "nope.pt"), "-i", ".", "-o", "x"])
    assert result.exit_code == 2 and "nope.pt" in result.output


def test_loaded_model_runs_the_inference_rewrite_with_the_same_outputs(tiny_runs: dict, tiny_phantom: Path) -> None:
    from medp2p.infer import generator_from_checkpoint, load_checkpoint
    from medp2p.models.inference import MatmulConvTranspose2d

    model = load_model(tiny_runs["mri2ct"])
    assert any(isinstance(m, MatmulConvTranspose2d) for m in model.generator.modules())
    assert model.cfg.train.channels_last == "auto" and model.options.channels_last  # prediction: NHWC
    plain, _ = generator_from_checkpoint(load_checkpoint(tiny_runs["mri2ct"]))
    assert not any(isinstance(m, MatmulConvTranspose2d) for m in plain.modules())
    mr = read_volume(tiny_phantom / "case_000" / "mr.nii.gz")
    # float32 on both sides: where the CPU has bf16 units `auto` would autocast, and bf16 rounds
    # the folded and the plain network differently (about 1% of the HU range)
    fp32 = dataclasses.replace(model.options, dtype=None)
    fast = predict_volume(model.generator, mr, model.prep, options=fp32)
    slow = predict_volume(plain.eval(), mr, model.prep, options=fp32)
    np.testing.assert_allclose(fast.array, slow.array, atol=0.05)  # HU: float rounding only


def _dataset(tiny_phantom: Path, root: Path, ids: list[str]) -> Path:
    cases = [{"id": cid, "mr": str(tiny_phantom / f"case_00{i % 3}/mr.nii.gz")} for i, cid in enumerate(ids)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "list.json").write_text(json.dumps({"test": cases}))
    return root / "list.json"


def test_parts_write_each_case_exactly_once(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    data = _dataset(tiny_phantom, tmp_path, ["p1", "p2", "p3", "p4"])
    out = tmp_path / "out"
    seen = []
    for part in (0, 1):
        result = runner.invoke(
            app,
            ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(data), "-o", str(out), "--num-parts", "2", "--part-id", str(part)],
        )
        assert result.exit_code == 0, result.output
        seen.append({line.split(":")[0] for line in result.stdout.splitlines() if line.strip()})
    assert seen[0] | seen[1] == {"p1", "p2", "p3", "p4"} and not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == 2
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["p1", "p2", "p3", "p4"]
    assert sorted(p.name for p in out.glob("predict*.json")) == ["predict_part-0-of-2.json", "predict_part-1-of-2.json"]
    assert (
        runner.invoke(
            app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(data), "-o", str(out), "--num-parts", "2", "--part-id", "2"]
        ).exit_code
        == 2
    )


def test_existing_output_is_refused_without_overwrite(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    args = ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom / "case_000/mr.nii.gz"), "-o", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    target = tmp_path / "case_000" / "sct.nii.gz"
    target.write_bytes(b"my own file")
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert target.read_bytes() == b"my own file"
    with (tmp_path / "failures.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["case"] == "case_000" and "already exists" in row["error"] and row["input"].endswith("mr.nii.gz")
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert target.read_bytes() != b"my own file"
    assert not (tmp_path / "failures.csv").exists()


def test_case_ids_cannot_escape_the_output_folder(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    data = _dataset(tiny_phantom, tmp_path / "data", ["../../evil", "/abs/olute", "ok"])
    out = tmp_path / "deep" / "out"
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(data), "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("sct.nii.gz")}
    assert all(str(p).startswith("deep/out/") for p in written) and len(written) == 3
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists()


def test_a_failing_case_does_not_stop_the_others(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    data = _dataset(tiny_phantom, tmp_path / "data", ["good", "bad"])
    listing = json.loads(data.read_text())
    (tmp_path / "data" / "broken.nii.gz").write_bytes(b"not an image")
    listing["test"][1]["mr"] = "broken.nii.gz"
    data.write_text(json.dumps(listing))
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(data), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert (tmp_path / "out" / "good" / "sct.nii.gz").exists()
    assert not (tmp_path / "out" / "bad").exists()  # nothing partial for the failed case
    rows = list(csv.DictReader((tmp_path / "out" / "failures.csv").open()))
    assert [r["case"] for r in rows] == ["bad"] and "broken.nii.gz" in rows[0]["error"]


def test_multi_source_model_needs_a_dataset(tiny_phantom: Path, tmp_path: Path) -> None:
    from medp2p.config import load_config
    from medp2p.train import train

    cfg = load_config("seg", Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", ["data.source_keys=[mr, ct]"])
    run = train(cfg, tiny_phantom, tmp_path / "run", stop_step=1, progress=False).run_dir
    result = runner.invoke(app, ["predict", "--model", str(run), "-i", str(tiny_phantom / "case_000/mr.nii.gz"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "takes 2 images per case" in result.output
    assert runner.invoke(app, ["predict", "--model", str(run), "-i", str(tiny_phantom), "-o", str(tmp_path / "o")]).exit_code == 0
