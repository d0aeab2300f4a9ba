"""Training batches: paired 2D / 2.5D slices drawn from cached model-space cases.

All randomness comes from one ``torch.Generator``, whose state is checkpointed: a resumed run
draws exactly the batches it would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medp2p.data.geometry import context_indices, gather_slices
from medp2p.data.prepare import PreparedCase
from medp2p.types import MASK, SOURCE, TARGET

BODY = "body"


def _body_extent(body: torch.Tensor) -> torch.Tensor:
    """``(D, 4)`` body bounding box ``(y_min, y_max, x_min, x_max)`` of each slice of ``(D, H, W)``; -1 where empty."""
    d, h, w = body.shape
    rows, cols = body.amax(2) > 0, body.amax(1) > 0  # (D, H), (D, W)
    ys, xs = torch.arange(h), torch.arange(w)
    big = torch.tensor(max(h, w))
    ext = torch.stack(
        [
            torch.where(rows, ys, big).amin(1),
            torch.where(rows, ys, -1).amax(1),
            torch.where(cols, xs, big).amin(1),
            torch.where(cols, xs, -1).amax(1),
        ],
        1,
    )
    return torch.where(rows.any(1, keepdim=True), ext, -1)


class SliceBatcher:
    """Draws batches of random slices (weighted: slices without body are rare) and crops them.

    A crop smaller than the slice is centred on a uniform point of the slice's body bounding
    box (clamped to the slice), so small crops of a large field of view still show body.

    Args:
        cases: prepared cases (every slice at least ``crop`` in-plane).
        batch_size: samples per batch.
        crop: ``(H, W)`` of each sample.
        context_slices: 2.5D half-width k.
        gen: the random stream.

    Example:
        >>> batch = SliceBatcher(cases, 4, (256, 256), 1, gen).next()
        >>> batch["source"].shape
        torch.Size([4, 3, 256, 256])
    """

    def __init__(
        self, cases: Sequence[PreparedCase], batch_size: int, crop: tuple[int, int], context_slices: int, gen: torch.Generator
    ) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases = list(cases)
        self.batch_size = batch_size
        self.crop = crop
        self.gen = gen
        self.owner = torch.cat([torch.full((c.weights.shape[0],), i) for i, c in enumerate(self.cases)])
        self.slice_of = torch.cat([torch.arange(c.weights.shape[0]) for c in self.cases])
        self.weights = torch.cat([c.weights for c in self.cases]).double()
        if not self.weights.sum() > 0:
            raise ValueError("no slice can be sampled: every slice weight is 0 (check data.slice_range and the masks)")
        self.context = [context_indices(c.weights.shape[0], context_slices) for c in self.cases]
        self.extent = [_body_extent(c.body[0]) for c in self.cases]

    def next(self) -> dict[str, torch.Tensor]:
        """One batch: ``source (B, S*(2k+1), h, w)``, ``target (B, 1, h, w)``, ``body (B, 2k+1, h, w)``, ``mask`` if any."""
        picks = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=self.gen)
        offsets = torch.rand(self.batch_size, 2, generator=self.gen)
        ch, cw = self.crop
        out: dict[str, list[torch.Tensor]] = {SOURCE: [], TARGET: [], BODY: [], MASK: []}
        for j, flat in enumerate(picks.tolist()):
            case = self.cases[int(self.owner[flat])]
            d = int(self.slice_of[flat])
            _, _, h, w = case.source.shape
            ext = self.extent[int(self.owner[flat])][d].tolist()
            if ext[0] < 0:  # no body on this slice: anywhere
                y0 = int(offsets[j, 0] * (h - ch + 1))
                x0 = int(offsets[j, 1] * (w - cw + 1))
            else:  # centre the crop on a uniform point of the body's bounding box
                y0 = min(max(int(ext[0] + offsets[j, 0] * (ext[1] - ext[0] + 1)) - ch // 2, 0), h - ch)
                x0 = min(max(int(ext[2] + offsets[j, 1] * (ext[3] - ext[2] + 1)) - cw // 2, 0), w - cw)
            win = (slice(y0, y0 + ch), slice(x0, x0 + cw))
            idx = self.context[int(self.owner[flat])][d : d + 1]
            out[SOURCE].append(gather_slices(case.source[..., win[0], win[1]], idx)[0])
            out[TARGET].append(case.target[:, d, win[0], win[1]])
            out[BODY].append(gather_slices(case.body[..., win[0], win[1]], idx)[0])
            if case.mask is not None:
                out[MASK].append(case.mask[:, d, win[0], win[1]])
        batch = {k: torch.stack(v) for k, v in out.items() if v}
        return batch
