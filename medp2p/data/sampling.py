"""Training batches: paired 2D / 2.5D slices drawn from prepared cases, in memory or in the case store.

Batch ``n`` of a run is drawn from a generator of its own, seeded by the run's seed and ``n`` (the
global batch index: step ``s`` of rank ``r`` of ``W`` is batch ``s * W + r``), so a batch is the
same whichever process draws it, in which order, and with how many DataLoader workers: a resumed
run draws exactly the batches it would have drawn, and ranks draw disjoint streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from medp2p.data.prepare import PreparedCase
from medp2p.types import MASK, SOURCE, TARGET

BODY = "body"


class SampledCase(Protocol):
    """What sampling needs of a case: its depth, sampling weights, body boxes and slice rows."""

    id: str
    depth: int
    weights: np.ndarray
    extent: np.ndarray
    has_mask: bool

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """``(stop - start, C, H, W)`` slices of ``source``, ``target``, ``body`` or ``mask``."""
        ...


class MemoryCase:
    """A :class:`PreparedCase` held in memory, sampled like a stored one (tests, small experiments)."""

    def __init__(self, case: PreparedCase) -> None:
        self.case = case
        self.id = case.id
        self.depth = int(case.weights.shape[0])
        self.weights = case.weights.numpy().astype(np.float64)
        self.has_mask = case.mask is not None
        body = case.body[0].numpy() > 0
        self.extent = body_extent(body)
        self._arrays = {SOURCE: case.source, TARGET: case.target, BODY: case.body, MASK: case.mask}

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Slices ``start:stop`` of one of the case's ``(C, D, H, W)`` tensors, slice-major."""
        t = self._arrays[name]
        assert t is not None
        return t[:, start:stop].transpose(0, 1).numpy()


class _StoredRows:
    """The rows interface over a :class:`~medp2p.data.store.StoredCase` (its files are slice-major already)."""

    def __init__(self, stored: Any) -> None:
        self.stored = stored
        self.id, self.depth, self.weights = stored.id, stored.depth, stored.weights.astype(np.float64)
        self.extent, self.has_mask = stored.extent, stored.has_mask

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.stored.reader(name).rows(start, stop))


def sampled(case: Any) -> SampledCase:
    """A case as sampling reads it: a prepared case in memory, or a stored case on disk."""
    if isinstance(case, PreparedCase):
        return MemoryCase(case)
    if hasattr(case, "reader"):
        return _StoredRows(case)
    return case  # type: ignore[no-any-return]


def body_extent(body: np.ndarray) -> np.ndarray:
    """``(D, 4)`` body box ``(y_min, y_max, x_min, x_max)`` of each slice of ``(D, H, W)``; -1 where empty."""
    d = body.shape[0]
    rows, cols = np.asarray(body.any(2)), np.asarray(body.any(1))
    ext = np.full((d, 4), -1, np.int64)
    for i in range(d):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if ys.size:
            ext[i] = (ys[0], ys[-1], xs[0], xs[-1])
    return ext


class SliceTables:
    """The sampling tables of a set of cases: every slice's weight and owner (small: one entry per slice)."""

    def __init__(self, cases: Sequence[Any]) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases = [sampled(c) for c in cases]
        self.owner = np.concatenate([np.full(c.depth, i) for i, c in enumerate(self.cases)])
        self.slice_of = np.concatenate([np.arange(c.depth) for c in self.cases])
        self.weights = torch.from_numpy(np.concatenate([c.weights for c in self.cases]).astype(np.float64))
        if not self.weights.sum() > 0:
            raise ValueError("no slice can be sampled: every slice weight is 0 (check data.slice_range and the masks)")


def _context_rows(case: SampledCase, name: str, d: int, k: int, win: tuple[slice, slice]) -> np.ndarray:
    """``(C, 2k+1, h, w)``: slices ``d-k..d+k`` (edges replicated) of one array, cropped."""
    lo, hi = max(d - k, 0), min(d + k, case.depth - 1) + 1
    block = case.rows(name, lo, hi)[:, :, win[0], win[1]]  # (n, C, h, w)
    idx = np.clip(np.arange(d - k, d + k + 1), 0, case.depth - 1) - lo
    return np.ascontiguousarray(block[idx].transpose(1, 0, 2, 3))


