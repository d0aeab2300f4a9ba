"""The case store: every training case prepared once, on disk, reused by every start, resume and rank.

A store is a folder per preparation (``<cache>/<prep fingerprint>/``) holding one folder per case
(``<case id>-<input fingerprint>/``): the model-space arrays laid out slice-major, so one training
sample is one contiguous read, and what is needed to go back (``meta.json``):

    source.npy  (D, S, H, W) float32      target.npy  (D, 1, H, W) float32, or uint8 for labels
    body.npy    (D, 1, H, W) uint8        mask.npy    (D, 1, H, W) uint8 (when the case has one)
    extent.npy  (D, 4) int32: each slice's body box      weights.npy (D,) float32: sampling weights

Fingerprints: the inputs by path, size, modification time and a SHA-256 of their first 64 KiB
(the header; DICOM folders by their files), the reading options, and every preparation setting.
A change rebuilds only the cases it touches. Cases are built in worker processes
(``data.num_workers``) into a temporary folder and renamed into place: a second build of the same
store at the same time (another rank, another run) finds the case there and keeps it.

Samples are read with ``os.pread`` from the ``.npy`` files, not memory-mapped: mapped pages count in
each process's resident memory, read ones only in the kernel's page cache, which every worker and
rank shares (docs/scale.md has the measurement).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medp2p.data.case_reader import CaseKeys, read_case
from medp2p.data.cases import Case, image_keys, safe_case_id
from medp2p.data.checks import ReadOptions
from medp2p.data.geometry import GridMap
from medp2p.data.intensity import IntensityWindow
from medp2p.data.prepare import Prep, PreparedCase, prepare_case
from medp2p.data.sampling import body_extent

#: Bumped when the stored layout changes: old stores are then rebuilt, not misread.
STORE_VERSION = 1
#: ``MEDP2P_CACHE``: where stores go when no ``--cache-dir`` is given (default: beside the run folder).
CACHE_ENV = "MEDP2P_CACHE"
_HEAD_BYTES = 64 * 1024


def _file_fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(_HEAD_BYTES)).hexdigest()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head": head}


def input_fingerprint(case: Case, options: ReadOptions) -> str:
    """A digest of a case's input files (path, size, mtime, header hash) and of how they are read."""
    items: list[Any] = [{"affine_from": options.affine_from, "series_uid": options.series_uid}]
    for key in sorted(image_keys(case)):
        values = case[key] if isinstance(case[key], list) else [case[key]]
        for value in values:
            path = Path(value)
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            items.append([key, [_file_fingerprint(f) for f in files if f.exists()]])
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def prep_fingerprint(prep: Prep, keys: CaseKeys) -> str:
    """A digest of every preparation setting and the keys read: a change means another store."""
    spec = {
        **asdict(prep),
        "codec": prep.codec.name,
        "codec_window": prep.codec.fits_window,
        "keys": asdict(keys),
        "version": STORE_VERSION,
    }
    spec.pop("target_window", None)  # a decoding setting, fitted on the stored cases themselves
    if spec.get("patch_size") is None:  # 2D: the fingerprint it had before the 3D mode (stores stay valid)
        spec.pop("patch_size", None)
    spec["keys"].pop("hint", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_cache_dir(run_dir: Path, cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$MEDP2P_CACHE``, else ``<run folder's parent>/cache``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env) if env else Path(run_dir).resolve().parent / "cache"


class _NpyReader:
    """Contiguous slabs of a slice-major ``.npy`` file, read with ``os.pread`` (fd opened per process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered array in the store")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    def rows(self, start: int, stop: int) -> np.ndarray:
        """``array[start:stop]``, read from disk (the page cache)."""
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        assert self._fd is not None
        data = os.pread(self._fd, (stop - start) * self.row, self.offset + start * self.row)
        return np.frombuffer(data, self.dtype).reshape((stop - start, *self.shape[1:]))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}  # each worker opens its own


@dataclass
class StoredCase:
    """One case of a store: its sampling tables in memory, its arrays read on demand.

    Args:
        id: the case id.
        folder: its folder in the store.
        depth: slices along the slicing axis.
        weights: ``(D,)`` sampling weights.
        extent: ``(D, 4)`` body bounding box of each slice (``-1`` where empty).
        has_mask: whether the case stored a loss mask.
        meta: the rest of ``meta.json`` (grid, windows, source_is_ct, target window).
    """

    id: str
    folder: Path
    depth: int
    weights: np.ndarray
    extent: np.ndarray
    has_mask: bool
    meta: dict[str, Any] = field(default_factory=dict)
    _readers: dict[str, _NpyReader] = field(default_factory=dict, repr=False)

    def reader(self, name: str) -> _NpyReader:
        """The reader of ``<name>.npy`` (``source``, ``target``, ``body``, ``mask``)."""
        if name not in self._readers:
            self._readers[name] = _NpyReader(self.folder / f"{name}.npy")
        return self._readers[name]

    @property
    def source_is_ct(self) -> bool:
        """Whether the case's first source looked like a CT in HU."""
        return bool(self.meta.get("source_is_ct", False))

    @property
    def target_window(self) -> IntensityWindow | None:
        """The target's own intensity window (for codecs that fit one)."""
        w = self.meta.get("target_window")
        return IntensityWindow(w["lo"], w["hi"], clip=tuple(w["clip"])) if w else None


def _window(w: IntensityWindow | None) -> dict[str, Any] | None:
    return None if w is None else {"lo": w.lo, "hi": w.hi, "clip": list(w.clip or (-1.0, 1.5))}


def _save_prepared(case: PreparedCase, folder: Path, labels: bool) -> None:
    """Write a prepared case slice-major (``(C, D, H, W)`` tensors become ``(D, C, H, W)`` files)."""

    def slice_major(t: Any, dtype: Any) -> np.ndarray:
        return np.ascontiguousarray(t.numpy().transpose(1, 0, 2, 3), dtype=dtype)

    np.save(folder / "source.npy", slice_major(case.source, np.float32))
    np.save(folder / "target.npy", slice_major(case.target, np.uint8 if labels else np.float32))
    np.save(folder / "body.npy", slice_major(case.body > 0, np.uint8))
    if case.mask is not None:
        np.save(folder / "mask.npy", slice_major(case.mask > 0, np.uint8))
    np.save(folder / "extent.npy", body_extent(case.body[0].numpy() > 0).astype(np.int32))
    np.save(folder / "weights.npy", case.weights.numpy().astype(np.float32))
    g = case.grid
    meta = {
        "id": case.id, "depth": int(case.weights.shape[0]), "has_mask": case.mask is not None, "source_is_ct": case.source_is_ct,
        "grid": {
            "shape": g.shape, "perm": g.perm, "flips": g.flips, "axis": g.axis, "plane_shape": g.plane_shape, "pad": g.pad,
            "affine": g.affine.tolist(),
        },
        "windows": [{"lo": w.lo, "hi": w.hi, "clip": list(w.clip) if w.clip else None} for w in case.windows],
        "target_window": _window(case.target_window),
        "version": STORE_VERSION,
    }  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))


