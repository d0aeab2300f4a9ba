"""Case lists: every accepted data layout turned into one MONAI-style datalist.

A datalist is a dict of sections (``"training"``, ``"validation"``, ``"test"``), each a list of
cases; a case is a dict with an ``"id"`` and one absolute path per image key::

    {"training": [{"id": "case_000", "mr": "/data/case_000/mr.nii.gz",
                   "ct": "/data/case_000/ct.nii.gz", "mask": "/data/case_000/mask.nii.gz"}],
     "label_values": {"mask": [0, 1]}}

Layouts read (:func:`load_datalist` picks by what it finds):

- **per-case folders** (SynthRAD): ``DATA/<case>/<key>.nii.gz`` (also ``.nii``, ``.mha``, ``.nrrd``)
  and ``DATA/<case>/<key>/`` holding a DICOM series; keys are the file stems (``mr``, ``ct``,
  ``mask``, ``tumor``...). Nested task/site folders (``Task1/brain/1BA001``) are searched.
- **BraTS 2023**: ``DATA/<case>/<case>-t1n.nii.gz`` with ``-t1n/-t1c/-t2w/-t2f`` (same keys),
  ``-seg`` (key ``tumor``), and the inpainting files ``-t1n-voided`` (``voided``), ``-mask``
  (``region``), ``-mask-healthy``/``-mask-unhealthy`` (``region_healthy``/``region_unhealthy``).
- **nnU-Net v2 raw**: ``dataset.json``, ``imagesTr/<case>_<XXXX>.nii.gz`` (one key per channel,
  named by ``channel_names`` in lower case), ``labelsTr/<case>.nii.gz`` (key ``label``, values
  from ``labels``), ``imagesTs`` as the ``test`` section.
- **a datalist JSON** given directly: any keys; relative paths resolve against the JSON's folder;
  cases without an ``id`` are named after their first file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medp2p.io import VOLUME_SUFFIXES, full_suffix, is_volume_file
from medp2p.io.dicom import probe_dicom

#: Key families, for reading a folder of files as one case and for suggesting the user's own key
#: when a task's default is missing (``mr`` ~ ``t1c``, ``flair``; ``tumor`` ~ ``label``, ``seg``).
KEY_FAMILIES: dict[str, tuple[str, ...]] = {
    "mr": (
        "mr",
        "mri",
        "t1",
        "t1w",
        "t1c",
        "t1ce",
        "t1n",
        "t1gd",
        "t2",
        "t2w",
        "t2f",
        "flair",
        "pd",
        "mprage",
        "dwi",
        "adc",
        "image",
        "img",
        "input",
        "source",
    ),
    "ct": ("ct", "sct", "cbct", "hu"),
    "tumor": ("tumor", "tumour", "label", "labels", "seg", "lesion", "gt", "truth", "otmulticlass"),
    "mask": ("mask", "body", "brain", "brainmask", "brain_mask", "roi"),
    "region": ("region", "mask", "hole", "void"),
    "voided": ("voided", "corrupted", "masked"),
}

Case = dict[str, Any]

#: Label keys and the values they may hold, unless the datalist declares its own.
DEFAULT_LABEL_VALUES: dict[str, tuple[int, ...]] = {
    "mask": (0, 1),
    "region": (0, 1),
    "region_healthy": (0, 1),
    "region_unhealthy": (0, 1),
    "tumor": (0, 1, 2, 3, 4),
}

SECTIONS = ("training", "validation", "test")

_BRATS_KEYS = {
    "t1n": "t1n",
    "t1c": "t1c",
    "t2w": "t2w",
    "t2f": "t2f",
    "seg": "tumor",
    "t1n-voided": "voided",
    "mask": "region",
    "mask-healthy": "region_healthy",
    "mask-unhealthy": "region_unhealthy",
}
_BRATS_RE = re.compile(r"^(?P<case>.+?)-(?P<key>t1n-voided|mask-healthy|mask-unhealthy|t1n|t1c|t2w|t2f|seg|mask)\.nii(\.gz)?$")


class DataLayoutError(ValueError):
    """DATA is not a layout medp2p understands, or is inconsistent; the message names the path."""


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(full_suffix(path))]


def label_values(key: str, datalist: dict[str, Any] | None = None) -> tuple[int, ...] | None:
    """The values a label key may hold, or None for an image key.

    The datalist's own ``"label_values"`` wins; otherwise :data:`DEFAULT_LABEL_VALUES`.

    Example:
        >>> label_values("mask"), label_values("ct")
        ((0, 1), None)
    """
    declared = (datalist or {}).get("label_values", {})
    if key in declared:
        return tuple(int(v) for v in declared[key])
    return DEFAULT_LABEL_VALUES.get(key)


def safe_case_id(case_id: str) -> str:
    """A case id made safe as one folder name: letters, digits, ``.``, ``_`` and ``-`` only.

    Path separators and anything else become ``_``; leading dots are dropped, so ``..`` and hidden
    names cannot occur. Output folders are named with it, so nothing is written outside OUT_DIR.

    Example:
        >>> safe_case_id("../../evil"), safe_case_id("BraTS-GLI-00001-000")
        ('_.._evil', 'BraTS-GLI-00001-000')
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", str(case_id)).lstrip(".")
    return cleaned or "case"


