"""``train``: a whole run, top to bottom, in the order nnU-Net's ``run_training`` reads.

Folder, data (read and checked once, fixing what the data decides), trainer (networks,
optimisers, seeded streams), restore, the time budget, the loop. The loop is plain PyTorch
(:mod:`medp2p.train.steps`). Everything random comes from seeded generators whose states are
checkpointed, so ``--resume`` continues bit-identically on the same machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from medp2p.config import Config
from medp2p.data.checks import ReadOptions
from medp2p.data.store import default_cache_dir
from medp2p.device import Dist, init_distributed, resolve_device, resolved_settings
from medp2p.infer.checkpoint import load_checkpoint
from medp2p.train.budget import TimeBudget
from medp2p.train.data import load_training_data
from medp2p.train.folder import RunSettings, prepare_run_dir, record_start, resumed_settings
from medp2p.train.loop import TrainResult, fit
from medp2p.train.trainer import build_trainer, restore


def training_device(name: str, ddp: Dist) -> torch.device:
    """The device a rank trains on: ``train.device`` resolved, one GPU per local rank under torchrun."""
    device = resolve_device(name)
    return torch.device("cuda", ddp.local_rank) if ddp.enabled and device.type == "cuda" else device


def _recorded_device(out: Path) -> str:
    """The device type a run trained on (``run.json``), for resume: ``cuda`` or ``cpu`` (``auto`` if unrecorded)."""
    try:
        resolved = json.loads((out / "run.json").read_text()).get("resolved", {})
        return str(resolved.get("device", "auto")).split(":")[0]
    except (OSError, ValueError):
        return "auto"


def _timeout_of(cfg: Config | None, out: Path, resume: bool) -> float:
    """``train.ddp_timeout_min`` of the config, or of the run being resumed."""
    if cfg is not None:
        return cfg.train.ddp_timeout_min
    try:
        return float(load_checkpoint(out / "last.pt")["config"]["train"].get("ddp_timeout_min", 30.0)) if resume else 30.0
    except Exception:
        return 30.0


def train(
    cfg: Config | None,
    data: str | Path | None,
    out: str | Path,
    val_data: str | Path | None = None,
    stop_step: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
    read_options: ReadOptions | None = None,
    on_timing: Callable[[float, int], None] | None = None,
    cache_dir: str | Path | None = None,
) -> TrainResult:
    """Train pix2pix for ``cfg.task`` on ``data``; write the run into ``out``.

    Args:
        cfg: the resolved config (:func:`medp2p.config.load_config`); ignored on resume, where the
            run's own config is used.
        data: training data, any layout :func:`medp2p.data.load_datalist` reads; on resume, None
            reuses the run's.
        out: the run folder.
        val_data: validation data; else the datalist's ``validation`` section, else the last
            ``data.val_cases`` training cases, else no validation (and no ``best.pt``).
        stop_step: stop after this global step (default ``train.steps``, the schedule length).
        resume: continue from ``out/last.pt`` exactly where it stopped.
        overwrite: replace an existing run in ``out``.
        progress: show a progress bar.
        device: ``auto``, ``cpu`` or ``cuda``, overriding ``train.device`` (also on resume).
        read_options: how volumes are read (``--affine-from``, ``--series-uid``); recorded in
            ``run.json`` and reused on resume.
        on_timing: called once, after a few timed steps, with the seconds per step and the
            schedule's length (the CLI warns when the default model would take hours).
        cache_dir: where the case store goes (default ``$MEDP2P_CACHE``, else ``out``'s parent
            ``/cache``); recorded in ``run.json`` and reused on resume.

    Raises:
        RunExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite``.
        CaseError: a case cannot be used (one line naming the file).
        NonFiniteLossError: a loss became NaN/Inf (``last.pt`` keeps the last good state).

    Example:
        >>> cfg = load_config("mri2ct", "configs/tiny.yaml")
        >>> train(cfg, "phantom/", "runs/tiny").val_metrics["mae"]
    """
    started, out = time.perf_counter(), Path(out)  # the time budget counts reading the data too
    ddp = init_distributed(device or (cfg.train.device if cfg is not None else _recorded_device(out)), _timeout_of(cfg, out, resume))
    if ddp.main:
        prepare_run_dir(out, resume, overwrite)
    ddp.barrier()
    ckpt = load_checkpoint(out / "last.pt") if resume else None
    if ckpt is not None:
        cfg, settings = resumed_settings(out, ckpt, data, val_data, read_options, cache_dir)
        device = device or _recorded_device(out)  # a resumed run keeps its device unless told otherwise
    elif cfg is None or data is None:
        raise ValueError("train needs a config and data (or resume=True on a run folder)")
    else:
        store = default_cache_dir(out, cache_dir)
        settings = RunSettings(str(data), str(val_data) if val_data is not None else None, read_options or ReadOptions(), str(store))
    if device is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": device})})
    cases = load_training_data(cfg, settings.data, settings.val_data, settings.read_options, settings.cache_dir, ddp, progress)
    trainer = build_trainer(cases.plan, training_device(cfg.train.device, ddp), ddp)
    if ckpt is not None:
        restore(trainer, ckpt)
    elif ddp.main:
        resolved = resolved_settings(trainer.device, trainer.dtype, trainer.layout, ddp.world)
        record_start(out, cases.plan.config, settings, resolved, cases.splits)
    t = cfg.train
    budget = TimeBudget(
        t.minutes, t.steps, t.decay_start, trainer.schedule, trainer.step, ddp, on_timing if ckpt is None else None, started
    )
    return fit(trainer, cases, out, budget, stop_step if stop_step is not None else t.steps, progress)