@dataclass(frozen=True)
class _BuildJob:
    case: Case
    folder: Path
    prep: Prep
    keys: CaseKeys
    datalist: dict[str, Any] | None
    options: ReadOptions


def _build_one(job: _BuildJob) -> str:
    """Read, check, prepare and write one case into its folder (atomically); returns its id."""
    case = read_case(job.case, job.keys, "train", job.datalist, job.options)
    prepared = prepare_case(case, job.prep)
    job.folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{job.folder.name}.", dir=job.folder.parent))
    try:
        _save_prepared(prepared, staging, job.prep.codec.labels)
        try:
            staging.rename(job.folder)
        except OSError:
            if not (job.folder / "meta.json").is_file():  # not a finished concurrent build: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return prepared.id


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the build's workers share the cores


def _load(folder: Path) -> StoredCase:
    meta = json.loads((folder / "meta.json").read_text())
    return StoredCase(
        meta["id"],
        folder,
        int(meta["depth"]),
        np.load(folder / "weights.npy"),
        np.load(folder / "extent.npy"),
        bool(meta["has_mask"]),
        meta,
    )


def case_folder(store: Path, case: Case, options: ReadOptions) -> Path:
    """Where a case is (or will be) stored: its safe id and its inputs' fingerprint."""
    return store / f"{safe_case_id(str(case['id']))}-{input_fingerprint(case, options)}"


def build_store(
    cases: Iterable[Case],
    prep: Prep,
    keys: CaseKeys,
    cache_dir: str | Path,
    datalist: dict[str, Any] | None = None,
    options: ReadOptions = ReadOptions(),
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[StoredCase]:
    """The stored cases of ``cases``, building the ones that are missing or whose inputs changed.

    Args:
        cases: datalist cases.
        prep: the preparation (a different one is a different store).
        keys: the keys read.
        cache_dir: the cache; the store is ``cache_dir/<prep fingerprint>``.
        datalist: the cases' datalist (declared label values).
        options: reading options.
        workers: processes building cases (0: this process).
        progress: called with ``(done, to build)`` after each built case.

    Raises:
        CaseError: a case cannot be used (the message names the file).

    Example:
        >>> stored = build_store(cases, plan.prep, plan.keys, "runs/cache", workers=2)
    """
    store = Path(cache_dir) / prep_fingerprint(prep, keys)
    cases = list(cases)
    folders = [case_folder(store, c, options) for c in cases]
    todo = [_BuildJob(c, f, prep, keys, datalist, options) for c, f in zip(cases, folders, strict=True) if not (f / "meta.json").is_file()]
    if todo and workers > 1:
        # spawned, not forked: a forked child of a process with torch's thread pools can hang
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
            for done, _ in enumerate(pool.map(_build_one, todo), 1):
                if progress is not None:
                    progress(done, len(todo))
    else:
        for done, job in enumerate(todo, 1):
            _build_one(job)
            if progress is not None:
                progress(done, len(todo))
    stored = [_load(f) for f in folders]
    _write_manifest(store, prep, stored)
    return stored


def _write_manifest(store: Path, prep: Prep, stored: list[StoredCase]) -> None:
    manifest = {"version": STORE_VERSION, "prep": asdict(prep), "cases": {c.id: c.folder.name for c in stored}}
    fd, tmp = tempfile.mkstemp(dir=store, prefix=".manifest.", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest, fh, indent=1, default=str)
    os.replace(tmp, store / "manifest.json")


def grid_of(meta: dict[str, Any]) -> GridMap:
    """The :class:`GridMap` recorded in a stored case's ``meta.json``."""
    g = meta["grid"]
    return GridMap(
        tuple(g["shape"]), tuple(g["perm"]), tuple(g["flips"]), g["axis"], tuple(g["plane_shape"]), tuple(g["pad"]), np.asarray(g["affine"])
    )
