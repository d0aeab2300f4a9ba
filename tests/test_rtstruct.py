"""RTSTRUCT output: dciodvfy-clean, the source's study and frame of reference, contours where the mask is.

Read back two ways: with rt-utils (what users read RTSTRUCTs with; its rasteriser is correct for
square pixels, qurit/rt-utils#92) and with an independent centre-inside rasteriser that works
from the DICOM headers alone (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), which
also covers non-square pixels and non-square images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import rt_utils
from skimage.draw import polygon as fill_polygon
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.io import read_volume
from medp2p.io.rtstruct import slice_contours, write_rtstruct
from medp2p.tasks import TASKS
from medp2p.types import Volume
from tests.conftest import shared
from tests.dicom_helpers import write_series
from tests.test_dicom_output import dciodvfy_errors, mr_series  # noqa: F401 (fixture)

runner = CliRunner()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def rt_utils_masks(series: Path, rtstruct: Path) -> dict[str, np.ndarray]:
    """Each ROI's mask as rt-utils reads it, as ``(X, Y, Z)`` = (column, row, slice in position order)."""
    rt = rt_utils.RTStructBuilder.create_from(str(series), str(rtstruct))
    return {name: rt.get_roi_mask_by_name(name).transpose(1, 0, 2) for name in rt.get_roi_names()}