def case_seed(seed: int, case_id: str) -> int:
    """A per-case seed that depends only on ``seed`` and the case id (not on case order)."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def image_keys(case: Case) -> list[str]:
    """The keys of ``case`` that name files (everything but ``id``)."""
    return [k for k in case if k != "id"]


# --- datalist JSON -----------------------------------------------------------------------------


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, str):
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    return value


def _unique_ids(cases: list[Case], where: Path) -> list[Case]:
    seen: dict[str, int] = {}
    for case in cases:
        if "id" not in case:
            # named after its first file; a file named after a key (case_001/mr.nii.gz) by its folder
            first = next(
                (v if isinstance(v, str) else v[0] for v in case.values() if isinstance(v, str) or (isinstance(v, list) and v)), None
            )
            stem = _stem(Path(first)) if first else ""
            named = Path(first).parent.name if first and stem.lower() in KNOWN_KEYS and Path(first).parent.name else stem
            case["id"] = named or f"case_{len(seen):03d}"
        case["id"] = str(case["id"])
        seen[case["id"]] = seen.get(case["id"], 0) + 1
    dups = sorted(i for i, n in seen.items() if n > 1)
    if dups:
        raise DataLayoutError(f"{where}: case ids appear more than once: {', '.join(dups)}; give each case a unique 'id'")
    return cases


def _read_datalist_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataLayoutError(f"{path}: not a readable JSON datalist ({err})") from err
    if not isinstance(raw, dict):
        raise DataLayoutError(f"{path}: a datalist is a JSON object with sections like 'training'; found {type(raw).__name__}")
    sections = {k: v for k, v in raw.items() if isinstance(v, list)}
    if not sections:
        raise DataLayoutError(f'{path}: no case lists found; expected e.g. {{"training": [{{"id": ..., "mr": ...}}]}}')
    out: dict[str, Any] = {k: v for k, v in raw.items() if not isinstance(v, list)}
    for name, items in sections.items():
        cases = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                item = {"image": item}  # decathlon "test": ["imagesTs/x.nii.gz", ...]
            if not isinstance(item, dict):
                raise DataLayoutError(f"{path}: entry {i} of '{name}' is {type(item).__name__}, expected an object")
            cases.append({k: (v if k == "id" else _resolve(v, path.parent)) for k, v in item.items()})
        out[name] = _unique_ids(cases, path)
    return out


# --- per-case folders (SynthRAD, BraTS) ----------------------------------------------------------


def is_dicom_folder(folder: Path) -> bool:
    """True when one of the first few files in ``folder`` is a DICOM image slice, or looks like DICOM.

    A folder of broken DICOM files (no File Meta, a bad value) counts, so reading it names what
    is wrong with its files instead of saying no dataset was found.
    """
    files = sorted(f for f in folder.iterdir() if f.is_file())
    files.sort(key=lambda f: f.suffix.lower() != ".dcm")
    return any(ds is not None or why is not None for ds, why in map(probe_dicom, files[:5]))


def _is_case_folder(folder: Path) -> bool:
    entries = list(folder.iterdir())
    if any(f.is_file() and is_volume_file(f) for f in entries):
        return True
    return any(d.is_dir() and is_dicom_folder(d) for d in entries)


def _case_from_folder(folder: Path) -> Case | None:
    """A case from one folder, or None when it holds no volume. BraTS naming wins when present."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and is_volume_file(f))
    brats = [(m, f) for f in files if (m := _BRATS_RE.match(f.name))]
    if brats:
        case: Case = {"id": brats[0][0]["case"]}
        for m, f in brats:
            case[_BRATS_KEYS[m["key"]]] = str(f.resolve())
        return case
    case = {"id": folder.name}
    for f in files:
        key = _stem(f).lower()
        if key in case:
            raise DataLayoutError(f"{f}: key '{key}' appears twice in {folder} (e.g. ct.nii.gz and ct.mha); keep one")
        case[key] = str(f.resolve())
    for sub in sorted(d for d in folder.iterdir() if d.is_dir()):
        if sub.name.lower() not in case and is_dicom_folder(sub):
            case[sub.name.lower()] = str(sub.resolve())
    return case if len(case) > 1 else None


def _case_folders(root: Path, depth: int) -> Iterable[Path]:
    """Folders below ``root`` (at most 3 levels down) that hold a case."""
    for sub in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if _is_case_folder(sub):
            yield sub
        elif depth < 3:
            yield from _case_folders(sub, depth + 1)


#: Stems a folder's files may have for the folder to be read as one case (``mr.nii.gz``,
#: ``ct.nii.gz``, ``mask.nii.gz``...): keys of the tasks and of the common public layouts.
KNOWN_KEYS = frozenset(
    {
        *(k for family in KEY_FAMILIES.values() for k in family),
        *DEFAULT_LABEL_VALUES,
        *_BRATS_KEYS.values(),
        "target",
        "voided",
    }
)


