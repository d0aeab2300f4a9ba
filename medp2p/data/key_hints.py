"""Missing keys: what the task reads, what the case has, and how to map one onto the other.

Key families tell the user's own keys from the task's defaults: ``mr`` ~ ``t1c``, ``flair``;
``tumor`` ~ ``label``, ``seg``. The hint is the fix in the command's own terms: ``--set data.*``
for ``train`` and ``validate``, ``--target-key`` for ``evaluate``, the model's keys for ``predict``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medp2p.data.cases import KEY_FAMILIES, Case, image_keys
from medp2p.data.checks import Problem

if TYPE_CHECKING:
    from medp2p.data.case_reader import CaseKeys


def _paths(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _family(key: str) -> tuple[str, ...]:
    k = key.lower()
    return next((fam for name, fam in KEY_FAMILIES.items() if k == name or k in fam), ())


def nearest_keys(wanted: str, present: list[str], exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The case's keys most like ``wanted``: the same family first, then spelling.

    Families: ``mr`` ~ ``t1c``, ``flair``; ``tumor`` ~ ``label``, ``seg``.

    Example:
        >>> nearest_keys("tumor", ["flair", "label", "t1c"]), nearest_keys("mr", ["flair", "label", "t1c"])
        (['label'], ['flair', 't1c'])
    """
    family = _family(wanted)
    candidates = [k for k in present if k not in exclude]

    def related(k: str) -> bool:
        parts = set(re.split(r"[^0-9a-z]+", k.lower())) | {k.lower()}
        return any(p in family for p in parts)

    out = [k for k in candidates if related(k)]
    out += [k for k in difflib.get_close_matches(wanted, candidates, n=3, cutoff=0.6) if k not in out]
    return out


def missing_key_problem(case: Case, keys: CaseKeys, missing: list[str], role: str) -> Problem:
    """The one-line problem of a case lacking keys: what the task reads, what the case has, and the fix.

    Example:
        >>> str(missing_key_problem({"id": "x", "flair": "x/flair.nii.gz", "label": "x/label.nii.gz"},
        ...                         CaseKeys(("mr",), "tumor", task="seg"), ["mr", "tumor"], "train"))
        "x: case 'x' has no 'mr', 'tumor' (it has flair, label); seg reads sources [mr], target tumor: map yours with
        --set data.source_keys=[flair] --set data.target_key=label [case 'x', key 'mr']"
    """
    cid = str(case["id"])
    present = image_keys(case)
    where = next((str(Path(_paths(case[k])[0]).parent) for k in present), cid)
    reads = f"sources [{', '.join(keys.sources)}]" + (f", target {keys.target}" if keys.target and role != "predict" else "")
    if keys.mask and keys.mask_required and role in ("train", "validation"):
        reads += f", mask {keys.mask}"
    has = ", ".join(present) or "no images"
    head = f"case {cid!r} has no {', '.join(repr(k) for k in missing)} (it has {has}); {keys.task or 'the task'} reads {reads}"
    options: list[str] = []
    advice: list[str] = []
    sources: list[str] = []
    for k in keys.sources:
        sources += nearest_keys(k, present, {keys.target or "", keys.mask or ""} | set(sources)) if k in missing else [k]
    if any(k in missing for k in keys.sources):
        if keys.hint == "set" and sources:
            options.append(f"--set data.source_keys=[{','.join(dict.fromkeys(sources))}]")
        elif sources:
            advice.append(
                f"the model reads [{', '.join(keys.sources)}]: give each case those keys (nearest here: {', '.join(sources)}), "
                "or pass one volume file per case with -i"
            )
    for key, option in ((keys.target, "data.target_key"), (keys.mask, "data.mask_key")):
        if key and key in missing:
            near = nearest_keys(key, present, set(sources) | set(keys.sources))
            if near and role == "evaluate":
                options.append(f"--target-key {near[0]}")
            elif near and keys.hint == "set":
                options.append(f"--set {option}={near[0]}")
    fix = "; ".join(([f"map yours with {' '.join(options)}"] if options else []) + advice)
    return Problem(
        where, "missing_key", f"{head}: {fix or 'name the files after those keys, or map them in a datalist .json'}", cid, missing[0]
    )
