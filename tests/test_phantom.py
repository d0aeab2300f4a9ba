"""The synthetic head phantom: deterministic per seed, realistic HU, valid, refuses to clobber."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.data import PhantomSpec, make_phantom_case, validate_data, write_phantom
from medp2p.io import read_volume
from tests.conftest import TINY

KEYS = ("mr", "ct", "mask", "tumor")


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {f"{c.name}/{k}": read_volume(c / f"{k}.nii.gz").array for c in sorted(folder.glob("case_*")) for k in KEYS}


def test_same_seed_same_cases(tmp_path: Path) -> None:
    write_phantom(tmp_path / "a", cases=2, seed=3, spec=TINY)
    write_phantom(tmp_path / "b", cases=2, seed=3, spec=TINY)
    a, b = _arrays(tmp_path / "a"), _arrays(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 8
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_other_seed_or_index_gives_other_cases() -> None:
    base = make_phantom_case(0, 0, TINY)
    assert not np.array_equal(base["mr"].array, make_phantom_case(1, 0, TINY)["mr"].array)
    assert not np.array_equal(base["tumor"].array, make_phantom_case(0, 1, TINY)["tumor"].array)


def test_case_does_not_depend_on_how_many_are_written(tmp_path: Path) -> None:
    write_phantom(tmp_path / "one", cases=1, seed=5, spec=TINY)
    write_phantom(tmp_path / "three", cases=3, seed=5, spec=TINY)
    np.testing.assert_array_equal(
        read_volume(tmp_path / "one/case_000/ct.nii.gz").array, read_volume(tmp_path / "three/case_000/ct.nii.gz").array
    )


def test_phantom_passes_validate(tiny_phantom: Path) -> None:
    report = validate_data(tiny_phantom, required_keys=["mr", "ct", "mask", "tumor"])
    assert report.ok, [str(p) for p in report.problems]
    assert report.cases == 3 and report.files == 12


def test_tissues_have_their_hu_and_the_tumour_is_inside() -> None:
    case = make_phantom_case(0, 0, PhantomSpec((64, 72, 24), (3.0, 3.0, 6.0)))
    ct, mr = case["ct"].array, case["mr"].array
    body, tumor = case["mask"].array > 0, case["tumor"].array > 0
    assert np.median(ct[~body]) == pytest.approx(-1000, abs=15)
    assert ct[body].max() >= 700 and ct.max() <= 3071  # bone
    assert ct.min() >= -1024
    assert np.median(ct[tumor]) == pytest.approx(55, abs=20)
    assert tumor.sum() > 0 and np.all(body[tumor])
    bone = ct > 500
    # Bone and air are both dark on the T1-like MR: no intensity lookup tells them apart.
    brain = (ct > 20) & (ct < 50) & body
    assert np.median(mr[bone]) < 0.4 * np.median(mr[brain])
    assert np.median(mr[~body]) < 0.2 * np.median(mr[brain])


def test_mr_has_bias_and_noise() -> None:
    spec = PhantomSpec((48, 48, 16), (4.0, 4.0, 8.0))
    case = make_phantom_case(0, 2, spec)
    mr = case["mr"].array
    outside = mr[case["mask"].array == 0]
    assert outside.std() > 0 and outside.min() >= 0  # Rician: positive noise floor


def test_written_types_and_geometry(tmp_path: Path) -> None:
    import nibabel as nib

    write_phantom(tmp_path / "p", cases=1, seed=0, spec=TINY)
    dtypes = {k: nib.load(tmp_path / f"p/case_000/{k}.nii.gz").get_data_dtype() for k in KEYS}
    assert dtypes == {"mr": np.float32, "ct": np.int16, "mask": np.uint8, "tumor": np.uint8}
    vol = read_volume(tmp_path / "p/case_000/mr.nii.gz")
    assert vol.shape == TINY.shape and vol.spacing_mm == pytest.approx(TINY.spacing_mm)
    assert (tmp_path / "p/phantom_info.json").is_file()


def test_refuses_existing_folder_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_phantom(tmp_path / "p", cases=1, spec=TINY)
    assert (tmp_path / "p" / "mine.txt").read_text() == "keep me"
    result = CliRunner().invoke(app, ["phantom", str(tmp_path / "p"), "--cases", "1", "--shape", "16", "16", "4"])
    assert result.exit_code == 2 and (tmp_path / "p" / "mine.txt").exists()


def test_failure_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import medp2p.data.phantom as phantom

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(phantom, "write_nifti", boom)
    with pytest.raises(RuntimeError):
        write_phantom(tmp_path / "p", cases=1, spec=TINY)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_then_validate_passes(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ph"
    result = runner.invoke(app, ["phantom", str(out), "--cases", "2", "--seed", "1", "--shape", "24", "20", "6"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["case_000", "case_001", "phantom_info.json"]
    assert runner.invoke(app, ["validate", str(out), "--task", "mri2ct"]).exit_code == 0
