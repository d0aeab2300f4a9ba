"""Writing derived DICOM: a synthetic CT series (CT Image Storage) and a DICOM SEG (highdicom).

A synthetic CT from a DICOM MR series is one CT instance per MR slice, in a new series of the
MR's study: it keeps the MR's StudyInstanceUID, FrameOfReferenceUID, patient and study modules,
and each instance takes ImagePositionPatient, ImageOrientationPatient, PixelSpacing and
SliceThickness from its MR slice and references that slice (SourceImageSequence). From a NIfTI
(or other non-DICOM) input, a standalone series with fresh study and frame-of-reference UIDs is
written, its geometry taken from the affine. Pixels are signed 16-bit with RescaleSlope 1 and
RescaleIntercept 0, so stored values are HU.

Series are built in a temporary folder beside the destination and renamed into place.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medp2p.io.atomic import atomic_path, default_mode, replace_folder
from medp2p.io.errors import VolumeWriteError, disk_full_cause, disk_full_error
from medp2p.io.geometry import itk_from_affine, shear
from medp2p.types import Volume

#: Patient and study attributes copied from the source series (type 2 ones are written empty when absent).
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "EthnicGroup",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
HU_STORED_RANGE = (-32768, 32767)


def _fmt_ds(values: np.ndarray | list[float]) -> list[str]:
    """Decimal strings of at most 16 characters (DICOM DS)."""
    out = []
    for v in np.asarray(values, float).ravel():
        text = f"{v:.10g}"
        digits = 10
        while len(text) > 16 and digits > 1:
            digits -= 1
            text = f"{v:.{digits}g}"
        out.append(text)
    return out


def _copy_patient_study(ds: Dataset, ref: Dataset | None) -> None:
    """Copy the patient and study attributes of ``ref`` (the source slice) into ``ds``; absent type 2 ones empty."""
    for key in _PATIENT_STUDY:
        if ref is not None and key in ref:
            setattr(ds, key, ref[key].value)
    for key in _TYPE2:
        if key not in ds:
            setattr(ds, key, "")


def _instance_ref(ref: Dataset) -> Dataset:
    """An item referencing the instance ``ref`` (ReferencedSOPClassUID and ReferencedSOPInstanceUID)."""
    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    return item


def _slice_geometry(volume: Volume) -> list[dict[str, Any]]:
    """Per slice k: ImagePositionPatient, ImageOrientationPatient, PixelSpacing (LPS, from the affine)."""
    origin, spacing, direction = itk_from_affine(volume.affine)
    row, col, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    geo = []
    for k in range(volume.shape[2]):
        ipp = origin + k * spacing[2] * normal
        geo.append(
            {
                "ImagePositionPatient": _fmt_ds(ipp),
                "ImageOrientationPatient": _fmt_ds(np.concatenate([row, col])),
                "PixelSpacing": _fmt_ds([spacing[1], spacing[0]]),
                "SliceThickness": _fmt_ds([spacing[2]])[0],
            }
        )
    return geo


def _base_dataset(sop_uid: str, sop_class: str = CTImageStorage, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A new instance: its file meta, character set (UTF-8) and SOP class and instance UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = sop_uid
    return ds


def write_ct_series(
    sct: Volume,
    folder: str | Path,
    source: Volume | None = None,
    series_description: str = "Synthetic CT (medp2p, from MR)",
    series_number: int = 9001,
    software_version: str = "",
    overwrite: bool = False,
    same_study_as: str | Path | None = None,
    rescale_slope: float = 1.0,
    derivation: str = "Synthetic CT predicted from MR by a pix2pix generator (medp2p)",
    window: tuple[float, float] = (40.0, 400.0),
) -> list[Path]:
    """Write a synthetic CT in HU as a DICOM CT series into ``folder`` (one file per slice), atomically.

    The series is built in a temporary folder beside ``folder`` and renamed into place; an old
    series there is replaced only once the new one is complete (``overwrite``).

    Args:
        sct: the synthetic CT, HU, on its source's grid.
        folder: destination folder (must not exist yet, or be empty, unless ``overwrite``).
        source: the MR it was predicted from; when it was read from a DICOM series (its
            ``meta["dicom_datasets"]``), the CT joins that study and frame of reference and each
            instance copies and references its MR slice. Otherwise a standalone series is written.
        series_description: says the series is synthetic.
        series_number: SeriesNumber of the new series.
        software_version: SoftwareVersions.
        overwrite: replace a series already in ``folder``.
        same_study_as: a DICOM file whose study and frame of reference the series joins (an
            uncertainty series beside its synthetic CT); default: the source's, else new ones.
        rescale_slope: HU per stored value (0.1: tenths of HU, for a standard deviation map).
        derivation: DerivationDescription: what the values are.
        window: the display window (center, width) in HU.

    Returns:
        The written files, in slice order.

    Example:
        >>> write_ct_series(sct, "out/patient_01/sct_dicom", source=mr)   # mr read from a DICOM folder
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder}: already holds files; remove it or write elsewhere")
    if shear(sct.affine) > 1e-4:
        raise ValueError(f"{folder}: the volume's affine is sheared; a DICOM series cannot store it")
    src_ds = (source.meta.get("dicom_datasets") if source is not None else None) or None
    if src_ds is not None and len(src_ds) != sct.shape[2]:
        raise ValueError(f"{folder}: {sct.shape[2]} slices but the source series has {len(src_ds)}")
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    series_uid = generate_uid()
    if src_ds is not None:
        study_uid = str(src_ds[0].StudyInstanceUID)
        frame_uid = str(src_ds[0].get("FrameOfReferenceUID") or generate_uid())
        src_series_uid = str(src_ds[0].SeriesInstanceUID)
    else:
        study_uid, frame_uid, src_series_uid = generate_uid(), generate_uid(), None
    joined = pydicom.dcmread(same_study_as, stop_before_pixels=True) if same_study_as is not None else None
    study_date, study_time = date, time
    if joined is not None:
        study_uid, frame_uid = str(joined.StudyInstanceUID), str(joined.FrameOfReferenceUID)
        study_date, study_time = str(joined.get("StudyDate") or date), str(joined.get("StudyTime") or time)
    geometry = _slice_geometry(sct)
    hu = np.clip(np.round(sct.array / rescale_slope), *HU_STORED_RANGE).astype(np.int16)

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        files = []
        for k in range(sct.shape[2]):
            ds = _base_dataset(generate_uid())
            ref = src_ds[k] if src_ds is not None else None
            _copy_patient_study(ds, ref)
            if "StudyInstanceUID" not in ds or not ds.StudyInstanceUID:
                ds.StudyInstanceUID = study_uid
            if joined is not None:
                ds.StudyInstanceUID = study_uid
            if not ds.StudyDate or joined is not None:
                ds.StudyDate, ds.StudyTime = study_date, study_time
            if src_ds is None:
                ds.PatientID, ds.StudyID = "medp2p", "1"
            ds.Modality = "CT"
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_number
            ds.SeriesDescription = series_description
            ds.SeriesDate, ds.SeriesTime = date, time
            ds.ContentDate, ds.ContentTime = date, time
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ref.get("PositionReferenceIndicator", "") if ref is not None else ""
            ds.Manufacturer = "medp2p"
            ds.ManufacturerModelName = "pix2pix synthetic CT"
            if software_version:
                ds.SoftwareVersions = software_version
            ds.InstanceNumber = k + 1
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.DerivationDescription = derivation
            ds.BurnedInAnnotation = "NO"
            for key, value in geometry[k].items():
                setattr(ds, key, value)
            if ref is not None:
                for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
                    if key in ref:
                        setattr(ds, key, ref[key].value)
                ds.SourceImageSequence = Sequence([_instance_ref(ref)])
                # Common Instance Reference: the MR series (same study) and the slice this came from
                series_item = Dataset()
                series_item.SeriesInstanceUID = src_series_uid
                series_item.ReferencedInstanceSequence = Sequence([_instance_ref(ref)])
                ds.ReferencedSeriesSequence = Sequence([series_item])
            ds.PatientPosition = ref.get("PatientPosition", "") if ref is not None else ""
            ds.Laterality = ""
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = sct.shape[1], sct.shape[0]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", f"{rescale_slope:g}", "HU"
            ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
            ds.KVP = ""
            ds.AcquisitionNumber = None
            ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).tobytes()
            path = staging / f"CT{k + 1:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(folder / path.name)
        staging.chmod(default_mode("dir"))
        for f in staging.iterdir():
            f.chmod(default_mode())
        replace_folder(staging, folder)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        full = disk_full_cause(exc)
        if full is not None and not isinstance(exc, VolumeWriteError):
            raise disk_full_error(folder, full) from None
        raise
    return files


