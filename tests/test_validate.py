"""`medp2p validate`: each problem is reported on one line naming the file, with the right exit code."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.data import validate_data
from tests.dicom_helpers import write_series

runner = CliRunner()
AFFINE = np.diag([1.0, 1.2, 2.0, 1.0])


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def _good_case(root: Path, name: str = "c0") -> Path:
    """A clean mri2ct case: mr, ct, mask (and tumor) on one 8x8x4 grid."""
    rng = np.random.default_rng(0)
    folder = root / name
    mask = np.zeros((8, 8, 4))
    mask[2:6, 2:6, :] = 1
    _save(folder / "mr.nii.gz", rng.uniform(0, 100, (8, 8, 4)))
    _save(folder / "ct.nii.gz", rng.integers(-1000, 1000, (8, 8, 4)), dtype=np.int16)
    _save(folder / "mask.nii.gz", mask, dtype=np.uint8)
    return folder


def _validate(data: Path, *extra: str):
    return runner.invoke(app, ["validate", str(data), "--task", "mri2ct", *extra])


def test_clean_dataset_exits_zero(tmp_path: Path) -> None:
    _good_case(tmp_path / "data")
    _good_case(tmp_path / "data", "c1")
    result = _validate(tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "2 case(s), 6 file(s) checked: no problems" in result.output


def _corrupt_truncated(folder: Path) -> tuple[str, str]:
    path = folder / "ct.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-64]))
    return "ct.nii.gz", "truncated or corrupt"


def _corrupt_garbage(folder: Path) -> tuple[str, str]:
    (folder / "mr.nii.gz").write_bytes(b"this is not an image")
    return "mr.nii.gz", "not a readable NIfTI"


def _corrupt_nan(folder: Path) -> tuple[str, str]:
    arr = nib.load(folder / "mr.nii.gz").get_fdata()
    arr[1, 1, 1] = np.nan
    arr[2, 2, 2] = np.inf
    _save(folder / "mr.nii.gz", arr)
    return "mr.nii.gz", "2 NaN/Inf voxel"


def _corrupt_shear(folder: Path) -> tuple[str, str]:
    sheared = AFFINE.copy()
    sheared[0, 1] = 0.4
    img = nib.Nifti1Image(nib.load(folder / "mr.nii.gz").get_fdata().astype(np.float32), sheared)
    img.set_sform(sheared, code=1)
    img.set_qform(sheared, code=0)  # a qform cannot hold shear
    nib.save(img, folder / "mr.nii.gz")
    return "mr.nii.gz", "sheared affine"


def _corrupt_qform(folder: Path) -> tuple[str, str]:
    img = nib.load(folder / "mr.nii.gz")
    moved = AFFINE.copy()
    moved[:3, 3] = [5.0, 0.0, 0.0]
    img = nib.Nifti1Image(img.get_fdata().astype(np.float32), AFFINE)
    img.set_sform(AFFINE, code=1)
    img.set_qform(moved, code=1)
    nib.save(img, folder / "mr.nii.gz")
    return "mr.nii.gz", "qform and sform disagree"


def _corrupt_shape(folder: Path) -> tuple[str, str]:
    _save(folder / "ct.nii.gz", np.zeros((8, 8, 5)), dtype=np.int16)
    return "ct.nii.gz", r"'ct' is not on the 'mr' grid of .*mr\.nii\.gz: shape \(8, 8, 5\) != \(8, 8, 4\)"


def _corrupt_spacing(folder: Path) -> tuple[str, str]:
    _save(folder / "mask.nii.gz", np.ones((8, 8, 4)), np.diag([1.0, 1.2, 2.5, 1.0]), dtype=np.uint8)
    return "mask.nii.gz", r"spacing .* mm != "


def _corrupt_origin(folder: Path) -> tuple[str, str]:
    moved = AFFINE.copy()
    moved[:3, 3] = [0.0, 0.5, 0.0]
    _save(folder / "ct.nii.gz", np.zeros((8, 8, 4)), moved, dtype=np.int16)
    return "ct.nii.gz", r"origin .* is 0\.500 mm from"


def _corrupt_direction(folder: Path) -> tuple[str, str]:
    flipped = AFFINE @ np.diag([-1.0, 1.0, 1.0, 1.0])
    _save(folder / "ct.nii.gz", np.zeros((8, 8, 4)), flipped, dtype=np.int16)
    return "ct.nii.gz", "direction differs"


def _corrupt_labels(folder: Path) -> tuple[str, str]:
    mask = np.zeros((8, 8, 4))
    mask[1, 1, 1], mask[2, 2, 2] = 1, 7
    _save(folder / "mask.nii.gz", mask, dtype=np.uint8)
    return "mask.nii.gz", r"label values 7 outside the declared set \[0, 1\]"


def _corrupt_empty(folder: Path) -> tuple[str, str]:
    _save(folder / "mask.nii.gz", np.zeros((8, 8, 4)), dtype=np.uint8)
    return "mask.nii.gz", "empty mask"


def _corrupt_missing(folder: Path) -> tuple[str, str]:
    (folder / "ct.nii.gz").unlink()
    return "c0", "case 'c0' has no 'ct' .*mri2ct reads sources \\[mr\\], target ct"


def _corrupt_dicom(folder: Path) -> tuple[str, str]:
    (folder / "ct.nii.gz").unlink()
    hu = nib.load(folder / "mr.nii.gz").get_fdata()
    files = write_series(folder / "ct", np.round(hu), spacing=(1.2, 1.0, 2.0))
    files[2].unlink()
    return files[3].name, "1 slice\\(s\\) missing"


PROBLEMS = {
    "truncated": (_corrupt_truncated, "unreadable"),
    "garbage": (_corrupt_garbage, "unreadable"),
    "non_finite": (_corrupt_nan, "non_finite"),
    "sheared": (_corrupt_shear, "sheared_affine"),
    "qform_sform": (_corrupt_qform, "qform_sform"),
    "grid_shape": (_corrupt_shape, "grid_mismatch"),
    "grid_spacing": (_corrupt_spacing, "grid_mismatch"),
    "grid_origin": (_corrupt_origin, "grid_mismatch"),
    "grid_direction": (_corrupt_direction, "grid_mismatch"),
    "label_values": (_corrupt_labels, "label_values"),
    "empty_mask": (_corrupt_empty, "empty_mask"),
    "missing_key": (_corrupt_missing, "missing_key"),
    "dicom_gap": (_corrupt_dicom, "dicom"),
}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_each_problem_is_reported_with_its_file(tmp_path: Path, name: str) -> None:
    corrupt, check = PROBLEMS[name]
    _good_case(tmp_path / "data", "ok")
    file, message = corrupt(_good_case(tmp_path / "data"))
    result = _validate(tmp_path / "data")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    hits = [line for line in lines if file in line]
    assert hits, result.output
    assert any(__import__("re").search(message, line) for line in hits), result.output
    assert not any("/ok/" in line for line in lines), "the clean case must not be blamed"
    report = json.loads(_validate(tmp_path / "data", "--json").stdout)
    assert report["ok"] is False and check in {p["check"] for p in report["problems"]}


def test_json_report_of_a_clean_dataset(tmp_path: Path) -> None:
    _good_case(tmp_path / "data")
    result = _validate(tmp_path / "data", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"ok": True, "cases": 1, "files": 3, "problems": []}


def test_usage_errors_exit_two(tmp_path: Path) -> None:
    assert _validate(tmp_path / "absent").exit_code == 2
    (tmp_path / "empty").mkdir()
    result = _validate(tmp_path / "empty")
    assert result.exit_code == 2 and "no cases found" in result.output
    _good_case(tmp_path / "data")
    assert runner.invoke(app, ["validate", str(tmp_path / "data"), "--task", "nope"]).exit_code == 2


def test_declared_label_values_are_used(tmp_path: Path) -> None:
    folder = _good_case(tmp_path / "data")
    tumour = np.zeros((8, 8, 4))
    tumour[3, 3, 1], tumour[4, 4, 1] = 2, 4
    _save(folder / "tumor.nii.gz", tumour, dtype=np.uint8)
    assert validate_data(tmp_path / "data", ["mr"]).ok  # BraTS labels 0..4 are the default set
    datalist = {
        "training": [{"id": "c0", **{k: f"data/c0/{k}.nii.gz" for k in ("mr", "ct", "mask", "tumor")}}],
        "label_values": {"tumor": [0, 1]},
    }
    (tmp_path / "list.json").write_text(json.dumps(datalist))
    report = validate_data(tmp_path / "list.json", ["mr"])
    assert [p.check for p in report.problems] == ["label_values"]


def test_test_section_needs_only_its_own_keys(tmp_path: Path) -> None:
    folder = _good_case(tmp_path / "data")
    shutil.copy(folder / "mr.nii.gz", tmp_path / "test_mr.nii.gz")
    datalist = {
        "training": [{"id": "c0", "mr": "data/c0/mr.nii.gz", "ct": "data/c0/ct.nii.gz", "mask": "data/c0/mask.nii.gz"}],
        "test": [{"id": "t0", "mr": "test_mr.nii.gz"}],
    }
    (tmp_path / "list.json").write_text(json.dumps(datalist))
    assert _validate(tmp_path / "list.json").exit_code == 0