def _split_stem(stem: str) -> tuple[str, str] | None:
    """``brain1_image`` -> ``("brain1", "image")``: a case prefix and a key, at the last ``_`` or ``-``."""
    m = re.match(r"^(?P<case>.+?)[_-](?P<key>[A-Za-z][A-Za-z0-9]*)$", stem)
    return (m["case"], m["key"].lower()) if m else None


def _read_flat(root: Path) -> dict[str, Any]:
    """The cases of a folder that holds volumes (and DICOM series folders) directly.

    - files named ``<case>_<key>`` (or ``<case>-<key>``) for two or more cases that share a key
      (``brain1_image``, ``brain1_label``, ``brain2_image``...): one case per prefix;
    - files all named after known keys (``mr``, ``ct``, ``mask``, ``t1``, ``flair``...) or BraTS
      names: one case, the folder;
    - otherwise unrelated volumes: one case per file (or DICOM folder) with the key ``image``, in
      the ``test`` section (no targets), as ``predict`` reads a folder of inputs;
    - the folder itself a DICOM series: one such case.
    """
    files = sorted(f for f in root.iterdir() if f.is_file() and is_volume_file(f))
    series = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and is_dicom_folder(d))
    if not files and not series:
        return {"test": [{"id": root.name, "image": str(root.resolve())}]} if is_dicom_folder(root) else {}
    named = [(f, _stem(f)) for f in files] + [(d, d.name) for d in series]
    split = [(p, _split_stem(stem)) for p, stem in named]
    if all(parts is not None for _, parts in split):
        groups: dict[str, Case] = {}
        for p, parts in split:
            assert parts is not None
            case = groups.setdefault(parts[0], {"id": parts[0]})
            if parts[1] in case:
                raise DataLayoutError(f"{p}: key '{parts[1]}' appears twice for case '{parts[0]}' in {root}; keep one")
            case[parts[1]] = str(p.resolve())
        shared = set.intersection(*(set(c) - {"id"} for c in groups.values()))
        if len(groups) >= 2 and shared:
            return {"training": list(groups.values())}
    if any(_BRATS_RE.match(f.name) for f in files) or all(stem.lower() in KNOWN_KEYS for _, stem in named):
        single = _case_from_folder(root)
        return {"training": [single]} if single is not None else {}
    return {"test": [{"id": stem, "image": str(p.resolve())} for p, stem in named]}


def _read_case_folders(root: Path) -> dict[str, Any]:
    cases = [c for d in _case_folders(root, 1) if (c := _case_from_folder(d)) is not None]
    if not cases:
        flat = _read_flat(root)  # DATA is one case folder, a folder of volumes, or one DICOM series
        if flat:
            return {name: _unique_ids(items, root) for name, items in flat.items()}
        raise DataLayoutError(
            f"{root}: no cases found. Expected per-case folders (<case>/mr.nii.gz, ct.nii.gz, mask.nii.gz), "
            f"BraTS folders (<case>/<case>-t1n.nii.gz ...), an nnU-Net folder (dataset.json, imagesTr, labelsTr) "
            f"or a datalist .json; volume files end in {', '.join(VOLUME_SUFFIXES)}"
        )
    return {"training": _unique_ids(cases, root)}


# --- entry points ------------------------------------------------------------------------------


def load_datalist(data: str | Path) -> dict[str, Any]:
    """Read any accepted layout at ``data`` into a datalist (see the module docstring).

    Args:
        data: a datalist ``.json``, an nnU-Net raw dataset folder (or its ``dataset.json``), a
            folder of per-case folders (SynthRAD or BraTS naming), or one case folder.

    Raises:
        DataLayoutError: the path does not exist or matches no layout (the message says which
            layouts were expected).

    Example:
        >>> dl = load_datalist("phantom/")
        >>> [c["id"] for c in dl["training"]][:2]
        ['case_000', 'case_001']
    """
    path = Path(data).expanduser()
    if not path.exists():
        raise DataLayoutError(f"{path}: no such file or folder")
    from medp2p.data.nnunet import read_nnunet  # here: that module uses this one's error type

    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataLayoutError(f"{path}: DATA must be a folder or a datalist .json (a single volume is not a dataset)")
        raw = json.loads(path.read_text()) if path.name == "dataset.json" else None
        if isinstance(raw, dict) and ("channel_names" in raw or "modality" in raw) and "file_ending" in raw:
            return read_nnunet(path.parent)
        return _read_datalist_json(path)
    if (path / "dataset.json").is_file() and (path / "imagesTr").is_dir():
        return read_nnunet(path)
    return _read_case_folders(path)


def find_cases(data: str | Path, section: str = "training") -> list[Case]:
    """The cases of one section of :func:`load_datalist` (``"training"`` by default).

    Example:
        >>> cases = find_cases("brats2023/")
        >>> sorted(cases[0])
        ['id', 't1c', 't1n', 't2f', 't2w', 'tumor']
    """
    datalist = load_datalist(data)
    if section not in datalist:
        present = [s for s, v in datalist.items() if isinstance(v, list)]
        raise DataLayoutError(f"{data}: no '{section}' section; it has {present}")
    cases: list[Case] = datalist[section]
    return cases
