"""``medp2p export`` to ONNX and ``medp2p predict --model model.onnx`` through the same pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.config import load_config
from medp2p.infer.checkpoint import generator_from_checkpoint, load_checkpoint
from medp2p.infer.onnx import INPUT_NAME, OnnxGenerator, export_onnx, read_onnx_metadata
from medp2p.io import read_volume
from tests.conftest import ROOT

runner = CliRunner()


@pytest.fixture(scope="module")
def batchnorm_run(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step mri2ct run with batch norm (the shipped real-data configs' norm), so there is something to fold."""
    from medp2p.train import train

    cfg = load_config("mri2ct", ROOT / "configs" / "tiny.yaml", ["model.norm=batch", "data.val_cases=1"])
    return train(cfg, tiny_phantom, tmp_path_factory.mktemp("bn") / "run", stop_step=2, progress=False).run_dir


@pytest.fixture(scope="module")
def exported(batchnorm_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = runner.invoke(app, ["export", "--model", str(batchnorm_run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_the_export_folds_batch_norm_and_carries_its_contract(exported: Path, batchnorm_run: Path) -> None:
    proto = onnx.load(str(exported))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][:1] == ["batch"] and dims[2].dim_param and dims[3].dim_param
    meta = read_onnx_metadata(exported)
    contract = meta["contract"]
    assert contract["task"] == "mri2ct" and contract["input"]["name"] == INPUT_NAME and contract["input"]["layout"] == "NCHW"
    assert contract["size_multiple"] > 1 and contract["output"]["final_activation"] == "tanh"
    assert meta["config"] == load_checkpoint(batchnorm_run)["config"]  # the plan is rebuilt from the run's own config


def test_onnx_and_torch_agree_in_model_space(exported: Path, batchnorm_run: Path) -> None:
    generator, plan = generator_from_checkpoint(load_checkpoint(batchnorm_run))
    generator.eval()
    ort = OnnxGenerator(exported)
    m = plan.inference_prep.size_multiple
    rng = np.random.default_rng(0)
    for batch, h, w in ((1, 2 * m, 2 * m), (3, 3 * m, 2 * m)):  # dynamic batch and slice size
        x = torch.from_numpy(rng.uniform(-1, 1, (batch, 1, h, w)).astype(np.float32))
        with torch.no_grad():
            want = generator(x).numpy()
        got = ort(x).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_predict_from_onnx_gives_the_runs_volume(exported: Path, batchnorm_run: Path, tiny_phantom: Path, tmp_path: Path) -> None:
    for name, model, extra in (("run", batchnorm_run, ["--precision", "fp32"]), ("onnx", exported, [])):
        result = runner.invoke(app, ["predict", "--model", str(model), "-i", str(tiny_phantom), "-o", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    for case in ("case_000", "case_001", "case_002"):
        a = read_volume(tmp_path / "run" / case / "sct.nii.gz")
        b = read_volume(tmp_path / "onnx" / case / "sct.nii.gz")
        assert a.shape == b.shape and np.allclose(a.affine, b.affine)
        np.testing.assert_allclose(b.array, a.array, atol=1e-3)  # HU
    settings = json.loads((tmp_path / "onnx" / "predict.json").read_text())
    assert settings["model"] == str(exported) and settings["precision"] == "fp32"


def test_export_and_onnx_predict_refuse_what_does_not_apply(
    exported: Path, batchnorm_run: Path, tiny_phantom: Path, tmp_path: Path
) -> None:
    assert runner.invoke(app, ["export", "--model", str(batchnorm_run), "-o", str(tmp_path / "m.pt")]).exit_code == 2
    result = runner.invoke(app, ["export", "--model", str(batchnorm_run), "-o", str(exported)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    for flags, message in ((["--compile"], "--compile"), (["--precision", "bf16"], "float32")):
        result = runner.invoke(app, ["predict", "--model", str(exported), "-i", str(tiny_phantom), "-o", str(tmp_path / "p"), *flags])
        assert result.exit_code == 2 and message in result.output
    plain = tmp_path / "plain.onnx"
    export_onnx(batchnorm_run, plain)
    proto = onnx.load(str(plain))
    del proto.metadata_props[:]
    onnx.save(proto, str(plain))
    result = runner.invoke(app, ["predict", "--model", str(plain), "-i", str(tiny_phantom), "-o", str(tmp_path / "q")])
    assert result.exit_code == 2 and "not a medp2p export" in result.output
