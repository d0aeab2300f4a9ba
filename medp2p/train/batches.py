"""One training batch: sampled slices, inpainting corruption, augmentation, as the step takes them."""

from __future__ import annotations

import torch

from medp2p.data.augment import AugmentSpec, augment
from medp2p.data.codecs import BACKGROUND
from medp2p.data.corruption import corruption_regions
from medp2p.data.sampling import BODY, SliceBatcher
from medp2p.plan import Plan
from medp2p.types import MASK, REGION, SOURCE, TARGET


def training_batch(batcher: SliceBatcher, aug: AugmentSpec, plan: Plan, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw a batch, corrupt it (a task with a region: inpainting), and augment source, target and masks together.

    A label target (masks) is resampled by nearest neighbour; a target that is the source image
    itself (inpainting) gets the source's intensity jitter too.

    Example:
        >>> batch = training_batch(batcher, AugmentSpec(), plan, gen)
        >>> batch["source"].shape
        torch.Size([4, 3, 256, 256])
    """
    prep, cfg = plan.prep, plan.config
    batch = batcher.next()
    images = {SOURCE: batch[SOURCE], TARGET: batch[TARGET]}
    labels: dict[str, torch.Tensor] = {}  # the body only places the boxes: it is not augmented
    if MASK in batch:
        labels[MASK] = batch[MASK]
    if plan.codec.labels:
        labels[TARGET] = images.pop(TARGET)
    if prep.region:
        k = prep.context_slices
        lo, hi = cfg.inpaint.box_fraction
        labels[REGION] = corruption_regions(batch[BODY], k, tuple(cfg.inpaint.kinds), (lo, hi), gen)
    jitter = (SOURCE, TARGET) if plan.task.target_is_source else (SOURCE,)
    images, labels = augment(images, labels, jitter, aug, gen)
    out = {SOURCE: images[SOURCE], TARGET: images[TARGET] if TARGET in images else labels[TARGET]}
    if MASK in labels:
        out[MASK] = labels[MASK]
    if prep.region:
        regions = labels[REGION]
        voided = torch.where(regions.repeat(1, prep.n_sources, 1, 1) > 0, torch.tensor(BACKGROUND), out[SOURCE])
        out[SOURCE] = torch.cat([voided, regions], dim=1)
        out[REGION] = regions[:, prep.context_slices : prep.context_slices + 1]
    return out
