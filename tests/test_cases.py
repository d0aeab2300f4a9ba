"""Every accepted data layout becomes the same datalist."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medp2p.data import DataLayoutError, find_cases, load_datalist
from medp2p.io import write_volume
from medp2p.types import Volume
from tests.dicom_helpers import write_series


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), path)
    return path


def test_synthrad_folders_nested_with_mha(tmp_path: Path) -> None:
    for case in ("1BA001", "1BA002"):
        for key in ("mr", "ct", "mask"):
            write_volume(Volume(np.zeros((4, 4, 2), np.float32), np.eye(4)), tmp_path / "Task1" / "brain" / case / f"{key}.mha")
    cases = find_cases(tmp_path)
    assert [c["id"] for c in cases] == ["1BA001", "1BA002"]
    assert sorted(cases[0]) == ["ct", "id", "mask", "mr"]
    assert cases[0]["ct"].endswith("Task1/brain/1BA001/ct.mha") and Path(cases[0]["ct"]).is_absolute()


def test_case_folder_with_dicom_series(tmp_path: Path) -> None:
    _touch(tmp_path / "p1" / "ct.nii.gz")
    write_series(tmp_path / "p1" / "MR", np.zeros((4, 4, 3)))
    (case,) = find_cases(tmp_path)
    assert case["mr"] == str((tmp_path / "p1" / "MR").resolve())


def test_one_case_folder_is_a_dataset(tmp_path: Path) -> None:
    _touch(tmp_path / "c" / "mr.nii.gz")
    assert [c["id"] for c in find_cases(tmp_path / "c")] == ["c"]


def test_duplicate_key_in_a_case_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path / "c" / "ct.nii.gz")
    write_volume(Volume(np.zeros((4, 4, 2), np.float32), np.eye(4)), tmp_path / "c" / "ct.mha")
    with pytest.raises(DataLayoutError, match="key 'ct' appears twice"):
        load_datalist(tmp_path)


def test_brats_2023_naming(tmp_path: Path) -> None:
    cid = "BraTS-GLI-00000-000"
    for suffix in ("t1n", "t1c", "t2w", "t2f", "seg"):
        _touch(tmp_path / cid / f"{cid}-{suffix}.nii.gz")
    icid = "BraTS-GLI-00001-000"
    for suffix in ("t1n", "t1n-voided", "mask", "mask-healthy", "mask-unhealthy"):
        _touch(tmp_path / icid / f"{icid}-{suffix}.nii.gz")
    seg_case, inpaint_case = find_cases(tmp_path)
    assert seg_case["id"] == cid and sorted(seg_case) == ["id", "t1c", "t1n", "t2f", "t2w", "tumor"]
    assert sorted(inpaint_case) == ["id", "region", "region_healthy", "region_unhealthy", "t1n", "voided"]
    assert inpaint_case["voided"].endswith("-t1n-voided.nii.gz")


def test_nnunet_raw(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Brain"
    meta = {"channel_names": {"0": "FLAIR", "1": "T1c"}, "labels": {"background": 0, "tumor": [1, 2]}, "file_ending": ".nii.gz"}
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(meta))
    for cid in ("brain_001", "brain_002"):
        _touch(root / "imagesTr" / f"{cid}_0000.nii.gz")
        _touch(root / "imagesTr" / f"{cid}_0001.nii.gz")
        _touch(root / "labelsTr" / f"{cid}.nii.gz")
    _touch(root / "imagesTs" / "brain_009_0000.nii.gz")
    _touch(root / "imagesTs" / "brain_009_0001.nii.gz")
    for data in (root, root / "dataset.json"):
        dl = load_datalist(data)
        assert [c["id"] for c in dl["training"]] == ["brain_001", "brain_002"]
        assert sorted(dl["training"][0]) == ["flair", "id", "label", "t1c"]
        assert dl["label_values"] == {"label": [0, 1, 2]}
        assert [c["id"] for c in dl["test"]] == ["brain_009"] and "label" not in dl["test"][0]


def test_nnunet_missing_channel_or_label(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"bg": 0}, "file_ending": ".nii.gz"})
    )
    _touch(root / "imagesTr" / "a_0000.nii.gz")
    with pytest.raises(DataLayoutError, match=r"case 'a' lacks channel\(s\) \['adc'\]"):
        load_datalist(root)
    _touch(root / "imagesTr" / "a_0001.nii.gz")
    with pytest.raises(DataLayoutError, match=r"labelsTr/a\.nii\.gz: missing"):
        load_datalist(root)


def test_datalist_json_resolves_relative_paths(tmp_path: Path) -> None:
    _touch(tmp_path / "vols" / "x_mr.nii.gz")
    (tmp_path / "lists").mkdir()
    dl = {
        "training": [{"id": "x", "mr": "../vols/x_mr.nii.gz", "anything": "../vols/x_mr.nii.gz", "weight": 2}],
        "validation": [{"mr": str(tmp_path / "vols" / "x_mr.nii.gz")}],
    }
    (tmp_path / "lists" / "dl.json").write_text(json.dumps(dl))
    out = load_datalist(tmp_path / "lists" / "dl.json")
    assert out["training"][0]["mr"] == str((tmp_path / "vols" / "x_mr.nii.gz").resolve())
    assert out["training"][0]["weight"] == 2
    assert out["validation"][0]["id"] == "x_mr"  # named after its first file


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a readable JSON datalist"),
        ("[1, 2]", "a datalist is a JSON object"),
        ('{"name": "x"}', "no case lists found"),
        ('{"training": [{"id": "a", "mr": "a.nii"}, {"id": "a", "mr": "b.nii"}]}', "case ids appear more than once: a"),
    ],
)
def test_bad_datalists_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "dl.json").write_text(content)
    with pytest.raises(DataLayoutError, match=message) as info:
        load_datalist(tmp_path / "dl.json")
    assert "dl.json" in str(info.value)


def test_single_volume_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match="single volume is not a dataset"):
        load_datalist(_touch(tmp_path / "mr.nii.gz"))
