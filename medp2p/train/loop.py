"""The training loop: batches through the trainer, logs, validation, checkpoints, the time budget."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from medp2p.data.sampling import SliceBatches, StepSampler
from medp2p.device import reuse_freed_memory, weights_digest
from medp2p.infer.checkpoint import save_checkpoint
from medp2p.train.batches import BatchRecipe
from medp2p.train.budget import TimeBudget
from medp2p.train.data import TrainingData
from medp2p.train.folder import write_json
from medp2p.train.logs import MetricsLog
from medp2p.train.trainer import Trainer
from medp2p.train.validation import mean_metrics, validation_rows


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
    """Validation (spread over the ranks; ``best.pt`` on a better score) and ``last.pt``, with every rank's random states.

    Each rank predicts every ``world``-th validation case; rank 0 gathers the rows, logs the means
    and writes the checkpoints while the others wait (``train.ddp_timeout_min``).
    """
    rng = trainer.rng_states()
    metrics: dict[str, float] = {}
    plan, t, ddp = trainer.plan, trainer.plan.config.train, trainer.ddp
    if validate_now and data.val_cases:
        mine = data.val_cases[ddp.rank :: ddp.world]
        previews = (out / "previews") if ddp.main else None
        rows = validation_rows(
            trainer.G, mine, plan.inference_prep, plan.task, trainer.val_options, previews, t.preview_count, trainer.step
        )
        trainer.G.train()
        rows = ddp.all_gather_rows(rows) if ddp.enabled else rows
        if ddp.main:
            metrics = mean_metrics(rows)
            log.log(trainer.step, "val", metrics)
            if previews is not None:  # the PNGs this validation wrote, also as TensorBoard images
                log.log_images(trainer.step, sorted(previews.glob(f"step{trainer.step:07d}_*.png")))
            task = plan.task
            value = metrics.get(task.best_metric, float("nan"))
            if _better(value, trainer.best.get("value"), task.higher_is_better):
                trainer.best = {"metric": task.best_metric, "value": value, "step": trainer.step}
                save_checkpoint(trainer.state(rng, data.profile), out / "best.pt")
    if save_now and ddp.main:
        save_checkpoint(trainer.state(rng, data.profile), out / "last.pt")
    ddp.barrier()
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


def make_loader(trainer: Trainer, data: TrainingData) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's batches from the trainer's step on: a DataLoader over the case store.

    ``data.num_workers`` worker processes draw, corrupt and (on a CPU) augment batches ahead of the
    step; on CUDA they hand pinned batches over and augmentation runs on the GPU. Each batch comes
    from its own seeded generator (:class:`~medp2p.data.sampling.SliceBatches`), so the stream is
    the same with any number of workers and a resume continues it exactly.
    """
    plan, t, d = trainer.plan, trainer.plan.config.train, trainer.plan.config.data
    on_device = trainer.device.type != "cpu"
    recipe = BatchRecipe.of(plan, on_device=on_device)
    batches = SliceBatches(
        data.cases,
        t.batch_size,
        (d.image_size[0], d.image_size[1]),
        plan.prep.context_slices,
        t.seed,
        trainer.ddp.rank,
        trainer.ddp.world,
        recipe,
        patch=plan.prep.patch_size,
    )
    workers = d.num_workers
    loader = DataLoader(
        batches, batch_size=None, sampler=StepSampler(trainer.step), num_workers=workers, pin_memory=on_device,
        persistent_workers=workers > 0, prefetch_factor=d.prefetch_factor if workers > 0 else None, worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(t.seed),  # its worker seeds from its own stream, not the global one (exact resume)
    )  # fmt: skip
    for batch in loader:
        batch = {k: v.to(trainer.device, non_blocking=True) for k, v in batch.items()}
        yield recipe.finish(batch)


def cpu_only_tricks(trainer: Trainer) -> contextlib.AbstractContextManager[Any]:
    """What only helps a CPU run (malloc reusing freed memory: :mod:`medp2p.device.allocator`); nothing on a GPU."""
    return reuse_freed_memory() if trainer.device.type == "cpu" else contextlib.nullcontext()


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers share the cores with the step


def _log_step(trainer: Trainer, log: MetricsLog, losses: dict[str, float], waited_s: float, total_s: float, steps: int) -> None:
    values = {**losses, "lr": float(trainer.sched_g.get_last_lr()[0]), "data_wait": waited_s / max(total_s, 1e-9)}
    values["step_s"] = total_s / max(steps, 1)
    if trainer.device.type == "cuda":
        values["cuda_peak_gib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**30
    log.log(trainer.step, "train", values)


def fit(trainer: Trainer, data: TrainingData, out: Path, budget: TimeBudget, stop_at: int, progress: bool = True) -> TrainResult:
    """Train until ``stop_at`` (or the end of the fitted schedule): log, validate, checkpoint as configured.

    Losses are read back from the device only at ``train.log_every`` steps (the step's
    non-finite guard reads one flag); ``data_wait`` in the log is the fraction of time spent
    waiting for batches since the last log line, ``step_s`` the mean wall time of those steps
    (``cuda_peak_gib`` the peak CUDA memory on a GPU).

    Example:
        >>> result = fit(trainer, data, Path("runs/r"), TimeBudget(None, 2000, 0.5, trainer.schedule), 2000)
    """
    t = trainer.plan.config.train
    log = MetricsLog(out, resume_step=trainer.step, tensorboard=t.tensorboard, enabled=trainer.ddp.main)
    losses: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    stop = min(stop_at, trainer.schedule["steps"])
    trainer.train_mode()
    try:
        with _progress_bar(trainer, stop, progress) as bar, cpu_only_tricks(trainer):
            batches, waited, since, since_step = make_loader(trainer, data), 0.0, time.perf_counter(), trainer.step
            while trainer.step < stop:
                if (now := budget.before_step(trainer.step, stop_at)) != stop:
                    stop, bar.total = now, now
                    bar.refresh()
                if budget.refitted:
                    log.log(trainer.step, "train", budget.refitted)
                    budget.refitted = {}
                ask = time.perf_counter()
                batch = next(batches)
                waited += time.perf_counter() - ask
                pending = trainer.advance(batch)
                bar.update(1)
                step = trainer.step
                if step % t.log_every == 0 or step == stop:
                    losses = {k: float(v) for k, v in pending.items()}  # the one read-back of the losses
                    _log_step(trainer, log, losses, waited, time.perf_counter() - since, step - since_step)
                    waited, since, since_step = 0.0, time.perf_counter(), step
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
