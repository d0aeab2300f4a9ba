"""Build tiny DICOM CT/MR series for tests (pydicom only; tests may touch it directly)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid


def write_series(
    folder: Path,
    hu: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.9, 2.5),
    origin: tuple[float, float, float] = (-12.0, -20.0, 30.0),
    iop: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    series_uid: str | None = None,
    slopes: list[float] | None = None,
    intercept: float = -1024.0,
    positions: list[np.ndarray] | None = None,
    shuffle: bool = True,
    prefix: str = "IM",
    modality: str = "CT",
) -> list[Path]:
    """Write ``hu`` (X, Y, Z) as one file per slice; returns the files in slice order.

    Positions follow ``origin + k * spacing[2] * normal`` (LPS) unless ``positions`` are given.
    Files are named in a shuffled order so readers must sort by position, not by name.
    ``modality="MR"`` writes MR Image Storage instances (unsigned, no rescale) of a patient with
    a full patient/study module, as a scanner would.
    """
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    if modality == "MR":
        intercept = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(row, col)
    nz = hu.shape[2]
    order = np.random.default_rng(0).permutation(nz) if shuffle else np.arange(nz)
    files = []
    for k in range(nz):
        slope = 1.0 if slopes is None else slopes[k]
        stored = np.round((hu[:, :, k].T - intercept) / slope).astype(np.uint16 if modality == "MR" else np.int16)
        pos = np.asarray(origin) + k * spacing[2] * normal if positions is None else positions[k]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = modality
        ds.PatientName, ds.PatientID = "Test^Phantom", "TEST001"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "S1", "A1"
        ds.ReferringPhysicianName, ds.PatientPosition = "", "HFS"
        ds.SeriesDescription = "test series"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (between rows), column spacing
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0 if modality == "MR" else 1
        if modality != "MR":
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        path = folder / f"{prefix}{int(order[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
