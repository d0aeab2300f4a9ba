"""The plan: everything a run needs, built once from ``(Config, Task)``.

The task is looked up here and nowhere else; ``train``, ``infer`` and ``eval`` take the plan:
the case keys to read, the data preparation, the losses, and the two networks' specs.

Example:
    >>> plan = build_plan(load_config("mri2ct", "configs/tiny.yaml"))
    >>> plan.keys.sources, plan.prep.in_channels, plan.losses.l1
    (('mr',), 1, 100.0)
    >>> generator = plan.build_generator()
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from medp2p.config import Config
from medp2p.data.case_reader import CaseKeys
from medp2p.data.codecs import TargetCodec
from medp2p.data.prepare import Prep
from medp2p.models import LossSpec, build_discriminator, build_generator
from medp2p.models.unet3d import unet_strides
from medp2p.tasks import TASKS, Task


@dataclass(frozen=True)
class NetworkSpec:
    """A registry name and the keyword arguments it is built with (:func:`medp2p.models.build_generator`)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """A run's config and task, resolved once into what each stage uses.

    Args:
        config: the resolved config.
        task: the task value (:mod:`medp2p.tasks`).
        keys: what the case reader reads (for training; :meth:`for_model` for a trained model).
        prep: the training preparation (the crop sets the minimum slice size).
        losses: the generator's loss weights and options.
        generator: the generator's registry name and arguments.
        discriminator: the discriminator's, or None when no GAN term is trained.
    """

    config: Config
    task: Task
    keys: CaseKeys
    prep: Prep
    losses: LossSpec
    generator: NetworkSpec
    discriminator: NetworkSpec | None

    @property
    def codec(self) -> TargetCodec:
        """The task's target codec."""
        return self.task.codec

    @property
    def inference_prep(self) -> Prep:
        """The preparation for whole slices (no minimum size: the crop only matters in training)."""
        return replace(self.prep, min_size=(1, 1))

    def for_model(self) -> Plan:
        """The plan of a trained model: its keys are fixed, so a missing key names them (no ``--set`` hint)."""
        return replace(self, keys=replace(self.keys, hint="model"))

    def build_generator(self) -> nn.Module:
        """A freshly initialised generator."""
        return build_generator(self.generator.name, **self.generator.kwargs)

    def build_discriminator(self) -> nn.Module | None:
        """A freshly initialised discriminator, or None without a GAN term."""
        if self.discriminator is None:
            return None
        return build_discriminator(self.discriminator.name, **self.discriminator.kwargs)


def _prep(cfg: Config, task: Task) -> Prep:
    d, m = cfg.data, cfg.model
    lo, hi = d.mr_percentiles
    if m.dims == 3:
        patch = d.patch_dhw
        assert patch is not None  # the config checked
        multiple, crop = 1, (patch[1], patch[2])  # the windows are whole patches: no grid padding but the crop
    else:
        patch, multiple, crop = None, 2**m.depth if m.generator == "unet" else 4, (d.image_size[0], d.image_size[1])
    return Prep(
        source_keys=tuple(d.source_keys or task.source_keys),
        target_key=d.target_key or task.target_key,
        codec=task.codec,
        mask_key=d.mask_key,
        axis=d.axis,
        context_slices=d.context_slices,
        spacing_mm=d.spacing_mm,
        mr_percentiles=(lo, hi),
        size_multiple=multiple,
        min_size=crop,
        empty_slice_weight=d.empty_slice_weight,
        slice_range=(d.slice_range[0], d.slice_range[1]) if d.slice_range else None,
        region=task.region_key is not None,
        source_channels=tuple(d.source_channels) if d.source_channels else None,
        target_window=(d.target_window[0], d.target_window[1]) if d.target_window else None,
        patch_size=patch,
    )


def _losses(cfg: Config, task: Task) -> LossSpec:
    ls = cfg.loss
    return LossSpec(
        l1=float(ls.l1 or 0.0),
        l2=float(ls.l2),
        gan=float(ls.gan or 0.0),
        dice=float(ls.dice or 0.0),
        bce=float(ls.bce or 0.0),
        gan_mode=ls.gan_mode,
        l1_in_mask=ls.l1_in_mask,
        outside_weight=float(ls.outside_weight),
        region_weight=ls.region_weight,
        logits=task.codec.logits,
        aleatoric=float(ls.aleatoric),
    )


def _generator(cfg: Config, task: Task, in_channels: int, out_channels: int) -> NetworkSpec:
    m = cfg.model
    common = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "base_channels": m.base_channels,
        "norm": m.norm,
        "final_activation": task.codec.final_activation,
    }
    if m.dims == 3:
        patch = cfg.data.patch_dhw
        assert patch is not None  # the config checked
        return NetworkSpec("unet3d", {**common, "strides": unet_strides(patch, m.depth), "dropout": m.dropout})
    if m.generator == "unet":
        return NetworkSpec("unet", {**common, "depth": m.depth, "dropout": m.dropout})
    return NetworkSpec("resnet", {**common, "blocks": m.resnet_blocks, "dropout": 0.0})


def _discriminator(cfg: Config, in_channels: int) -> NetworkSpec:
    m = cfg.model
    if m.dims == 3:
        kwargs = {"in_channels": in_channels + 1, "patch_size": cfg.data.patch_dhw, "base_channels": m.disc_channels}
        return NetworkSpec(
            f"{m.discriminator}3d", {**kwargs, "layers": m.disc_layers, "norm": m.disc_norm, "spectral_norm": m.spectral_norm}
        )
    return NetworkSpec(
        m.discriminator,
        {
            "in_channels": in_channels + 1,
            "base_channels": m.disc_channels,
            "layers": m.disc_layers,
            "norm": m.disc_norm,
            "spectral_norm": m.spectral_norm,
        },
    )


def build_plan(cfg: Config) -> Plan:
    """The plan of a resolved config (:func:`medp2p.config.load_config` resolves).

    Example:
        >>> build_plan(load_config("seg")).codec.logits
        True
    """
    task = TASKS[cfg.task]
    d = cfg.data
    prep = _prep(cfg, task)
    losses = _losses(cfg, task)
    return Plan(
        config=cfg,
        task=task,
        keys=task.case_keys(d.source_keys, d.target_key, d.mask_key, d.source_channels),
        prep=prep,
        losses=losses,
        generator=_generator(cfg, task, prep.in_channels, losses.out_channels),
        discriminator=_discriminator(cfg, prep.in_channels) if losses.gan > 0 else None,
    )
