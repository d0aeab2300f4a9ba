"""Checkpoints and what a config builds: the generator, the discriminator and the data preparation.

A checkpoint is a dict of tensors and plain values (state dicts of both networks, optimisers,
schedulers, step, RNG states, the resolved config), so it loads with
``torch.load(path, weights_only=True)``. Writes are atomic: a crash mid-write leaves the previous
checkpoint intact.

Example:
    >>> ckpt = load_checkpoint("runs/mri2ct/best.pt")
    >>> generator, prep = generator_from_checkpoint(ckpt)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medp2p.config import Config, config_from_dict
from medp2p.data.case_reader import CaseKeys
from medp2p.data.prepare import Prep
from medp2p.io.atomic import atomic_path
from medp2p.models import build_discriminator, build_generator
from medp2p.tasks import get_task

#: Bumped when the checkpoint layout changes.
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not a medp2p checkpoint; the message names the file."""


def generator_kwargs(cfg: Config, in_channels: int) -> tuple[str, dict[str, Any]]:
    """Registry name and keyword arguments of the generator a config describes."""
    m = cfg.model
    final = "none" if get_task(cfg.task).target_kind == "mask" else "tanh"
    common = {"in_channels": in_channels, "out_channels": 1, "base_channels": m.base_channels, "norm": m.norm, "final_activation": final}
    if m.generator == "unet":
        return "unet", {**common, "depth": m.depth, "dropout": m.dropout}
    return "resnet", {**common, "blocks": m.resnet_blocks, "dropout": 0.0}


def build_generator_for(cfg: Config, prep: Prep) -> nn.Module:
    name, kwargs = generator_kwargs(cfg, prep.in_channels)
    return build_generator(name, **kwargs)


def build_discriminator_for(cfg: Config, prep: Prep) -> nn.Module:
    m = cfg.model
    return build_discriminator(
        m.discriminator,
        in_channels=prep.in_channels + 1,
        base_channels=m.disc_channels,
        layers=m.disc_layers,
        norm=m.disc_norm,
        spectral_norm=m.spectral_norm,
    )


def size_multiple(cfg: Config) -> int:
    """The generator's input size multiple: ``2**depth`` for the U-Net, 4 for the ResNet."""
    return 2**cfg.model.depth if cfg.model.generator == "unet" else 4


def prep_from_config(cfg: Config, for_training: bool = True) -> Prep:
    """The data preparation a config describes (the crop size only matters for training)."""
    task = get_task(cfg.task)
    d = cfg.data
    return Prep(
        source_keys=tuple(d.source_keys or task.source_keys),
        target_key=d.target_key or task.target_key,
        target_kind=task.target_kind,
        mask_key=d.mask_key,
        axis=d.axis,
        context_slices=d.context_slices,
        spacing_mm=d.spacing_mm,
        mr_percentiles=tuple(d.mr_percentiles),
        size_multiple=size_multiple(cfg),
        min_size=tuple(d.image_size) if for_training else (1, 1),
        empty_slice_weight=d.empty_slice_weight,
        slice_range=tuple(d.slice_range) if d.slice_range else None,
        region=task.region_key is not None,
        source_channels=tuple(d.source_channels) if d.source_channels else None,
    )


def case_keys_for(cfg: Config, hint: str = "set") -> CaseKeys:
    """The case keys a config's task reads (``data.source_keys`` / ``target_key`` / ``mask_key`` applied).

    ``hint``: ``set`` for training and validation (a missing key suggests ``--set data.*``),
    ``model`` for prediction with a trained model (its keys are fixed).
    """
    d = cfg.data
    return get_task(cfg.task).case_keys(d.source_keys, d.target_key, d.mask_key, d.source_channels, hint)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically to ``path`` (temporary file beside it, then rename).

    torch writes through a Python file object, so a full disk or a file size limit surfaces as
    its OSError (:class:`~medp2p.io.errors.VolumeWriteError` naming ``path``), not as torch's
    ``RuntimeError``; the previous checkpoint at ``path`` stays intact.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save({"version": CHECKPOINT_VERSION, **state}, fh)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) onto the CPU.

    Args:
        path: a ``.pt`` file, or a run folder (its ``best.pt`` when present, else ``last.pt``).

    Raises:
        CheckpointError: missing, unreadable, or not a medp2p checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "best.pt", path / "last.pt") if p.is_file()]
        if not found:
            raise CheckpointError(f"{path}: no best.pt or last.pt in this run folder")
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "generator" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a medp2p checkpoint (no generator weights and config)")
    ckpt["path"] = str(path)
    return ckpt


def generator_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, Prep, Config]:
    """Rebuild the trained generator, its data preparation and its config from a loaded checkpoint."""
    cfg = config_from_dict(ckpt["config"])
    prep = prep_from_config(cfg, for_training=False)
    generator = build_generator_for(cfg, prep)
    generator.load_state_dict(ckpt["generator"])
    return generator, prep, cfg
