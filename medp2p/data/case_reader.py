"""One case reader for every command: a datalist case -> checked volumes (:class:`CaseVolumes`).

``train``, ``predict``, ``evaluate`` and ``validate`` all read cases through
:func:`inspect_case`: the same keys, the same per-volume checks (:mod:`medp2p.data.checks`),
the same grid comparison, the same missing-key message with the fix. ``validate`` reports every
problem; :func:`read_case` raises :class:`CaseError` on the first case that has any, before any
work is done on it.

A key whose datalist value is a list (MONAI's ``{"image": ["t1.nii.gz", "flair.nii.gz"]}``) is
that many images, in order: a source key holding two files gives two input channels.

Example:
    >>> keys = CaseKeys(sources=("mr",), target="ct", mask="mask", mask_required=False, task="mri2ct")
    >>> case = read_case({"id": "c0", "mr": "c0/mr.nii.gz", "ct": "c0/ct.nii.gz"}, keys, "train")
    >>> case.sources[0].shape == case.target.shape
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medp2p.data.cases import Case, image_keys, label_values
from medp2p.data.checks import GridTolerance, Problem, ReadOptions, check_volume, choose_affine, compare_grids
from medp2p.data.key_hints import missing_key_problem, nearest_keys
from medp2p.data.library_warnings import collected_warnings
from medp2p.io import DicomSeriesError, VolumeReadError, VolumeWriteError, read_volume
from medp2p.types import Volume

__all__ = [
    "ROLES", "USER_ERRORS", "CaseError", "CaseKeys", "CaseVolumes", "as_single_source", "collected_warnings", "error_text",
    "inspect_case", "missing_key_problem", "nearest_keys", "read_case",
]  # fmt: skip


#: What a command reads from a case: ``train`` (and ``validate`` of training data) needs inputs
#: and target, ``validation`` (held-out cases scored during training) also reads an inpainting
#: region, ``predict`` the inputs only, ``evaluate`` the reference (inputs optional).
ROLES = ("train", "validation", "predict", "evaluate")


class CaseError(ValueError):
    """A case cannot be used; ``str(err)`` names the file (or case and key), the problem and the fix.

    Args:
        problems: every problem found in the case (``problems[0]`` is the message).
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s): medp2p validate lists them)" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}")