def header_masks(rtstruct: Path, source: list[pydicom.Dataset]) -> dict[str, np.ndarray]:
    """Each ROI rasterised from the headers: voxels whose centre lies inside its contours (even-odd), ``(X, Y, Z)``."""
    rs = pydicom.dcmread(rtstruct)
    by_uid = {str(ds.SOPInstanceUID): k for k, ds in enumerate(source)}
    cols, rows = int(source[0].Columns), int(source[0].Rows)
    out = {}
    for roi, contour_item in zip(rs.StructureSetROISequence, rs.ROIContourSequence, strict=True):
        assert int(contour_item.ReferencedROINumber) == int(roi.ROINumber)
        mask = np.zeros((cols, rows, len(source)), bool)
        for contour in contour_item.get("ContourSequence", []):
            k = by_uid[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            ds = source[k]
            iop = np.asarray(ds.ImageOrientationPatient, float)
            row_dir, col_dir = iop[:3], iop[3:]
            dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
            pts = np.asarray(contour.ContourData, float).reshape(-1, 3) - np.asarray(ds.ImagePositionPatient, float)
            assert np.abs(pts @ np.cross(row_dir, col_dir)).max() < 1e-3, "a contour off its image's plane"
            i, j = pts @ row_dir / dc, pts @ col_dir / dr  # column index, row index
            plane = np.zeros((cols, rows), bool)
            ii, jj = fill_polygon(i, j, shape=plane.shape)
            plane[ii, jj] = True
            mask[:, :, k] ^= plane
        out[str(roi.ROIName)] = mask
    return out


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Two labels: an ellipsoid with a hole on one slice, and a lone voxel."""
    x, y, z = shape
    ii, jj = np.mgrid[:x, :y]
    m = np.zeros(shape, np.float32)
    for k in range(2, z - 2):
        m[:, :, k] = ((ii - x / 2) ** 2 / (x / 4) ** 2 + (jj - y / 2.2) ** 2 / (y / 5) ** 2) < 1
    m[x // 2 - 2 : x // 2 + 2, y // 2 - 3 : y // 2 - 1, 4] = 0
    m[2, 3, 3] = 2
    return m


def test_contours_of_a_lone_voxel_and_a_ring() -> None:
    plane = np.zeros((7, 7), bool)
    plane[1:6, 1:6] = True
    plane[3, 3] = False
    contours = slice_contours(plane)
    assert len(contours) == 2  # the outline and the hole's
    lone = np.zeros((3, 3), bool)
    lone[1, 1] = True
    (diamond,) = slice_contours(lone)
    assert np.abs(diamond - 1.0).max() < 0.02


def test_oblique_series_reads_back_with_rt_utils_and_from_the_headers(tmp_path: Path) -> None:
    c = 1 / np.sqrt(2)
    col = np.array([-0.5, 0.5, c])
    iop = (c, c, 0.0, *(col / np.linalg.norm(col)))
    series = tmp_path / "oblique"
    write_series(series, np.full((40, 40, 12), 300.0), spacing=(0.9, 0.9, 2.0), iop=iop, modality="MR")
    mr = read_volume(series)
    labels = _labels(mr.shape)
    path = write_rtstruct(Volume(labels, mr.affine), tmp_path / "rt.dcm", mr, names={1: "Tumour", 2: "Spot"}, software_version="t")
    assert dciodvfy_errors(path) == []
    rs = pydicom.dcmread(path)
    src = mr.meta["dicom_datasets"][0]
    assert rs.Modality == "RTSTRUCT" and rs.StudyInstanceUID == src.StudyInstanceUID
    assert rs.FrameOfReferenceUID == src.FrameOfReferenceUID == rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert [r.ROIName for r in rs.StructureSetROISequence] == ["Tumour", "Spot"]
    for item in rs.ROIContourSequence:
        for contour in item.ContourSequence:
            assert all(len(str(v)) <= 16 for v in contour.ContourData)
    back = rt_utils_masks(series, path)
    headers = header_masks(path, mr.meta["dicom_datasets"])
    for value, name in ((1, "Tumour"), (2, "Spot")):
        ref = labels == value
        assert dice(back[name], ref) >= 0.95, name
        assert dice(headers[name], ref) >= 0.99, name


def test_non_square_pixels_and_image_land_where_the_mask_is(tmp_path: Path) -> None:
    # rt-utils gets this geometry wrong (qurit/rt-utils#92); the header rasteriser checks it
    series = tmp_path / "aniso"
    write_series(series, np.full((36, 28, 10), 300.0), spacing=(0.7, 1.3, 3.0), iop=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), modality="MR")
    mr = read_volume(series)
    labels = _labels(mr.shape)
    path = write_rtstruct(Volume(labels, mr.affine), tmp_path / "rt.dcm", mr, names={1: "Tumour", 2: "Spot", 3: "Absent"})
    assert dciodvfy_errors(path) == []
    headers = header_masks(path, mr.meta["dicom_datasets"])
    assert dice(headers["Tumour"], labels == 1) >= 0.99 and dice(headers["Spot"], labels == 2) == 1.0
    assert not headers["Absent"].any()  # a named label with no voxels: an ROI without contours


def test_a_nifti_source_is_refused(tmp_path: Path, tiny_phantom: Path) -> None:
    mr = read_volume(tiny_phantom / "case_001/mr.nii.gz")
    with pytest.raises(ValueError, match="must reference a DICOM source series"):
        write_rtstruct(Volume(np.zeros(mr.shape, np.float32), mr.affine), tmp_path / "rt.dcm", mr)
    assert not (tmp_path / "rt.dcm").exists()


def test_formats_ask_the_task() -> None:
    assert TASKS["seg"].outputs_for("rtstruct")[0] is False
    assert [o.name for o in TASKS["seg"].outputs_for("all")[1]] == ["mask_seg.dcm", "mask_rtstruct.dcm"]
    assert [o.name for o in TASKS["mri2ct"].outputs_for("all")[1]] == ["sct_dicom"]
    assert TASKS["inpaint"].outputs_for("all") == (True, ())
    with pytest.raises(ValueError, match="mri2ct task has no rtstruct output"):
        TASKS["mri2ct"].outputs_for("rtstruct")


def test_predict_format_rtstruct_and_all(tiny_runs: dict, mr_series: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["seg"]), "-i", str(mr_series), "-o", str(out), "--format", "rtstruct"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "patient").iterdir()) == ["mask_rtstruct.dcm"]
    result = runner.invoke(
        app, ["predict", "--model", str(tiny_runs["seg"]), "-i", str(mr_series), "-o", str(out), "--format", "all", "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    case = out / "patient"
    assert sorted(p.name for p in case.iterdir()) == ["mask.nii.gz", "mask_rtstruct.dcm", "mask_seg.dcm"]
    assert dciodvfy_errors(case / "mask_rtstruct.dcm") == []
    mask = read_volume(case / "mask.nii.gz").array > 0
    src = read_volume(mr_series)
    headers = header_masks(case / "mask_rtstruct.dcm", src.meta["dicom_datasets"])
    assert list(headers) == ["Tumour"] and dice(headers["Tumour"], mask) >= 0.99


def test_rtstruct_for_mri2ct_is_a_usage_error(tiny_runs: dict, mr_series: Path, tmp_path: Path) -> None:  # noqa: F811
    result = runner.invoke(
        app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(mr_series), "-o", str(tmp_path / "o"), "--format", "rtstruct"]
    )
    assert result.exit_code == 2 and "the mri2ct task has no rtstruct output" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.realdata
def test_real_mr_series_rtstruct_reads_back(tmp_path: Path) -> None:
    from scipy.ndimage import gaussian_filter

    from medp2p.io import write_nifti

    folder = shared("vs_seg_mr_dicom")
    mr = read_volume(folder)
    # irregular structures with holes and islands on the real 512x512 grid (about a thousand
    # contours): the smoothed MR above its 85th percentile, kept as a NIfTI on the source grid
    smooth = gaussian_filter(mr.array, 2.0)
    nifti = write_nifti(
        Volume((smooth > np.percentile(smooth, 85)).astype(np.float32), mr.affine), tmp_path / "mask.nii.gz", dtype=np.uint8
    )
    mask = read_volume(nifti)
    path = write_rtstruct(mask, tmp_path / "mask_rtstruct.dcm", mr, names={1: "Bright"})
    assert dciodvfy_errors(path) == []
    rs = pydicom.dcmread(path)
    src = mr.meta["dicom_datasets"][0]
    assert rs.StudyInstanceUID == src.StudyInstanceUID and rs.PatientID == src.PatientID
    assert rs.FrameOfReferenceUID == src.FrameOfReferenceUID
    ref = mask.array > 0
    assert dice(rt_utils_masks(folder, path)["Bright"], ref) >= 0.95
    assert dice(header_masks(path, mr.meta["dicom_datasets"])["Bright"], ref) >= 0.99