def _with_type2(ds: Dataset) -> Dataset:
    if all(key in ds for key in _TYPE2):
        return ds
    copy = ds.copy()
    for key in _TYPE2:
        if key not in copy:
            setattr(copy, key, "")
    return copy


def write_dicom_seg(
    mask: Volume,
    path: str | Path,
    source: Volume,
    label: str = "Tumour",
    series_description: str = "Tumour mask (medp2p)",
    software_version: str = "",
) -> Path:
    """Write a binary mask as a DICOM SEG (highdicom) referencing the DICOM series it was predicted from.

    Args:
        mask: 0/1 volume on ``source``'s grid.
        path: the ``.dcm`` file to write (atomically).
        source: the input volume read from a DICOM series (needs ``meta["dicom_datasets"]``).
        label: the segment's label.
        series_description: SeriesDescription of the new series.
        software_version: SoftwareVersions (and the algorithm's version).

    Raises:
        ValueError: ``source`` was not read from a DICOM series (a SEG must reference one).

    Example:
        >>> write_dicom_seg(mask, "out/patient_01/mask_seg.dcm", source=mr)
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    src_ds = source.meta.get("dicom_datasets")
    if not src_ds:
        raise ValueError(f"{path}: a DICOM SEG must reference a DICOM source series; this input was not DICOM (write NIfTI instead)")
    if len(src_ds) != mask.shape[2]:
        raise ValueError(f"{path}: {mask.shape[2]} slices but the source series has {len(src_ds)}")
    # highdicom copies the patient and study modules from the source headers and needs their
    # type 2 attributes present (empty is allowed); fill them on copies.
    src_ds = [_with_type2(ds) for ds in src_ds]
    frames = np.ascontiguousarray((mask.array > 0).astype(np.uint8).transpose(2, 1, 0))  # (slices, rows, cols)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="medp2p pix2pix", family=codes.cid7162.ArtificialIntelligence, version=software_version or "0"
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=list(src_ds),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=9002,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medp2p",
        manufacturer_model_name="pix2pix segmentation",
        software_versions=software_version or "0",
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=False,
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def write_uncertainty_series(
    std: Volume, folder: str | Path, source: Volume | None, software_version: str, overwrite: bool, ct_series: str | Path
) -> list[Path]:
    """The standard deviation map of a synthetic CT as a second derived CT series in the synthetic CT's study and frame of reference.

    Stored in tenths of HU (RescaleSlope 0.1), described as uncertainty in its SeriesDescription
    and DerivationDescription, beside the synthetic CT series ``ct_series`` it describes.

    Example:
        >>> write_uncertainty_series(std, "out/p01/sct_std_dicom", mr, "medp2p 0.9", False, "out/p01/sct_dicom")
    """
    first = sorted(Path(ct_series).glob("*.dcm"))
    if not first:
        raise ValueError(f"{ct_series}: no synthetic CT series to join the uncertainty series to")
    return write_ct_series(
        std, folder, source=source,
        series_description="Uncertainty of the synthetic CT: voxelwise std in HU (medp2p)",
        series_number=9002, software_version=software_version, overwrite=overwrite, same_study_as=first[0], rescale_slope=0.1,
        derivation="Uncertainty map (not an image of the patient): standard deviation in HU across ensemble members and "
        "test-time passes of the synthetic CT series 9001 (medp2p)",
        window=(50.0, 100.0),
    )  # fmt: skip