@dataclass(frozen=True)
class CaseKeys:
    """The case keys a task reads, after the config's overrides.

    Args:
        sources: input image keys, stacked as channels in this order.
        target: the key the generator learns to produce (the reference of ``evaluate``).
        mask: the key of the loss/metric mask, or None.
        mask_required: whether a training case must have ``mask`` (mri2ct: no, the CT's body
            > -500 HU stands in).
        region: inpainting: the key of the region to fill at prediction.
        voided: inpainting: the key of the corrupted input, used instead of the first source.
        scored_regions: inpainting: keys of the region scored by ``evaluate``, first present wins.
        scored_labels: label maps ``evaluate`` reads when present (any non-negative integers).
        target_is_label: the target is a label map (seg): its values are checked as labels.
        source_channels: images per source key (list-valued keys), when fixed by a run.
        task: the task's name, for messages.
        hint: ``set`` (suggest ``--set data.*`` overrides) or ``model`` (a trained model's keys).

    Example:
        >>> CaseKeys(("mr",), "tumor", target_is_label=True, task="seg").needed("train", {"mr", "tumor"})
        ['mr', 'tumor']
    """

    sources: tuple[str, ...]
    target: str | None = None
    mask: str | None = None
    mask_required: bool = True
    region: str | None = None
    voided: str | None = None
    scored_regions: tuple[str, ...] = ()
    scored_labels: tuple[str, ...] = ()
    target_is_label: bool = False
    source_channels: tuple[int, ...] | None = None
    task: str = ""
    hint: str = "set"

    def needed(self, role: str, present: set[str] | dict[str, Any]) -> list[str]:
        """Keys a case must have for ``role`` (``train``, ``predict`` or ``evaluate``)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if role == "evaluate":
            return [self.target] if self.target else []
        sources = list(self.sources)
        if role == "predict" and self.voided and self.voided in present:
            sources = sources[1:]  # the voided image stands in for the first source
        training = role in ("train", "validation")
        keys = sources + ([self.target] if training and self.target else [])
        if training and self.mask and self.mask_required:
            keys.append(self.mask)
        return list(dict.fromkeys(keys))

    def optional(self, role: str) -> list[str]:
        """Keys read when present."""
        keys: list[str] = list(self.sources) if role == "evaluate" else []
        if self.mask and (role not in ("train", "validation") or not self.mask_required):
            keys.append(self.mask)
        if role != "train":
            keys += [k for k in (self.region, self.voided) if k]
        if role == "evaluate":
            keys += [*self.scored_regions, *self.scored_labels]
        return list(dict.fromkeys(keys))

    def label_set(self, key: str, datalist: dict[str, Any] | None) -> tuple[int, ...] | None:
        """The values ``key`` may hold: None for an image, ``()`` for any non-negative integer."""
        declared = label_values(key, datalist)
        if (key == self.target and self.target_is_label) or key in self.scored_labels:
            return declared if declared is not None else ()
        if key in (self.mask, self.region, *self.scored_regions):
            return declared if declared is not None else (0, 1)
        if key in self.sources or key == self.voided or key == self.target:
            return None
        return declared


@dataclass
class CaseVolumes:
    """One case's checked volumes, all on the grid of its first input.

    Args:
        id: the case id.
        sources: the input images in channel order (list-valued keys expanded); empty when the
            role did not need them and the case has none.
        target: the target / reference image, when read.
        mask: the loss/metric mask, when the case has one.
        region: inpainting: the region to fill.
        voided: inpainting: the corrupted input the case came with.
        scored_region: inpainting: the region ``evaluate`` scores.
        scored_labels: the task's scored label maps the case has, by key.
        paths: the file each key was read from (lists for list-valued keys).
    """

    id: str
    sources: list[Volume] = field(default_factory=list)
    target: Volume | None = None
    mask: Volume | None = None
    region: Volume | None = None
    voided: Volume | None = None
    scored_region: Volume | None = None
    scored_labels: dict[str, Volume] = field(default_factory=dict)
    paths: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> Volume:
        """The first volume read: the grid every other one was checked against."""
        for vol in (*self.sources, self.voided, self.target):
            if vol is not None:
                return vol
        raise ValueError(f"case {self.id!r}: no volume was read")


def as_single_source(case: Case, keys: CaseKeys) -> Case:
    """A case holding one image under another key, read as the source of a one-source task.

    ``image`` (a file of a folder of volumes, a DICOM series folder) becomes the task's source
    key; other cases are returned unchanged.

    ``predict`` and ``validate`` apply this one rule, so ``validate --task`` accepts what
    ``predict`` accepts.

    Example:
        >>> as_single_source({"id": "p1", "image": "p1.nii.gz"}, CaseKeys(("mr",), "ct"))
        {'id': 'p1', 'mr': 'p1.nii.gz'}
    """
    present = image_keys(case)
    one_source = len(keys.sources) == 1 and (keys.source_channels is None or tuple(keys.source_channels) == (1,))
    if one_source and len(present) == 1 and present[0] not in keys.sources and not isinstance(case[present[0]], list):
        return {"id": case["id"], keys.sources[0]: case[present[0]]}
    return case


# --- reading -----------------------------------------------------------------------------------------


def _paths(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def inspect_case(
    case: Case,
    keys: CaseKeys | None,
    role: str = "train",
    datalist: dict[str, Any] | None = None,
    options: ReadOptions = ReadOptions(),
    tol: GridTolerance = GridTolerance(),
    keep: bool = True,
    every_key: bool = False,
) -> tuple[dict[str, list[Volume]], list[Problem], int]:
    """Read and check one case: the function behind ``validate`` and every command's reads.

    Args:
        case: a datalist case (``{"id", key: path or [paths]}``).
        keys: what the task reads; None: every key of the case, none required (``validate``
            without ``--task``).
        role: ``train``, ``predict`` or ``evaluate`` (:data:`ROLES`): which keys are needed.
        datalist: the case's datalist (its declared ``label_values``).
        options: header and series choices.
        tol: grid agreement tolerance.
        keep: keep the decoded volumes (False: check and drop, for ``validate``).
        every_key: also read the case's other keys (``validate`` checks every file).

    Returns:
        ``(volumes by key, problems, files read)``.
    """
    cid = str(case["id"])
    present = image_keys(case)
    problems: list[Problem] = []
    if keys is None:
        needed, wanted = [], present
    else:
        needed = keys.needed(role, case)
        wanted = needed + [k for k in keys.optional(role) if k in case and k not in needed]
        if every_key:
            wanted += [k for k in present if k not in wanted]
        # the inputs first: the grid every other image is compared with, whatever the role
        wanted.sort(key=lambda k: (k not in keys.sources, k != keys.voided))
    missing = [k for k in needed if k not in case]
    if missing:
        assert keys is not None
        problems.append(missing_key_problem(case, keys, missing, role))
    if keys is not None and keys.source_channels is not None:
        for key, n in zip(keys.sources, keys.source_channels, strict=False):
            if key in case and len(_paths(case[key])) != n:
                problems.append(
                    Problem(
                        _paths(case[key])[0],
                        "channels",
                        f"'{key}' holds {len(_paths(case[key]))} image(s), the run was trained on {n}",
                        cid,
                        key,
                    )
                )
    volumes: dict[str, list[Volume]] = {}
    reference: tuple[str, str, Volume] | None = None
    files = 0
    with collected_warnings(cid):
        for key in [k for k in wanted if k in case]:
            labels = keys.label_set(key, datalist) if keys is not None else label_values(key, datalist)
            for path in _paths(case[key]):
                files += 1
                try:
                    vol = read_volume(path, options.series_uid)
                except DicomSeriesError as err:
                    problems += [Problem(str(f), "dicom", msg, cid, key) for f, msg in err.problems]
                    continue
                except VolumeReadError as err:
                    problems.append(Problem(str(err.path), "unreadable", err.problem, cid, key))
                    continue
                found = check_volume(vol, path, labels, options=options)
                problems += [Problem(p.file, p.check, p.message, cid, key) for p in found]
                if not any(p.check in ("sheared_affine", "qform_sform") for p in found):
                    vol = choose_affine(vol, path, options)[0]
                if reference is None:
                    reference = (key, path, vol)
                else:
                    diff = compare_grids(reference[2], vol, tol)
                    if diff is not None:
                        problems.append(
                            Problem(
                                path,
                                "grid_mismatch",
                                f"'{key}' is not on the '{reference[0]}' grid of {reference[1]}: {diff}. "
                                f"Resample '{key}' onto the '{reference[0]}' grid first",
                                cid,
                                key,
                            )
                        )
                if keep:
                    volumes.setdefault(key, []).append(vol)
    return volumes, problems, files


def read_case(
    case: Case, keys: CaseKeys, role: str = "train", datalist: dict[str, Any] | None = None, options: ReadOptions = ReadOptions()
) -> CaseVolumes:
    """Read one case for ``role``, checked as ``validate`` checks it; refuse it on any problem.

    Raises:
        CaseError: a missing key (with the keys the task reads and how to map yours), an
            unreadable file, NaN/Inf voxels, disagreeing or sheared header transforms, label values
            outside the declared set, an empty mask, or images on different grids. The message
            names the file (or the case and key).

    Example:
        >>> case = read_case({"id": "c0", "mr": "c0/mr.nii.gz"}, keys, "predict")
        >>> len(case.sources)
        1
    """
    volumes, problems, _ = inspect_case(case, keys, role, datalist, options)
    if problems:
        raise CaseError(problems)

    def one(key: str | None) -> Volume | None:
        return volumes[key][0] if key and key in volumes else None

    sources = [v for k in keys.sources for v in volumes.get(k, [])]
    scored = next((volumes[k][0] for k in keys.scored_regions if k in volumes), None)
    return CaseVolumes(
        id=str(case["id"]),
        sources=sources,
        target=one(keys.target),
        mask=one(keys.mask),
        region=one(keys.region),
        voided=one(keys.voided),
        scored_region=scored,
        scored_labels={k: volumes[k][0] for k in keys.scored_labels if k in volumes},
        paths={k: case[k] for k in volumes},
    )


#: Errors whose message is the whole story (they name the file and the fix); others keep their type.
USER_ERRORS: tuple[type[BaseException], ...] = (CaseError, VolumeReadError, VolumeWriteError, FileExistsError, ValueError, KeyError)


def error_text(exc: BaseException) -> str:
    """One line for a failed case: a user error's message, ``Type: message`` for anything else.

    Example:
        >>> error_text(KeyError("case 'x' has no 'mr'")), error_text(ZeroDivisionError("division by zero"))
        ("case 'x' has no 'mr'", 'ZeroDivisionError: division by zero')
    """
    text = str(exc).strip("'\"") if isinstance(exc, KeyError) else str(exc)
    text = " ".join(text.split())  # one line
    return text if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {text}"
