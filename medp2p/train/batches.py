"""From a drawn batch to the batch the step takes: inpainting corruption, augmentation, MONAI transforms.

Everything random is drawn in the DataLoader worker from the batch's own seeded generator
(:class:`BatchRecipe`). Applying the draws is done there too when training on a CPU; on a GPU the
draws travel with the batch and :meth:`BatchRecipe.finish` applies them on the device, so the
random stream is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from medp2p.data.augment import AugmentParams, AugmentSpec, apply_augment, draw_augment, monai_transforms
from medp2p.data.codecs import BACKGROUND
from medp2p.data.corruption import corruption_patches, corruption_regions
from medp2p.data.geometry import MIRROR_DIMS
from medp2p.data.sampling import BODY, SliceBatcher
from medp2p.plan import Plan
from medp2p.types import MASK, REGION, SOURCE, TARGET

#: Batch entries of draws not applied yet (they travel from the worker to the device).
PENDING = "pending"
_MONAI_SEEDS = "monai_seeds"


@dataclass(frozen=True)
class BatchRecipe:
    """What is done to each drawn batch, as plain values (it is pickled into the DataLoader workers).

    Args:
        labels: the target is a label map (nearest-neighbour resampling).
        region: inpainting: void a drawn region and give it to the generator as channels.
        context_slices, n_sources: the sample's layout.
        kinds, box_fraction: the corruptions drawn (``inpaint.*``).
        jitter_target: the target is the source image and gets its intensity jitter.
        augment: the built-in augmentation's strengths.
        augment_here: apply the draws where they are drawn (CPU training), else on the device.
        monai: MONAI dictionary transforms (``augment.monai``), after the built-in augmentation.
    """

    labels: bool
    region: bool
    context_slices: int
    n_sources: int
    kinds: tuple[str, ...]
    box_fraction: tuple[float, float]
    jitter_target: bool
    augment: AugmentSpec
    augment_here: bool = True
    monai: tuple[dict[str, Any], ...] = ()
    _monai: list[Any] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(cls, plan: Plan, augment: AugmentSpec | None = None, on_device: bool = False) -> BatchRecipe:
        """The recipe of a plan; ``on_device``: leave the draws to be applied on the training device."""
        cfg = plan.config
        spec = augment or AugmentSpec(**cfg.augment.model_dump(exclude={"monai"}), flip_dim=MIRROR_DIMS[plan.prep.axis])
        lo, hi = cfg.inpaint.box_fraction
        return cls(
            labels=plan.codec.labels, region=plan.prep.region, context_slices=plan.prep.context_slices, n_sources=plan.prep.n_sources,
            kinds=tuple(cfg.inpaint.kinds), box_fraction=(lo, hi), jitter_target=plan.task.target_is_source, augment=spec,
            augment_here=not on_device, monai=tuple(cfg.augment.monai),
        )  # fmt: skip

    def __call__(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw this batch's corruption, augmentation and MONAI seeds; apply them unless the device will."""
        b = batch[SOURCE].shape[0]
        if self.region and batch[SOURCE].dim() == 5:  # 3D patches
            batch[REGION] = corruption_patches(batch[BODY], self.kinds, self.box_fraction, gen)
        elif self.region:
            batch[REGION] = corruption_regions(batch[BODY], self.context_slices, self.kinds, self.box_fraction, gen)
        batch.update(draw_augment(b, self.augment, gen).as_dict())
        if self.monai:
            batch[_MONAI_SEEDS] = torch.randint(0, 2**31 - 1, (b, len(self.monai)), generator=gen)
        batch[PENDING] = torch.ones(())
        return self.finish(batch) if self.augment_here else batch

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Apply the pending draws (on the batch's device) and lay the batch out for the step."""
        if PENDING not in batch:
            return batch
        params = AugmentParams.from_dict(batch)
        depth = batch[SOURCE].shape[2] if batch[SOURCE].dim() == 5 else None  # 3D patches (B, C, D, H, W)
        fold = _folded if depth is not None else _same
        images = {SOURCE: fold(batch[SOURCE]), TARGET: fold(batch[TARGET])}
        labels: dict[str, torch.Tensor] = {}  # the body only places the boxes: it is not augmented
        if MASK in batch:
            labels[MASK] = fold(batch[MASK])
        if self.labels:
            labels[TARGET] = images.pop(TARGET)
        if REGION in batch:
            labels[REGION] = batch[REGION]  # (B, 2k+1, H, W), or (B, D, H, W) for patches
        jitter = (SOURCE, TARGET) if self.jitter_target else (SOURCE,)
        # a patch's slices are channels here: each sample's flip, in-plane warp and intensity jitter
        # are the same for every slice of it (nnU-Net also rotates anisotropic patches in-plane only)
        images, labels = apply_augment(images, labels, jitter, self.augment, params)
        if depth is not None:
            images = {k: _unfolded(v, depth) for k, v in images.items()}
            labels = {k: v if k == REGION else _unfolded(v, depth) for k, v in labels.items()}
        out = {SOURCE: images[SOURCE], TARGET: images[TARGET] if TARGET in images else labels[TARGET]}
        if MASK in labels:
            out[MASK] = labels[MASK]
        if self.monai:
            out = self._apply_monai(out, batch[_MONAI_SEEDS])
        if self.region:
            regions = labels[REGION]
            fill = torch.tensor(BACKGROUND, device=regions.device)
            if depth is not None:  # one region channel over the patch's slices
                regions = regions[:, None]
                voided = torch.where(regions > 0, fill, out[SOURCE])
                out[SOURCE], out[REGION] = torch.cat([voided, regions], dim=1), regions
                return out
            voided = torch.where(regions.repeat(1, self.n_sources, 1, 1) > 0, fill, out[SOURCE])
            out[SOURCE] = torch.cat([voided, regions], dim=1)
            out[REGION] = regions[:, self.context_slices : self.context_slices + 1]
        return out

    def _apply_monai(self, out: dict[str, torch.Tensor], seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each sample through the MONAI transforms, each transform seeded from the batch's draws."""
        if not self._monai:
            self._monai.extend(monai_transforms(self.monai))
        samples = []
        for i in range(out[SOURCE].shape[0]):
            sample: dict[str, Any] = {k: v[i] for k, v in out.items()}
            for t, seed in zip(self._monai, seeds[i].tolist(), strict=True):
                if hasattr(t, "set_random_state"):
                    t.set_random_state(seed=int(seed))
                sample = t(sample)
            samples.append(sample)
        return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]).to(out[k].dtype) for k in out}


def _folded(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W) -> (B, C * D, H, W)``: a patch's slices as channels, for the in-plane augmentation."""
    return t.flatten(1, 2)


def _unfolded(t: torch.Tensor, depth: int) -> torch.Tensor:
    """``(B, C * D, H, W) -> (B, C, D, H, W)``."""
    return t.reshape(t.shape[0], -1, depth, *t.shape[2:])


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def training_batch(batcher: SliceBatcher, aug: AugmentSpec, plan: Plan, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw a batch from one sequential generator, corrupt and augment it: the step's batch (tests, simple loops).

    Example:
        >>> batch = training_batch(batcher, AugmentSpec(), plan, gen)
        >>> batch["source"].shape
        torch.Size([4, 3, 256, 256])
    """
    return BatchRecipe.of(plan, aug)(batcher.next(), gen)