def _crop_origin(case: SampledCase, d: int, crop: tuple[int, int], size: tuple[int, int], offset: torch.Tensor) -> tuple[slice, slice]:
    """The crop of slice ``d``: centred on a uniform point of its body box (``offset`` in [0, 1)^2), clamped; anywhere without body."""
    ch, cw = crop
    h, w = size
    ext = case.extent[d].tolist()
    if ext[0] < 0:  # no body on this slice: anywhere
        y0, x0 = int(offset[0] * (h - ch + 1)), int(offset[1] * (w - cw + 1))
    else:  # centre the crop on a uniform point of the body's bounding box
        y0 = min(max(int(ext[0] + offset[0] * (ext[1] - ext[0] + 1)) - ch // 2, 0), h - ch)
        x0 = min(max(int(ext[2] + offset[1] * (ext[3] - ext[2] + 1)) - cw // 2, 0), w - cw)
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


def draw_batch(
    tables: SliceTables, batch_size: int, crop: tuple[int, int], context_slices: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """One batch from ``gen``: ``source (B, S*(2k+1), h, w)``, ``target (B, 1, h, w)``, ``body (B, 2k+1, h, w)``, ``mask`` if any.

    Slices are drawn by weight (slices without body are rare); a crop smaller than the slice is
    centred on a uniform point of the slice's body bounding box (clamped to the slice), so small
    crops of a large field of view still show body.
    """
    picks = torch.multinomial(tables.weights, batch_size, replacement=True, generator=gen)
    offsets = torch.rand(batch_size, 2, generator=gen)
    ch, cw = crop
    k = context_slices
    out: dict[str, list[np.ndarray]] = {SOURCE: [], TARGET: [], BODY: [], MASK: []}
    for j, flat in enumerate(picks.tolist()):
        case = tables.cases[int(tables.owner[flat])]
        d = int(tables.slice_of[flat])
        first = case.rows(TARGET, d, d + 1)  # (1, 1, H, W)
        win = _crop_origin(case, d, crop, first.shape[-2:], offsets[j])
        src = _context_rows(case, SOURCE, d, k, win)  # (S, 2k+1, h, w): image-major channels
        out[SOURCE].append(src.reshape(-1, ch, cw))
        out[TARGET].append(first[0][:, win[0], win[1]].astype(np.float32))
        out[BODY].append(_context_rows(case, BODY, d, k, win)[0].astype(np.float32))
        if case.has_mask:
            out[MASK].append(case.rows(MASK, d, d + 1)[0][:, win[0], win[1]].astype(np.float32))
    return {key: torch.from_numpy(np.stack(v).astype(np.float32, copy=False)) for key, v in out.items() if v}


def _slab_rows(case: SampledCase, name: str, start: int, depth: int, win: tuple[slice, slice]) -> np.ndarray:
    """``(C, depth, h, w)``: slices ``start .. start + depth - 1`` of one array (edges replicated), cropped."""
    lo, hi = max(start, 0), min(start + depth, case.depth)
    block = case.rows(name, lo, hi)[:, :, win[0], win[1]]  # (n, C, h, w)
    idx = np.clip(np.arange(start, start + depth), 0, case.depth - 1) - lo
    return np.ascontiguousarray(block[idx].transpose(1, 0, 2, 3))


def draw_patches(tables: SliceTables, batch_size: int, patch: tuple[int, int, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One batch of 3D patches from ``gen``: ``source (B, S, d, h, w)``, ``target (B, 1, d, h, w)``, ``body (B, d, h, w)``, ``mask``.

    A centre slice is drawn by weight as :func:`draw_batch` draws slices (body-centred, rarely
    empty), the patch's slab is the ``d`` slices around it (moved inside the volume where it
    fits, edges replicated where the volume is thinner than the patch), and its in-plane crop is
    centred on a uniform point of the centre slice's body box.
    """
    picks = torch.multinomial(tables.weights, batch_size, replacement=True, generator=gen)
    offsets = torch.rand(batch_size, 2, generator=gen)
    pd, ph, pw = patch
    out: dict[str, list[np.ndarray]] = {SOURCE: [], TARGET: [], BODY: [], MASK: []}
    for j, flat in enumerate(picks.tolist()):
        case = tables.cases[int(tables.owner[flat])]
        d = int(tables.slice_of[flat])
        start = min(max(d - pd // 2, 0), case.depth - pd) if case.depth >= pd else d - pd // 2
        size = case.rows(BODY, d, d + 1).shape[-2:]
        win = _crop_origin(case, d, (ph, pw), size, offsets[j])
        out[SOURCE].append(_slab_rows(case, SOURCE, start, pd, win))
        out[TARGET].append(_slab_rows(case, TARGET, start, pd, win).astype(np.float32))
        out[BODY].append(_slab_rows(case, BODY, start, pd, win)[0].astype(np.float32))
        if case.has_mask:
            out[MASK].append(_slab_rows(case, MASK, start, pd, win).astype(np.float32))
    return {key: torch.from_numpy(np.stack(v).astype(np.float32, copy=False)) for key, v in out.items() if v}


class SliceBatcher:
    """Draws batches of random slices from one sequential generator (tests, and a loop without workers).

    Args:
        cases: prepared (or stored) cases (every slice at least ``crop`` in-plane).
        batch_size: samples per batch.
        crop: ``(H, W)`` of each sample.
        context_slices: 2.5D half-width k.
        gen: the random stream.

    Example:
        >>> batch = SliceBatcher(cases, 4, (256, 256), 1, gen).next()
        >>> batch["source"].shape
        torch.Size([4, 3, 256, 256])
    """

    def __init__(self, cases: Sequence[Any], batch_size: int, crop: tuple[int, int], context_slices: int, gen: torch.Generator) -> None:
        self.tables = SliceTables(cases)
        self.batch_size, self.crop, self.context_slices, self.gen = batch_size, crop, context_slices, gen

    def next(self) -> dict[str, torch.Tensor]:
        """One batch (see :func:`draw_batch`)."""
        return draw_batch(self.tables, self.batch_size, self.crop, self.context_slices, self.gen)


def batch_seed(seed: int, index: int) -> int:
    """The seed of global batch ``index`` of a run seeded ``seed`` (a hash: streams do not overlap)."""
    digest = hashlib.sha256(f"medp2p-batch:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SliceBatches(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Batch ``step`` of this rank, as a map-style dataset: a DataLoader's workers draw them in parallel.

    Args:
        cases: the training cases (stored or prepared).
        batch_size, crop, context_slices: as :class:`SliceBatcher`.
        seed: the run's seed (``train.seed``).
        rank, world: this process's place (rank ``r`` of ``W`` draws global batches ``s * W + r``).
        transform: applied to each drawn batch with its generator (corruption, augmentation,
            MONAI transforms: :class:`medp2p.train.batches.BatchRecipe`), in the worker.
        patch: 3D patches ``(D, H, W)`` instead of slices (:func:`draw_patches`; ``crop`` and
            ``context_slices`` then unused).

    Example:
        >>> batches = SliceBatches(stored, 8, (128, 128), 1, seed=0)
        >>> loader = DataLoader(batches, sampler=StepSampler(start=0), batch_size=None, num_workers=2)
    """

    def __init__(
        self,
        cases: Sequence[Any],
        batch_size: int,
        crop: tuple[int, int],
        context_slices: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        transform: Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]] | None = None,
        patch: tuple[int, int, int] | None = None,
    ) -> None:
        self.tables = SliceTables(cases)
        self.batch_size, self.crop, self.context_slices = batch_size, crop, context_slices
        self.seed, self.rank, self.world, self.transform = seed, rank, world, transform
        self.patch = patch

    def __len__(self) -> int:
        return 2**62  # steps are indices: the loop decides where to stop

    def generator(self, step: int) -> torch.Generator:
        """The generator of this rank's batch at ``step``."""
        return torch.Generator().manual_seed(batch_seed(self.seed, step * self.world + self.rank))

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        gen = self.generator(step)
        if self.patch is not None:
            batch = draw_patches(self.tables, self.batch_size, self.patch, gen)
        else:
            batch = draw_batch(self.tables, self.batch_size, self.crop, self.context_slices, gen)
        return self.transform(batch, gen) if self.transform is not None else batch


class StepSampler(torch.utils.data.Sampler[int]):
    """Step indices ``start, start + 1, ...`` without end: the sampler's whole state is where it starts."""

    def __init__(self, start: int = 0) -> None:
        self.start = start

    def __iter__(self) -> Any:
        step = self.start
        while True:
            yield step
            step += 1
