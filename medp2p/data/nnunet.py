"""nnU-Net v2 raw datasets: ``dataset.json``, ``imagesTr/<case>_<XXXX>``, ``labelsTr/<case>``, ``imagesTs``.

Channel keys are the ``channel_names`` in lower case; the label key is ``label``, with the values
declared in ``labels``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medp2p.data.cases import Case, DataLayoutError


def _channel_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_") or "image"


def read_nnunet(folder: Path) -> dict[str, Any]:
    """The datalist of an nnU-Net v2 raw dataset folder (``training`` from imagesTr, ``test`` from imagesTs).

    Raises:
        DataLayoutError: an unreadable ``dataset.json``, undeclared or missing channels, a training case without its label.
    """
    meta_path = folder / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataLayoutError(f"{meta_path}: not readable as nnU-Net dataset.json ({err})") from err
    channels = meta.get("channel_names") or meta.get("modality")
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(channels, dict) or not channels:
        raise DataLayoutError(f'{meta_path}: \'channel_names\' missing; nnU-Net v2 needs e.g. {{"0": "T2"}}')
    keys: dict[int, str] = {}
    for idx, name in sorted(((int(i), n) for i, n in channels.items())):
        key = _channel_key(str(name))
        keys[idx] = key if key not in keys.values() and key != "label" else f"{key}_{idx:04d}"
    out: dict[str, Any] = {}
    labels = meta.get("labels", {})
    values: set[int] = set()
    for v in labels.values():
        values.update(int(x) for x in (v if isinstance(v, list) else [v]))
    if values:
        out["label_values"] = {"label": sorted(values)}
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    for section, images, labels_dir in (("training", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
        img_dir = folder / images
        if not img_dir.is_dir():
            continue
        cases: dict[str, Case] = {}
        for f in sorted(img_dir.iterdir()):
            m = pattern.match(f.name)
            if not m:
                continue
            ch = int(m["ch"])
            if ch not in keys:
                raise DataLayoutError(f"{f}: channel {ch:04d} is not declared in {meta_path}'s channel_names")
            cases.setdefault(m["case"], {"id": m["case"]})[keys[ch]] = str(f.resolve())
        for cid, case in cases.items():
            missing = [keys[c] for c in keys if keys[c] not in case]
            if missing:
                raise DataLayoutError(f"{img_dir}: case '{cid}' lacks channel(s) {missing} ({cid}_XXXX{ending})")
            label = folder / labels_dir / f"{cid}{ending}"
            if label.exists():
                case["label"] = str(label.resolve())
            elif section == "training":
                raise DataLayoutError(f"{label}: missing; every training case needs a label in {labels_dir}")
        if cases:
            out[section] = list(cases.values())
    if "training" not in out:
        raise DataLayoutError(f"{folder / 'imagesTr'}: no images named <case>_XXXX{ending}")
    return out
