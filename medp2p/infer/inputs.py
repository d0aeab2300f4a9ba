"""What ``medp2p predict`` predicts: cases from volume files, DICOM series folders and datasets, and a part of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medp2p.data import DataLayoutError, load_datalist, safe_case_id
from medp2p.data.case_reader import CaseKeys, as_single_source
from medp2p.data.cases import is_dicom_folder
from medp2p.data.prepare import Prep
from medp2p.io import is_volume_file
from medp2p.io.atomic import full_suffix
from medp2p.tasks import Task


def _single_input_case(path: Path, key: str, generic: set[str]) -> dict[str, Any]:
    stem = path.name[: len(path.name) - len(full_suffix(path))] if path.is_file() else path.name
    # "case_001/mr.nii.gz" is case_001, not "mr"
    case_id = path.parent.name if stem.lower() in generic else stem
    return {"id": case_id, key: str(path.resolve())}


def resolve_inputs(inputs: Sequence[str | Path], task: Task, prep: Prep, keys: CaseKeys | None = None) -> list[dict[str, Any]]:
    """Cases to predict from ``inputs``: volume files, DICOM series folders, or datasets.

    A single volume (file or DICOM folder) is one case of a one-source model; its id is the file
    name without suffix, or its folder's name when the file is named after a key
    (``case_001/mr.nii.gz`` -> ``case_001``). A dataset (any layout ``medp2p validate`` reads)
    gives all its cases; a case holding one image under another key (a flat folder of volumes
    gives ``image``) is that model's source.

    Raises:
        DataLayoutError: an input is missing or unreadable as a layout, a one-file input for a
            multi-source model, or two cases with the same (sanitised) id.
    """
    generic = {k.lower() for k in (*prep.source_keys, "image", "img", "input", "mr", "t1", "t2", "flair", "voided")}
    one_source = prep.n_sources == 1
    keys = keys or task.case_keys(prep.source_keys, prep.target_key, prep.mask_key, prep.source_channels)
    cases: list[dict[str, Any]] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DataLayoutError(f"{path}: no such file or folder")
        single = (path.is_file() and (is_volume_file(path) or path.suffix.lower() in (".dcm", ".ima"))) or (
            path.is_dir() and is_dicom_folder(path)
        )
        if single:
            if not one_source:
                raise DataLayoutError(
                    f"{path}: this model takes {prep.n_sources} images per case {list(prep.source_keys)}; "
                    "give a dataset folder or datalist .json instead of one volume"
                )
            cases.append(_single_input_case(path, prep.source_keys[0], generic))
        else:
            datalist = load_datalist(path)
            for section in ("training", "validation", "test"):
                cases += [as_single_source(case, keys) for case in datalist.get(section, [])]
    seen: dict[str, str] = {}
    for case in cases:
        sid = safe_case_id(case["id"])
        if sid in seen:
            raise DataLayoutError(f"two inputs map to the case id {sid!r} ({seen[sid]} and {case['id']!r}); give them distinct names")
        seen[sid] = str(case["id"])
    return cases


def partition(cases: list[dict[str, Any]], num_parts: int, part_id: int) -> list[dict[str, Any]]:
    """The cases of part ``part_id`` of ``num_parts``: every ``num_parts``-th case by sorted id."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id must be in [0, {num_parts - 1}] for --num-parts {num_parts}, got {part_id}")
    ordered = sorted(cases, key=lambda c: safe_case_id(c["id"]))
    return ordered[part_id::num_parts]
