"""DICOM series reading: sorting, per-slice rescale, geometry equal to SimpleITK's, broken series named."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medp2p.io import DicomSeriesError, affine_from_itk, list_dicom_series, read_volume
from tests.conftest import shared
from tests.dicom_helpers import write_series


def sitk_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array (X, Y, Z), RAS affine) of the one series in ``folder`` as SimpleITK reads it."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    affine = affine_from_itk(np.asarray(img.GetOrigin()), np.asarray(img.GetSpacing()), direction)
    return sitk.GetArrayFromImage(img).T.astype(np.float32), affine


@pytest.fixture
def hu(rng: np.random.Generator) -> np.ndarray:
    return np.round(rng.uniform(-1024, 2000, (10, 12, 6))).astype(np.float32)


@pytest.mark.parametrize(
    "iop",
    [
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # axial
        (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # coronal
        (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal
        (0.8, 0.0, -0.6, 0.0, 1.0, 0.0),  # oblique (exactly unit: a 3-4-5 triangle)
    ],
)
def test_series_matches_simpleitk(tmp_path: Path, hu: np.ndarray, iop: tuple[float, ...]) -> None:
    write_series(tmp_path / "ct", hu, iop=iop)
    vol = read_volume(tmp_path / "ct")
    ref_array, ref_affine = sitk_series(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_array_equal(vol.array, ref_array)
    np.testing.assert_allclose(vol.affine, ref_affine, atol=1e-4)
    assert vol.meta["format"] == "dicom" and len(vol.meta["dicom_datasets"]) == hu.shape[2]


def test_one_file_reads_its_whole_series(tmp_path: Path, hu: np.ndarray) -> None:
    files = write_series(tmp_path / "ct", hu)
    np.testing.assert_array_equal(read_volume(files[3]).array, hu)


def test_per_slice_rescale_gives_hu(tmp_path: Path, hu: np.ndarray) -> None:
    slopes = [1.0, 2.0, 0.5, 1.0, 4.0, 1.0]
    hu = np.round(hu / 4) * 4  # representable with every slope
    write_series(tmp_path / "ct", hu, slopes=slopes)
    np.testing.assert_array_equal(read_volume(tmp_path / "ct").array, hu)


def test_missing_slice_is_named(tmp_path: Path, hu: np.ndarray) -> None:
    files = write_series(tmp_path / "ct", hu)
    files[3].unlink()
    with pytest.raises(DicomSeriesError, match=rf"gap of 5\.000 mm after {files[2].name}.*1 slice\(s\) missing"):
        read_volume(tmp_path / "ct")


def test_duplicate_slice_is_named(tmp_path: Path, hu: np.ndarray) -> None:
    files = write_series(tmp_path / "ct", hu)
    (tmp_path / "ct" / "copy.dcm").write_bytes(files[2].read_bytes())
    with pytest.raises(DicomSeriesError, match="duplicate slice"):
        read_volume(tmp_path / "ct")


def test_uneven_spacing_is_refused(tmp_path: Path, hu: np.ndarray) -> None:
    z = np.array([0.0, 2.5, 5.0, 7.6, 10.0, 12.5])
    positions = [np.array([0.0, 0.0, v]) for v in z]
    write_series(tmp_path / "ct", hu, positions=positions)
    with pytest.raises(DicomSeriesError, match="uneven slice spacing"):
        read_volume(tmp_path / "ct")


def test_several_series_are_listed_and_one_can_be_picked(tmp_path: Path, hu: np.ndarray) -> None:
    write_series(tmp_path / "mixed", hu, series_uid="1.2.3.4", prefix="A")
    write_series(tmp_path / "mixed", hu[:, :, :4] + 1, series_uid="1.2.3.5", prefix="B")
    with pytest.raises(DicomSeriesError, match=r"holds 2 DICOM series.*1\.2\.3\.4.*6 files.*1\.2\.3\.5.*4 files"):
        read_volume(tmp_path / "mixed")
    assert [s.uid for s in list_dicom_series(tmp_path / "mixed")] == ["1.2.3.4", "1.2.3.5"]
    np.testing.assert_array_equal(read_volume(tmp_path / "mixed", series_uid="1.2.3.5").array, hu[:, :, :4] + 1)


def test_non_dicom_files_are_skipped_and_said(tmp_path: Path, hu: np.ndarray, caplog) -> None:
    write_series(tmp_path / "ct", hu)
    (tmp_path / "ct" / "README.txt").write_text("not dicom")
    (tmp_path / "ct" / ".DS_Store").write_bytes(b"\0\1\2")
    with caplog.at_level(logging.WARNING):
        vol = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array, hu)
    assert "skipped 2 file(s)" in caplog.text and "README.txt" in caplog.text


def test_corrupt_pixel_data_names_the_file(tmp_path: Path, hu: np.ndarray) -> None:
    files = write_series(tmp_path / "ct", hu)
    files[1].write_bytes(files[1].read_bytes()[:-50])
    with pytest.raises(Exception, match=files[1].name):
        read_volume(tmp_path / "ct")


def test_padding_value_and_range_become_air_on_ct(tmp_path: Path, hu: np.ndarray) -> None:
    import pydicom

    hu[0, :, :] = -2000.0  # stored -976 with intercept -1024
    hu[1, :, :] = -1990.0
    files = write_series(tmp_path / "ct", hu)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.add_new(0x00280120, "SS", -976)  # PixelPaddingValue, in stored values
        ds.add_new(0x00280121, "SS", -966)  # PixelPaddingRangeLimit (0028,0121): inclusive
        ds.save_as(f)
    vol = read_volume(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array[:2], -1024.0)
    np.testing.assert_array_equal(vol.array[2:], hu[2:])
    assert vol.meta["padding_voxels"] == 2 * hu.shape[1] * hu.shape[2]


def test_empty_folder_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("x")
    with pytest.raises(Exception, match="no DICOM image files"):
        read_volume(tmp_path / "empty")


@pytest.mark.realdata
@pytest.mark.parametrize(
    "parts, hu_range",
    [
        (("totalseg_examples", "example_ct_dicom"), (-1024.0, 1839.0)),
        # GE: PixelPaddingValue -1024 (stored) outside the reconstruction circle, -2048 HU rescaled
        (("mridir_phantom", "dicom_ct_subset"), (-1024.0, 4000.0)),
    ],
)
def test_real_ct_series_agree_with_simpleitk(parts: tuple[str, str], hu_range: tuple[float, float]) -> None:
    folder = shared(*parts)
    vol = read_volume(folder)
    ref_array, ref_affine = sitk_series(folder)
    assert vol.shape == ref_array.shape
    padded = ref_array == -2048.0  # SimpleITK leaves the padding in (stored -1024, intercept -1024)
    assert (vol.meta["padding_voxels"] > 0) == padded.any() and vol.meta["padding_voxels"] == padded.sum()
    np.testing.assert_array_equal(vol.array[padded], -1024.0)  # padding becomes air
    np.testing.assert_allclose(vol.array[~padded], ref_array[~padded], atol=1e-3)
    np.testing.assert_allclose(vol.affine, ref_affine, atol=1e-4)
    assert hu_range[0] <= vol.array.min() and vol.array.max() <= hu_range[1]
    assert vol.array.min() <= -1000  # air in HU: the rescale intercept was applied


@pytest.mark.realdata
def test_real_mr_series_agrees_with_simpleitk() -> None:
    folder = shared("vs_seg_mr_dicom")
    vol = read_volume(folder)
    ref_array, ref_affine = sitk_series(folder)
    assert vol.shape == (512, 512, 24)
    np.testing.assert_array_equal(vol.array, ref_array)
    np.testing.assert_allclose(vol.affine, ref_affine, atol=1e-4)
