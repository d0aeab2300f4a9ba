"""DICOM outputs: a synthetic CT series in the MR's study, a standalone series from NIfTI, a DICOM SEG.

Each passes dciodvfy (dicom3tools) without errors and reads back with SimpleITK to the same
geometry and values.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.io import read_volume
from tests.conftest import shared
from tests.dicom_helpers import write_series
from tests.test_io_dicom import sitk_series

runner = CliRunner()


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy prints for one file (warnings are allowed)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture
def mr_series(tmp_path: Path, tiny_phantom: Path) -> Path:
    mr = read_volume(tiny_phantom / "case_001/mr.nii.gz").array
    folder = tmp_path / "patient" / "MR"
    write_series(folder, np.round(mr), spacing=(6.0, 7.0, 20.0), modality="MR", iop=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    return folder


def _check_ct_series(series: Path, source: Path | None, sct_nifti: Path) -> None:
    files = sorted(series.glob("*.dcm"))
    out = [pydicom.dcmread(f) for f in files]
    src = read_volume(source) if source is not None else None
    src_ds = src.meta["dicom_datasets"] if src is not None else None
    for f in files[:3] + files[-1:]:
        assert dciodvfy_errors(f) == [], f
    assert len({d.SeriesInstanceUID for d in out}) == 1
    assert len({d.SOPInstanceUID for d in out}) == len(out)
    for d in out:
        assert d.SOPClassUID == pydicom.uid.CTImageStorage and d.Modality == "CT"
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "synthetic" in d.SeriesDescription.lower()
        assert d.PixelRepresentation == 1 and float(d.RescaleSlope) == 1 and float(d.RescaleIntercept) == 0
    if src_ds is not None:
        assert len(out) == len(src_ds)
        assert out[0].SeriesInstanceUID != src_ds[0].SeriesInstanceUID
        by_ref = {d.SourceImageSequence[0].ReferencedSOPInstanceUID: d for d in out}
        for s in src_ds:
            d = by_ref[s.SOPInstanceUID]  # each CT instance references its MR slice
            for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
                assert np.allclose(
                    np.atleast_1d(d.data_element(key).value).astype(float), np.atleast_1d(s.data_element(key).value).astype(float)
                ), key
            for key in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
                assert str(d.get(key)) == str(s.get(key)), key
            assert d.ReferencedSeriesSequence[0].SeriesInstanceUID == s.SeriesInstanceUID
    array, affine = sitk_series(series)
    sct = read_volume(sct_nifti)
    np.testing.assert_allclose(affine, sct.affine, atol=1e-4)
    np.testing.assert_allclose(array, np.round(sct.array), atol=0.5)


def test_ct_series_from_a_dicom_mr_series(tiny_runs: dict, mr_series: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(mr_series), "-o", str(out), "--format", "both"])
    assert result.exit_code == 0, result.output
    _check_ct_series(out / "patient" / "sct_dicom", mr_series, out / "patient" / "sct.nii.gz")
    # the NIfTI is on the MR series' grid
    np.testing.assert_allclose(read_volume(out / "patient" / "sct.nii.gz").affine, read_volume(mr_series).affine, atol=1e-4)


def test_standalone_ct_series_from_nifti(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    mr = tiny_phantom / "case_000/mr.nii.gz"
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(mr), "-o", str(out), "--format", "both"])
    assert result.exit_code == 0, result.output
    _check_ct_series(out / "case_000" / "sct_dicom", None, out / "case_000" / "sct.nii.gz")
    # --overwrite replaces the series folder as a whole
    first = {pydicom.dcmread(f).SeriesInstanceUID for f in (out / "case_000" / "sct_dicom").glob("*.dcm")}
    result = runner.invoke(
        app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(mr), "-o", str(out), "--format", "dicom", "--overwrite"]
    )
    assert result.exit_code == 0
    second = {pydicom.dcmread(f).SeriesInstanceUID for f in (out / "case_000" / "sct_dicom").glob("*.dcm")}
    assert len(second) == 1 and second != first
    assert not [p for p in (out / "case_000").iterdir() if p.name.startswith(".")]


def test_dicom_seg_references_the_source_series(tiny_runs: dict, mr_series: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["seg"]), "-i", str(mr_series), "-o", str(out), "--format", "both"])
    assert result.exit_code == 0, result.output
    seg_path = out / "patient" / "mask_seg.dcm"
    assert dciodvfy_errors(seg_path) == []
    seg = pydicom.dcmread(seg_path)
    src = read_volume(mr_series)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == src.meta["dicom_datasets"][0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.meta["series_uid"]
    import highdicom as hd

    dseg = hd.seg.Segmentation.from_dataset(seg)
    uids = [(s.SeriesInstanceUID, s.SOPInstanceUID) for s in src.meta["dicom_datasets"]]
    frames = dseg.get_pixels_by_source_instance(
        source_sop_instance_uids=[u for _, u in uids], segment_numbers=[1], ignore_spatial_locations=True
    )[..., 0]
    mask = read_volume(out / "patient" / "mask.nii.gz").array
    np.testing.assert_array_equal(frames, mask.transpose(2, 1, 0) > 0)


def test_seg_dicom_from_nifti_fails_clearly(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(tiny_runs["seg"]),
            "-i",
            str(tiny_phantom / "case_000/mr.nii.gz"),
            "-o",
            str(tmp_path),
            "--format",
            "dicom",
        ],
    )
    assert result.exit_code == 1 and "DICOM SEG must reference a DICOM source series" in result.output
    result = runner.invoke(
        app, ["predict", "--model", str(tiny_runs["inpaint"]), "-i", str(tiny_phantom), "-o", str(tmp_path), "--format", "dicom"]
    )
    assert result.exit_code == 2 and "the inpaint task has no dicom output" in result.output


@pytest.mark.realdata
def test_real_mr_series_gives_a_valid_ct_series(tiny_runs: dict, tmp_path: Path) -> None:
    folder = shared("vs_seg_mr_dicom")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(folder), "-o", str(out), "--format", "both"])
    assert result.exit_code == 0, result.output
    _check_ct_series(out / "vs_seg_mr_dicom" / "sct_dicom", folder, out / "vs_seg_mr_dicom" / "sct.nii.gz")
