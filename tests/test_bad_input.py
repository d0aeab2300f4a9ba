"""Bad input, first hour: every input checked where it is read, one-line errors naming the file, no broken paths.

Each test here failed on the code before issue 19 (or pins a rule that one fix set).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import typer.main
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.config import ConfigError, config_from_dict, load_config
from medp2p.data import load_datalist
from medp2p.data.case_reader import CaseError, CaseKeys, read_case
from medp2p.io import read_volume, write_nifti
from medp2p.types import Volume
from tests.conftest import ROOT, TINY, shared
from tests.dicom_helpers import write_series

runner = CliRunner()
TINY_CONFIG = str(ROOT / "configs" / "tiny.yaml")
GROUP = typer.main.get_command(app)


def _run(*args: str):
    return runner.invoke(app, list(args))


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("error:", "failed:"))]


def _copy_phantom(tiny_phantom: Path, dest: Path, cases: tuple[str, ...] = ("case_000", "case_001", "case_002")) -> Path:
    for cid in cases:
        shutil.copytree(tiny_phantom / cid, dest / cid)
    return dest


def _save_like(src: Path, dest: Path, array: np.ndarray, qform: np.ndarray | None = None) -> Path:
    img = nib.load(src)
    out = nib.Nifti1Image(array.astype(np.float32), img.affine)
    out.set_sform(img.affine, code=1)
    out.set_qform(img.affine if qform is None else qform, code=1)
    nib.save(out, dest)
    return dest


# --- 1. predict --format dicom on its own -------------------------------------------------------------


def test_predict_dicom_only_writes_the_ct_series(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    result = _run("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(tmp_path / "out"), "--format", "dicom")
    assert result.exit_code == 0, result.output
    for cid in ("case_000", "case_001", "case_002"):
        case_dir = tmp_path / "out" / cid
        assert sorted(p.name for p in case_dir.iterdir()) == ["sct_dicom"]
        assert len(list((case_dir / "sct_dicom").glob("*.dcm"))) == TINY.shape[2]
    again = _run(
        "predict",
        "--model",
        str(tiny_runs["mri2ct"]),
        "-i",
        str(tiny_phantom),
        "-o",
        str(tmp_path / "out"),
        "--format",
        "dicom",
        "--overwrite",
    )
    assert again.exit_code == 0, again.output
    assert not [p for p in (tmp_path / "out" / "case_000").iterdir() if p.name.startswith(".")]  # no staging left


# --- 2. list-valued datalist keys are channels -----------------------------------------------------------


def _monai_datalist(tiny_phantom: Path, path: Path) -> Path:
    cases = [
        {
            "image": [str(tiny_phantom / f"case_00{i}/mr.nii.gz"), str(tiny_phantom / f"case_00{i}/ct.nii.gz")],
            "label": str(tiny_phantom / f"case_00{i}/tumor.nii.gz"),
        }
        for i in range(3)
    ]
    path.write_text(json.dumps({"training": cases[:2], "validation": cases[2:]}))
    return path


def test_list_valued_keys_are_channels_in_validate_train_and_predict(tiny_phantom: Path, tmp_path: Path) -> None:
    datalist = _monai_datalist(tiny_phantom, tmp_path / "monai.json")
    keys = ["--set", "data.source_keys=[image]", "--set", "data.target_key=label"]
    assert _run("validate", str(datalist), "--task", "seg", *keys).exit_code == 0
    result = _run(
        "train", "--task", "seg", "--config", TINY_CONFIG, "--data", str(datalist), "--out", str(tmp_path / "run"), "--steps", "2", *keys
    )
    assert result.exit_code == 0, result.output
    from medp2p.infer import load_model

    model = load_model(tmp_path / "run")
    assert model.prep.n_sources == 2 and model.cfg.data.source_channels == [2] and model.prep.in_channels == 2
    result = _run("predict", "--model", str(tmp_path / "run"), "-i", str(datalist), "-o", str(tmp_path / "pred"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "case_000" / "mask.nii.gz").is_file()
    # a case whose list holds another number of images is named
    bad = json.loads(datalist.read_text())
    bad["training"][1]["image"] = bad["training"][1]["image"][:1]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = _run(
        "train",
        "--task",
        "seg",
        "--config",
        TINY_CONFIG,
        "--data",
        str(tmp_path / "bad.json"),
        "--out",
        str(tmp_path / "run2"),
        "--steps",
        "1",
        *keys,
    )
    assert result.exit_code == 1 and "case 'case_001'" in _error_lines(result.output)[0] and "[1]" in result.output


# --- 3. data.cache_rate ------------------------------------------------------------------------------------


def test_cache_rate_is_refused_in_configs_and_dropped_from_saved_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cache_rate was removed"):
        load_config("mri2ct", None, ["data.cache_rate=0.5"])
    (tmp_path / "c.yaml").write_text("data:\n  cache_rate: 1.0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.cache_rate was removed"):
        load_config("mri2ct", tmp_path / "c.yaml")
    saved = load_config("mri2ct").to_dict()
    saved["data"]["cache_rate"] = 1.0  # a run saved before the key went
    assert config_from_dict(saved).data.image_size == (256, 256)


# --- 4. one rule for mri2ct's optional mask ------------------------------------------------------------------


def test_mri2ct_mask_is_optional_in_validate_and_train(tiny_phantom: Path, tmp_path: Path) -> None:
    data = _copy_phantom(tiny_phantom, tmp_path / "data")
    for cid in ("case_000", "case_001", "case_002"):
        (data / cid / "mask.nii.gz").unlink()
    assert _run("validate", str(data), "--task", "mri2ct").exit_code == 0
    result = _run("train", "--task", "mri2ct", "--config", TINY_CONFIG, "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1")
    assert result.exit_code == 0, result.output
    # seg has no such exemption: a missing target is missing for both
    (data / "case_000" / "tumor.nii.gz").unlink()
    assert _run("validate", str(data), "--task", "seg").exit_code == 1
    result = _run("train", "--task", "seg", "--config", TINY_CONFIG, "--data", str(data), "--out", str(tmp_path / "run2"), "--steps", "1")
    assert result.exit_code == 1 and "'tumor'" in _error_lines(result.output)[0]


# --- 5. layouts: a DICOM series folder, flat folders --------------------------------------------------------


def test_validate_reads_a_dicom_series_folder_as_predict_does(tmp_path: Path) -> None:
    write_series(tmp_path / "MR", np.full((6, 5, 3), 100.0), modality="MR")
    assert _run("validate", str(tmp_path / "MR")).exit_code == 0
    assert _run("validate", str(tmp_path / "MR"), "--task", "mri2ct").exit_code == 0
    (case,) = load_datalist(tmp_path / "MR")["test"]
    assert case["image"] == str((tmp_path / "MR").resolve())


def _vol(path: Path, shape: tuple[int, int, int], value: float = 1.0) -> Path:
    write_nifti(Volume(np.full(shape, value, np.float32), np.eye(4)), path)
    return path


def test_flat_folders_group_by_case_prefix_or_split_into_one_case_per_file(tmp_path: Path) -> None:
    for name, shape in (("brain1", (8, 8, 4)), ("brain2", (6, 6, 3))):  # pyradiomics_brain: two subjects, two grids
        _vol(tmp_path / "pairs" / f"{name}_image.nii.gz", shape, 50.0)
        _vol(tmp_path / "pairs" / f"{name}_label.nii.gz", shape, 1.0)
    cases = load_datalist(tmp_path / "pairs")["training"]
    assert [(c["id"], sorted(k for k in c if k != "id")) for c in cases] == [("brain1", ["image", "label"]), ("brain2", ["image", "label"])]
    result = _run("validate", str(tmp_path / "pairs"))
    assert result.exit_code == 0, result.output  # no grid mismatch between unrelated subjects
    for name, shape in (("patient_a", (8, 8, 4)), ("patient_b", (6, 6, 3)), ("ct_native", (5, 5, 5))):
        _vol(tmp_path / "loose" / f"{name}.nii.gz", shape, 10.0)
    datalist = load_datalist(tmp_path / "loose")
    assert "training" not in datalist and [c["id"] for c in datalist["test"]] == ["ct_native", "patient_a", "patient_b"]
    assert _run("validate", str(tmp_path / "loose")).exit_code == 0
    for key in ("mr", "ct", "mask"):  # files named after keys: one case
        _vol(tmp_path / "one" / f"{key}.nii.gz", (4, 4, 2), 1.0)
    assert [sorted(c) for c in load_datalist(tmp_path / "one")["training"]] == [["ct", "id", "mask", "mr"]]


@pytest.mark.realdata
def test_pyradiomics_brain_is_two_cases() -> None:
    cases = load_datalist(shared("pyradiomics_brain"))["training"]
    assert [c["id"] for c in cases] == ["brain1", "brain2"]
    assert _run("validate", str(shared("pyradiomics_brain"))).exit_code == 0


# --- 6. every option an error message names exists -------------------------------------------------------------


def _all_options() -> set[str]:
    opts = {"--help", "--version", "--debug"}
    for cmd in GROUP.commands.values():
        for p in cmd.params:
            opts.update(p.opts)
            opts.update(p.secondary_opts)
    return opts


def _message_strings() -> list[tuple[Path, str]]:
    """String constants in medp2p's code that are not docstrings (messages, help texts)."""
    found = []
    for path in sorted((ROOT / "medp2p").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docstrings.add(id(first.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found.append((path, node.value))
    return found


def test_every_option_named_in_a_message_exists() -> None:
    real = _all_options()
    named = {}
    for path, text in _message_strings():
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text):
            named.setdefault(option, path.name)
    assert "--series-uid" in named and "--overwrite" in named  # the scan sees the messages
    missing = {o: f for o, f in named.items() if o not in real and not o.startswith("--no-")}
    assert not missing, f"messages name options no command has: {missing}"


def test_several_series_error_names_a_real_option(tmp_path: Path) -> None:
    write_series(tmp_path / "mixed", np.zeros((4, 4, 3)), series_uid="1.2.3.4", prefix="A", modality="MR")
    write_series(tmp_path / "mixed", np.zeros((4, 4, 2)), series_uid="1.2.3.5", prefix="B", modality="MR")
    result = _run("validate", str(tmp_path / "mixed"))
    assert result.exit_code == 1 and "--series-uid" in result.output
    assert _run("validate", str(tmp_path / "mixed"), "--series-uid", "1.2.3.5").exit_code == 0


# --- 7. one overwrite policy ---------------------------------------------------------------------------------------


def test_evaluate_refuses_an_existing_report_without_overwrite(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    assert _run("predict", "--model", str(tiny_runs["seg"]), "-i", str(tiny_phantom), "-o", str(pred)).exit_code == 0
    args = ["evaluate", "--task", "seg", "--pred", str(pred), "--ref", str(tiny_phantom), "-o", str(tmp_path / "report")]
    assert _run(*args).exit_code == 0
    (tmp_path / "report" / "notes.txt").write_text("mine")
    before = (tmp_path / "report" / "summary.json").read_text()
    result = _run(*args)
    assert result.exit_code == 2 and "--overwrite" in _error_lines(result.output)[0]
    assert (tmp_path / "report" / "summary.json").read_text() == before
    assert _run(*args, "--overwrite").exit_code == 0
    assert (tmp_path / "report" / "notes.txt").read_text() == "mine"  # only the report's own files go


# --- 8. missing keys: what the task reads, and the mapping ----------------------------------------------------------


def test_missing_keys_say_what_the_task_reads_and_how_to_map(tiny_phantom: Path, tmp_path: Path) -> None:
    case = tmp_path / "data" / "x"
    case.mkdir(parents=True)
    for src, dest in (("mr", "flair"), ("mr", "t1c"), ("tumor", "label")):
        shutil.copy(tiny_phantom / "case_000" / f"{src}.nii.gz", case / f"{dest}.nii.gz")
    result = _run(
        "train", "--task", "seg", "--config", TINY_CONFIG, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "1"
    )
    (line,) = _error_lines(result.output)
    assert result.exit_code == 1
    assert "case 'x' has no 'mr', 'tumor' (it has flair, label, t1c)" in line and "seg reads sources [mr], target tumor" in line
    assert "--set data.source_keys=[flair,t1c] --set data.target_key=label" in line
    assert "[" in line and "'mr'" in line and "['mr'" not in line  # no Python repr of a list
    fixed = _run(
        "train",
        "--task",
        "seg",
        "--config",
        TINY_CONFIG,
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "1",
        "--set",
        "data.source_keys=[flair,t1c]",
        "--set",
        "data.target_key=label",
        "--set",
        "data.image_size=[16, 16]",
    )
    assert fixed.exit_code == 0, fixed.output


# --- 10. a CT given to an MR model -------------------------------------------------------------------------------


def test_ct_input_to_an_mri2ct_model_is_refused_unless_forced(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    ct = tiny_phantom / "case_000" / "ct.nii.gz"
    result = _run("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(ct), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    (line,) = [x for x in _error_lines(result.output) if x.startswith("failed:")]
    assert "ct.nii.gz" in line and "looks like a CT" in line and "--force" in line
    assert not (tmp_path / "out" / "case_000").exists()
    forced = _run("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(ct), "-o", str(tmp_path / "out"), "--force")
    assert forced.exit_code == 0, forced.output
    ds_dir = tmp_path / "ct_dicom"
    write_series(ds_dir, np.round(read_volume(ct).array), spacing=(6.0, 7.0, 20.0))  # DICOM Modality CT
    result = _run("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(ds_dir), "-o", str(tmp_path / "out2"))
    assert result.exit_code == 1 and "DICOM Modality CT" in result.output


# --- checks where data is read ----------------------------------------------------------------------------------------


def test_non_finite_inputs_are_refused_by_predict_and_evaluate(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    data = _copy_phantom(tiny_phantom, tmp_path / "data", ("case_000",))
    mr = read_volume(data / "case_000" / "mr.nii.gz").array.copy()
    mr[0, 0, :3] = np.nan
    _save_like(data / "case_000" / "mr.nii.gz", data / "case_000" / "mr.nii.gz", mr)
    result = _run("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(data), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    (line,) = [x for x in _error_lines(result.output) if x.startswith("failed:")]
    assert "case_000/mr.nii.gz" in line and "3 NaN/Inf voxel(s)" in line
    assert not (tmp_path / "out" / "case_000").exists()
    # evaluate: a NaN in the prediction is named too
    good = tmp_path / "good"
    assert _run("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(good)).exit_code == 0
    sct = good / "case_001" / "sct.nii.gz"
    arr = read_volume(sct).array.copy()
    arr[1, 1, 1] = np.inf
    _save_like(sct, sct, arr)
    result = _run("evaluate", "--task", "mri2ct", "--pred", str(good), "--ref", str(tiny_phantom), "-o", str(tmp_path / "rep"))
    assert result.exit_code == 1
    assert any("case_001/sct.nii.gz" in x and "1 NaN/Inf voxel(s)" in x for x in _error_lines(result.output))


def test_a_generator_that_outputs_nan_writes_nothing(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    import torch

    from medp2p.infer import load_model, predict_cases

    model = load_model(tiny_runs["mri2ct"])
    with torch.no_grad():
        next(model.generator.parameters()).fill_(float("nan"))
    report = predict_cases(model, [tiny_phantom / "case_000" / "mr.nii.gz"], tmp_path / "out")
    assert report.written == {} and "NaN/Inf" in report.failures[0]["error"]
    assert not (tmp_path / "out" / "case_000").exists()


def test_disagreeing_qform_and_sform_are_refused_unless_one_is_picked(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    data = _copy_phantom(tiny_phantom, tmp_path / "data", ("case_000",))
    mr_path = data / "case_000" / "mr.nii.gz"
    moved = nib.load(mr_path).affine.copy()
    moved[:3, 3] += [10.0, 0.0, 0.0]
    _save_like(mr_path, mr_path, read_volume(mr_path).array, qform=moved)
    args = ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(mr_path), "-o", str(tmp_path / "out")]
    result = _run(*args)
    assert result.exit_code == 1 and "qform and sform disagree" in result.output and "--affine-from" in result.output
    for choice, affine in (("qform", moved), ("sform", nib.load(mr_path).get_sform())):
        result = _run(*args, "--affine-from", choice, "--overwrite")
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(read_volume(tmp_path / "out" / "case_000" / "sct.nii.gz").affine, affine, atol=1e-4)
    assert _run("validate", str(data), "--task", "mri2ct").exit_code == 1
    assert _run("validate", str(data), "--task", "mri2ct", "--affine-from", "qform").exit_code == 1  # the ct and mask sit elsewhere now
    assert _run(*args, "--affine-from", "bogus").exit_code == 2


def test_label_values_outside_the_declared_set_stop_training(tiny_phantom: Path, tmp_path: Path) -> None:
    data = _copy_phantom(tiny_phantom, tmp_path / "data")
    tumor_path = data / "case_001" / "tumor.nii.gz"
    tumor = read_volume(tumor_path).array.copy()
    tumor[2, 2, 2] = 9
    _save_like(tumor_path, tumor_path, tumor)
    result = _run("train", "--task", "seg", "--config", TINY_CONFIG, "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1")
    (line,) = _error_lines(result.output)
    assert result.exit_code == 1 and "case_001/tumor.nii.gz" in line and "label values 9 outside the declared set [0, 1, 2, 3, 4]" in line


def test_images_of_a_case_on_different_grids_are_refused_by_every_command(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    data = _copy_phantom(tiny_phantom, tmp_path / "data", ("case_000",))
    ct = read_volume(data / "case_000" / "ct.nii.gz")
    write_nifti(Volume(ct.array[:, :, :-1].copy(), ct.affine), data / "case_000" / "ct.nii.gz")
    result = _run("train", "--task", "mri2ct", "--config", TINY_CONFIG, "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1")
    assert result.exit_code == 1 and "'ct' is not on the 'mr' grid" in _error_lines(result.output)[0]
    assert _run("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(data), "-o", str(tmp_path / "pred")).exit_code == 0  # needs no ct
    result = _run("evaluate", "--task", "mri2ct", "--pred", str(tmp_path / "pred"), "--ref", str(data), "-o", str(tmp_path / "rep"))
    assert result.exit_code == 1 and "'ct' is not on the 'mr' grid" in result.output


# --- errors: malformed DICOM, decoders, resume, full disks ----------------------------------------------------------------

MALFORMED = {
    "badVR.dcm": "malformed NumberOfFrames value",
    "no_meta.dcm": "no DICOM File Meta header",
    "meta_missing_tsyntax.dcm": "not an image slice",
    "MR_truncated.dcm": "pixel data could not be decoded",
    "ExplVR_BigEndNoMeta.dcm": "not an image slice (RTPLAN)",
    "rtplan_truncated.dcm": "",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_dicom_gives_one_line_naming_the_file(tiny_runs: dict, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(get_testdata_file(name), folder / name)
    result = _run("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(folder), "-o", str(tmp_path / "out"))
    assert result.exit_code in (1, 2), result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1 and "Traceback" not in result.output
    assert name in lines[0] or str(folder) in lines[0]
    assert MALFORMED[name] in lines[0]
    validated = _run("validate", str(folder))
    assert validated.exit_code in (1, 2) and "Traceback" not in validated.output


def test_a_compressed_syntax_without_its_decoder_names_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    folder = tmp_path / "jls"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), folder / "im.dcm")
    assert read_volume(folder).shape == (64, 64, 1)  # decodes with the installed plugins
    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    with pytest.raises(
        Exception,
        match=r"im\.dcm: transfer syntax JPEG-LS Lossless Image Compression \(1\.2\.840\.10008\.1\.2\.4\.80\) "
        r"needs a decoder.*pip install pylibjpeg-libjpeg",
    ):
        read_volume(folder)


def test_resume_of_a_run_whose_data_became_non_finite_or_unreadable(tiny_phantom: Path, tmp_path: Path) -> None:
    data = _copy_phantom(tiny_phantom, tmp_path / "data")
    out = tmp_path / "run"
    assert _run("train", "--task", "mri2ct", "--config", TINY_CONFIG, "--data", str(data), "--out", str(out), "--steps", "2").exit_code == 0
    mr = read_volume(data / "case_001" / "mr.nii.gz").array.copy()
    mr[3, 3, 3] = np.nan
    _save_like(data / "case_001" / "mr.nii.gz", data / "case_001" / "mr.nii.gz", mr)
    before = (out / "last.pt").read_bytes()
    result = _run("train", "--out", str(out), "--resume", "--steps", "4")
    (line,) = _error_lines(result.output)
    assert result.exit_code == 1 and "case_001/mr.nii.gz" in line and "1 NaN/Inf voxel(s)" in line
    (data / "case_002" / "ct.nii.gz").write_bytes(b"not a volume")
    result = _run("train", "--out", str(out), "--resume", "--steps", "4")
    assert result.exit_code == 1 and len(_error_lines(result.output)) == 1
    assert (out / "last.pt").read_bytes() == before


_FSIZE_SCRIPT = """
import resource, sys
from typer.testing import CliRunner
from medp2p.cli import app
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))   # Python ignores SIGXFSZ: writes fail with EFBIG
result = CliRunner().invoke(app, sys.argv[2:])
sys.stdout.write(result.output)
sys.exit(result.exit_code)
"""


def _limited(limit: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _FSIZE_SCRIPT, str(limit), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_a_full_disk_while_predicting_names_the_path_and_leaves_nothing(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run("predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom / "case_000"), "-o", str(out)).exit_code == 0
    earlier = (out / "case_000" / "sct.nii.gz").read_bytes()
    proc = _limited(
        2_000, "predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(out), "--format", "both", "--overwrite"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert "file size limit was reached while writing" in text or "disk is full" in text
    assert str(out) in text and "Traceback" not in text
    assert (out / "case_000" / "sct.nii.gz").read_bytes() == earlier  # the earlier output is intact
    assert not (out / "case_001").exists()  # no empty case folder
    assert not [p for p in out.rglob(".*") if p.name.startswith(".")]  # no temporary files


def test_a_full_disk_while_saving_a_checkpoint_keeps_last_pt(tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        _run("train", "--task", "mri2ct", "--config", TINY_CONFIG, "--data", str(tiny_phantom), "--out", str(out), "--steps", "5").exit_code
        == 0
    )
    before = (out / "last.pt").read_bytes()
    proc = _limited(len(before) // 2, "train", "--out", str(out), "--resume", "--steps", "10")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "last.pt" in text and "file size limit was reached" in text and "Traceback" not in text and "PytorchStreamWriter" not in text
    assert "enforce fail" not in text
    assert (out / "last.pt").read_bytes() == before
    assert not list(out.glob(".last.pt.*"))


# --- library warnings, once per case -----------------------------------------------------------------------------------


def test_library_warnings_are_collected_once_per_case(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pydicom.uid import ImplicitVRLittleEndian

    files = write_series(tmp_path / "MR", np.full((6, 5, 3), 100.0), modality="MR")
    for f in files:  # an explicit-VR body under an implicit-VR transfer syntax: pydicom warns per file
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.preamble = b"\0" * 128
        pydicom.dcmwrite(f, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    keys = CaseKeys(sources=("mr",), task="mri2ct")
    with caplog.at_level("WARNING"):
        case = read_case({"id": "p1", "mr": str(tmp_path / "MR")}, keys, "predict")
    assert case.sources[0].shape == (6, 5, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["case 'p1': Expected implicit VR, but found explicit VR - using explicit VR for reading"]


# --- the newcomer's path -------------------------------------------------------------------------------------------------


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0
    return result.output


@pytest.mark.parametrize("command", sorted(GROUP.commands))
def test_help_reads_like_a_classic_cli(command: str) -> None:
    text = _help(command)
    assert "<bool>" not in text and "<str>" not in text and "<path>" not in text and "list[" not in text
    assert not re.search(r"\{\w+\}", text)  # positionals by name, not {data}
    assert not re.search(r"\S  +\.|\( | \)", text.replace("...", "")), text  # no stray spaces
    for flag in ("--json", "--overwrite", "--resume", "--force", "--quick"):
        assert not re.search(rf"{flag} [A-Z<]", text)  # flags show no value
    assert re.search(r"--\w[\w-]* [A-Z]", text) or command in ("demo", "tasks")


def test_help_of_validate_and_predict_name_their_values() -> None:
    assert "Usage: medp2p validate [OPTIONS] DATA" in _help("validate")
    text = _help("predict")
    assert "-i, --input INPUT" in text and "--batch-size B" in text and "--format FORMAT" in text


def test_run_json_records_what_auto_resolved_to(tiny_runs: dict) -> None:
    import torch

    info = json.loads((tiny_runs["mri2ct"] / "run.json").read_text())["resolved"]
    assert info["device"] == "cpu" and info["precision"] in ("fp32", "bf16") and info["memory_format"] in ("contiguous", "channels_last")
    assert info["threads"] == torch.get_num_threads() and info["torch"] == torch.__version__ and info["cpu_capability"]


def test_a_run_without_validation_says_so(tiny_phantom: Path, tmp_path: Path) -> None:
    result = _run(
        "train", "--task", "mri2ct", "--config", TINY_CONFIG, "--data", str(tiny_phantom), "--out", str(tmp_path / "run"), "--steps", "2"
    )
    assert result.exit_code == 0 and "no validation data, so no best.pt and no previews" in result.output and "--val-data" in result.output


def test_train_without_a_config_warns_how_long_the_default_takes(
    tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medp2p.cli.train_command

    monkeypatch.setattr(medp2p.cli.train_command, "SLOW_DEFAULT_HOURS", 0.0)
    small = [
        "--set",
        "data.image_size=[32, 32]",
        "--set",
        "model.depth=4",
        "--set",
        "model.base_channels=4",
        "--set",
        "model.disc_channels=4",
        "--set",
        "train.tensorboard=false",
    ]
    result = _run("train", "--task", "mri2ct", "--data", str(tiny_phantom), "--out", str(tmp_path / "run"), "--steps", "12", *small)
    assert result.exit_code == 0, result.output
    assert "s per step here: 2000 steps are about" in result.output and "configs/quick.yaml" in result.output
    quiet = _run(
        "train", "--task", "mri2ct", "--config", TINY_CONFIG, "--data", str(tiny_phantom), "--out", str(tmp_path / "run2"), "--steps", "12"
    )
    assert "per step here" not in quiet.output
    assert (ROOT / "configs" / "quick.yaml").is_file()


def test_demo_quick_says_what_it_runs(tmp_path: Path) -> None:
    result = _run("demo", "--out", str(tmp_path / "demo"), "--quick")
    assert result.exit_code == 0, result.output
    assert "30 steps" in result.output and "4 min" not in result.output


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    code = "from medp2p.cli import main; main()"
    bad = ["validate", str(tmp_path / "none"), "--task", "mri2ct"]
    plain = subprocess.run([sys.executable, "-c", code, *bad], capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1
    (tmp_path / "c.yaml").write_text("train: [1, 2]\n")
    internal = subprocess.run(
        [sys.executable, "-c", code, "--debug", "train", "--data", str(tmp_path), "--config", str(tmp_path / "c.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert internal.returncode != 0 and "Traceback" in internal.stderr


def test_read_case_raises_one_error_listing_the_count(tiny_phantom: Path, tmp_path: Path) -> None:
    keys = CaseKeys(sources=("mr",), target="ct", mask="mask", mask_required=True, task="mri2ct")
    with pytest.raises(CaseError, match=r"has no 'ct', 'mask'"):
        read_case({"id": "c", "mr": str(tiny_phantom / "case_000/mr.nii.gz")}, keys, "train")
