"""The training loop: batches through the trainer, logs, validation, checkpoints, the time budget."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medp2p.data.augment import AugmentSpec
from medp2p.data.geometry import MIRROR_DIMS
from medp2p.data.sampling import SliceBatcher
from medp2p.device import reuse_freed_memory, weights_digest
from medp2p.infer.checkpoint import save_checkpoint
from medp2p.train.batches import training_batch
from medp2p.train.budget import TimeBudget
from medp2p.train.data import TrainingData
from medp2p.train.folder import write_json
from medp2p.train.logs import MetricsLog
from medp2p.train.trainer import Trainer
from medp2p.train.validation import validate


@dataclass
class TrainResult:
    """What a finished :func:`~medp2p.train.train` call reports."""

    run_dir: Path
    step: int
    losses: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)


def _better(value: float, best: float | None, higher: bool) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if higher else value < best)


def _validate_and_save(
    trainer: Trainer, data: TrainingData, out: Path, log: MetricsLog, validate_now: bool, save_now: bool
) -> dict[str, float]:
    """Validation (rank 0; ``best.pt`` on a better score) and ``last.pt``, with every rank's random states."""
    rng = trainer.rng_states()
    metrics: dict[str, float] = {}
    plan, t = trainer.plan, trainer.plan.config.train
    if validate_now and data.val_cases and trainer.ddp.main:
        metrics = validate(
            trainer.G, data.val_cases, plan.inference_prep, plan.task, trainer.val_options, out / "previews", t.preview_count, trainer.step
        )
        trainer.G.train()
        log.log(trainer.step, "val", metrics)
        task = plan.task
        value = metrics.get(task.best_metric, float("nan"))
        if _better(value, trainer.best.get("value"), task.higher_is_better):
            trainer.best = {"metric": task.best_metric, "value": value, "step": trainer.step}
            save_checkpoint(trainer.state(rng, data.profile), out / "best.pt")
    if save_now and trainer.ddp.main:
        save_checkpoint(trainer.state(rng, data.profile), out / "last.pt")
    trainer.ddp.barrier()
    return metrics


@contextmanager
def _progress_bar(trainer: Trainer, total: int, progress: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    # In a log file (no terminal), a line every 30 s instead of ten a second.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    bar = tqdm(
        total=total, initial=min(trainer.step, total), disable=not progress or not trainer.ddp.main, desc=f"train {trainer.plan.task.name}",
        unit="step", dynamic_ncols=True, mininterval=interval,
    )  # fmt: skip
    try:
        yield bar
    finally:
        bar.close()


def fit(trainer: Trainer, data: TrainingData, out: Path, budget: TimeBudget, stop_at: int, progress: bool = True) -> TrainResult:
    """Train until ``stop_at`` (or the end of the fitted schedule): log, validate, checkpoint as configured.

    Example:
        >>> result = fit(trainer, data, Path("runs/r"), TimeBudget(None, 2000, 0.5, trainer.schedule), 2000)
    """
    plan, t = trainer.plan, trainer.plan.config.train
    crop = plan.config.data.image_size
    batcher = SliceBatcher(data.cases, t.batch_size, (crop[0], crop[1]), plan.prep.context_slices, trainer.gen)
    aug = AugmentSpec(**plan.config.augment.model_dump(), flip_dim=MIRROR_DIMS[plan.prep.axis])
    log = MetricsLog(out, resume_step=trainer.step, tensorboard=t.tensorboard, enabled=trainer.ddp.main)
    losses: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    stop = min(stop_at, trainer.schedule["steps"])
    trainer.train_mode()
    try:
        with _progress_bar(trainer, stop, progress) as bar, reuse_freed_memory():  # activations reuse malloc's heap
            while trainer.step < stop:
                if (now := budget.before_step(trainer.step, stop_at)) != stop:
                    stop, bar.total = now, now
                    bar.refresh()
                if budget.refitted:
                    log.log(trainer.step, "train", budget.refitted)
                    budget.refitted = {}
                losses = trainer.advance(training_batch(batcher, aug, plan, trainer.gen))
                bar.update(1)
                step = trainer.step
                if step % t.log_every == 0 or step == stop:
                    log.log(step, "train", {**losses, "lr": float(trainer.sched_g.get_last_lr()[0])})
                    bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items() if k in ("loss_G", "loss_D")}, refresh=False)
                validate_now, save_now = step % t.val_every == 0 or step == stop, step % t.checkpoint_every == 0 or step == stop
                if validate_now or save_now:
                    val_metrics = _validate_and_save(trainer, data, out, log, validate_now, save_now) or val_metrics
        if trainer.ddp.enabled:
            check_replicas(trainer, out)
    finally:
        log.close()
    return TrainResult(out, trainer.step, losses, val_metrics, trainer.best)


def check_replicas(trainer: Trainer, out: Path) -> None:
    """Under torchrun: every rank must hold the same weights; rank 0 records the digests in ``ddp.json``."""
    ddp, D = trainer.ddp, trainer.D
    digests = ddp.gather({"generator": weights_digest(trainer.G), "discriminator": weights_digest(D) if D is not None else None})
    in_sync = all(d == digests[0] for d in digests)
    if ddp.main:
        write_json(out / "ddp.json", {"world_size": ddp.world, "in_sync": in_sync, "digests": digests})
    if not in_sync:
        raise RuntimeError(f"ranks hold different weights after training (see {out / 'ddp.json'})")
