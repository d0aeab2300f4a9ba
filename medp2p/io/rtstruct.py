"""Writing a label map as a DICOM RT Structure Set (RTSTRUCT) referencing its source series.

A treatment-planning system reads structures as planar contours in patient coordinates, one set
per slice of the image series they were drawn on. :func:`write_rtstruct` writes one ROI per
label, in the source series' study and frame of reference, with a contour per connected region
(and per hole) on every slice.

Why not rt-utils' writer: it takes the pixel-to-patient matrix with ``PixelSpacing[0]`` on the
column axis (wrong for non-square pixels, qurit/rt-utils#92, open), writes DS values over 16
characters and no top-level FrameOfReferenceUID or type 2 attributes (about 40 ``dciodvfy``
errors). Here the geometry is the one the reader verified (``Volume.affine``), and the header
passes ``dciodvfy``. rt-utils reads these files back (the tests do). The transfer syntax is implicit
VR little endian, as rt-utils' is: one long contour's ContourData can pass the 64 KiB an
explicit-VR DS element holds.

Contour convention: each contour runs 0.01 voxel outside the centres of the region's boundary
voxels (marching squares at level 0.99), the convention of rt-utils and TotalSegmentator, so a
planning system that fills the voxels whose centres lie inside the contour, or rt-utils'
rasteriser, gets the mask back voxel for voxel. The contour is thus half a voxel inside the
mask's outer edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from medp2p.io.atomic import atomic_path
from medp2p.io.dicom_write import _base_dataset, _copy_patient_study, _fmt_ds, _instance_ref
from medp2p.io.errors import disk_full_cause, disk_full_error
from medp2p.types import Volume

#: Where a contour runs between a boundary voxel's centre (1) and its outside neighbour's (0).
CONTOUR_LEVEL = 0.99

#: Display colours of ROIs 1, 2, ... (RGB), repeated past the end.
COLOURS = ((255, 0, 0), (0, 200, 0), (0, 100, 255), (255, 200, 0), (200, 0, 255), (0, 220, 220))


def slice_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D 0/1 mask indexed ``(i, j)``, as ``(n, 2)`` voxel coordinates.

    Each region's outline and each hole's outline is one contour (first point not repeated at the
    end), with collinear points dropped (lossless); a lone voxel gives a small diamond around its
    centre.
    """
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(mask2d.astype(np.float32), 1)
    contours = []
    for c in find_contours(padded, CONTOUR_LEVEL):
        c = approximate_polygon(c, tolerance=1e-3) - 1.0
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        if len(c) >= 3:
            contours.append(c)
    return contours


def _lps_points(affine: np.ndarray, ij: np.ndarray, k: int) -> np.ndarray:
    """Voxel ``(i, j, k)`` points -> patient LPS millimetres (the affine is RAS+)."""
    vox = np.column_stack([ij, np.full(len(ij), float(k)), np.ones(len(ij))])
    ras: np.ndarray = vox @ affine.T
    lps: np.ndarray = ras[:, :3] * np.array([-1.0, -1.0, 1.0])
    return lps


def write_rtstruct(
    labels: Volume,
    path: str | Path,
    source: Volume,
    names: Mapping[int, str] | None = None,
    series_description: str = "Predicted structures (medp2p)",
    software_version: str = "",
) -> Path:
    """Write a label map as an RTSTRUCT referencing the DICOM series it was predicted from, atomically.

    Args:
        labels: integer label map (0 = background) on ``source``'s grid.
        path: the ``.dcm`` file to write.
        source: the input volume read from a DICOM series (needs ``meta["dicom_datasets"]``).
        names: ROI name per label value; labels not named are called ``label_<n>``. Every
            label in ``names`` gets an ROI (with no contours when absent from the map).
        series_description: SeriesDescription of the new series.
        software_version: SoftwareVersions.

    Raises:
        ValueError: ``source`` was not read from a DICOM series, or the grids differ.

    Example:
        >>> write_rtstruct(mask, "out/patient_01/mask_rtstruct.dcm", source=mr, names={1: "Tumour"})
    """
    path = Path(path)
    src_ds = source.meta.get("dicom_datasets")
    if not src_ds:
        raise ValueError(f"{path}: an RTSTRUCT must reference a DICOM source series; this input was not DICOM (write NIfTI instead)")
    if len(src_ds) != labels.shape[2] or labels.shape != source.shape:
        raise ValueError(f"{path}: the label map's grid {labels.shape} is not the source series' {source.shape}")
    values = np.rint(labels.array).astype(np.int64)
    rois = sorted({int(v) for v in np.unique(values) if v > 0} | set(names or {}))
    ref = src_ds[0]
    frame_uid = str(ref.get("FrameOfReferenceUID") or "")
    if not frame_uid:
        raise ValueError(f"{path}: the source series has no FrameOfReferenceUID; contours cannot be placed in it")
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    # implicit VR: a long contour's ContourData passes 64 KiB, more than an explicit-VR DS element holds
    ds = _base_dataset(generate_uid(), RTStructureSetStorage, ImplicitVRLittleEndian)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    _copy_patient_study(ds, ref)
    # RT Series, General Equipment, Frame of Reference
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9003
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.Manufacturer = "medp2p"
    ds.ManufacturerModelName = "pix2pix segmentation"
    ds.SoftwareVersions = software_version or "0"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ref.get("PositionReferenceIndicator", "")
    # Structure Set: the frame of reference, study, series and every image the contours lie on
    ds.StructureSetLabel = "medp2p"
    ds.StructureSetName = "predicted"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.InstanceNumber = 1
    series_item = Dataset()
    series_item.SeriesInstanceUID = ref.SeriesInstanceUID
    series_item.ContourImageSequence = Sequence([_instance_ref(s) for s in src_ds])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, as the standard keeps it here)
    study_item.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame_uid
    frame_item.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_item])

    rois_seq, contours_seq, observations = [], [], []
    for number, value in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = (names or {}).get(value, f"label_{value}")
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois_seq.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = list(COLOURS[(number - 1) % len(COLOURS)])
        contours: list[Dataset] = []
        for k in range(values.shape[2]):
            plane = values[:, :, k] == value
            if not plane.any():
                continue
            for ij in slice_contours(plane):
                contour = Dataset()
                contour.ContourImageSequence = Sequence([_instance_ref(src_ds[k])])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(ij)
                contour.ContourNumber = len(contours) + 1
                contour.ContourData = _fmt_ds(_lps_points(labels.affine, ij, k))
                contours.append(contour)
        if contours:
            item.ContourSequence = Sequence(contours)
        contours_seq.append(item)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = ""
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois_seq)
    ds.ROIContourSequence = Sequence(contours_seq)
    ds.RTROIObservationsSequence = Sequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"
    try:
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    except OSError as exc:
        full = disk_full_cause(exc)
        if full is not None:
            raise disk_full_error(path, full) from None
        raise
    return path
