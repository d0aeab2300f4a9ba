"""Checkpoints: written atomically, loaded safely, and the plan they were trained with.

A checkpoint is a dict of tensors and plain values (state dicts of both networks, optimisers,
schedulers, step, RNG states, the resolved config), so it loads with
``torch.load(path, weights_only=True)``. Writes are atomic: a crash mid-write leaves the previous
checkpoint intact.

Example:
    >>> ckpt = load_checkpoint("runs/mri2ct/best.pt")
    >>> generator, plan = generator_from_checkpoint(ckpt)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medp2p.config import config_from_dict
from medp2p.io.atomic import atomic_path
from medp2p.plan import Plan, build_plan

#: Bumped when the checkpoint layout changes.
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not a medp2p checkpoint; the message names the file."""


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


def plan_from_checkpoint(ckpt: dict[str, Any]) -> Plan:
    """The plan of a loaded checkpoint, from the resolved config it carries."""
    return build_plan(config_from_dict(ckpt["config"]))


def generator_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, Plan]:
    """Rebuild the trained generator and its plan from a loaded checkpoint."""
    plan = plan_from_checkpoint(ckpt)
    generator = plan.build_generator()
    generator.load_state_dict(ckpt["generator"])
    return generator, plan
