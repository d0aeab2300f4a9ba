"""``train``: the whole run, top to bottom: folder, data, networks, loop, validation, checkpoints.

The loop is plain PyTorch (see :mod:`medp2p.train.steps`). Everything random (weight init,
slice sampling, augmentation, corruption, dropout) comes from seeded generators whose states are
checkpointed, so ``--resume`` continues bit-identically on the same machine.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from medp2p.checkpoint import (
    build_discriminator_for,
    build_generator_for,
    case_keys_for,
    load_checkpoint,
    prep_from_config,
    save_checkpoint,
)
from medp2p.config import Config, TrainConfig, config_from_dict, save_config
from medp2p.data import load_datalist
from medp2p.data.augment import AugmentSpec, augment
from medp2p.data.case_reader import CaseKeys
from medp2p.data.checks import ReadOptions
from medp2p.data.corruption import corruption_regions
from medp2p.data.geometry import MIRROR_DIMS
from medp2p.data.prepare import BACKGROUND, Prep, PrepareCased
from medp2p.data.sampling import BODY, SliceBatcher
from medp2p.io.atomic import atomic_path, remove_outputs
from medp2p.models.precision import memory_format, resolve_device, resolve_precision, resolved_settings
from medp2p.models.runtime import reuse_freed_memory
from medp2p.tasks import get_task
from medp2p.tasks.predict import RunOptions
from medp2p.train.distributed import init_distributed, weights_digest
from medp2p.train.logs import MetricsLog
from medp2p.train.steps import LossSpec, Pix2PixStep
from medp2p.train.validation import ValCase, load_val_cases, validate
from medp2p.types import MASK, REGION, SOURCE, TARGET

#: Files and folders a run writes; ``--overwrite`` removes exactly these.
RUN_ARTIFACTS = ("config.yaml", "run.json", "versions.json", "last.pt", "best.pt", "metrics.csv", "tb", "previews", "ddp.json")


class RunExistsError(FileExistsError):
    """The run folder already holds a run and neither resume nor overwrite was asked for."""


@dataclass
class TrainResult:
    """What a finished :func:`train` call reports."""

    run_dir: Path
    step: int
    losses: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("medp2p", "torch", "monai", "numpy", "nibabel", "SimpleITK", "pydicom", "scikit-image"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def _prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(f"{out / 'last.pt'}: nothing to resume; start the run without --resume")
        # A run killed mid-write leaves its temporary file (".last.pt.<random>.tmp.pt") behind.
        for name in RUN_ARTIFACTS:
            for stale in out.glob(f".{name}.*.tmp*"):
                stale.unlink()
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunExistsError(f"{out}: already holds files; pass --resume to continue the run or --overwrite to replace it")
        remove_outputs(out, RUN_ARTIFACTS)
    out.mkdir(parents=True, exist_ok=True)


def _split_cases(cfg: Config, data: str | Path, val_data: str | Path | None) -> tuple[list[dict], list[dict], dict, dict]:
    """Training and validation cases, and the datalists they come from (their declared label values)."""
    datalist = load_datalist(data)
    training = datalist.get("training", [])
    if val_data is not None:
        vl = load_datalist(val_data)
        return training, vl.get("validation") or vl.get("training", []), datalist, vl
    if datalist.get("validation"):
        return training, datalist["validation"], datalist, datalist
    n = cfg.data.val_cases
    if n and n >= len(training):
        raise ValueError(f"{data}: data.val_cases={n} leaves no training case out of {len(training)}")
    return (training[:-n], training[-n:], datalist, datalist) if n else (training, [], datalist, datalist)


def source_channels_of(cfg: Config, cases: list[dict]) -> Config:
    """Fix ``data.source_channels`` from the cases: a list-valued source key is that many images.

    Every case must hold the same number of images per source key; the first that differs is
    named. A config that already states the counts must agree with the data.
    """
    keys = cfg.data.source_keys or []
    counts: list[int] | None = None
    first = ""
    for case in cases:
        here = [len(case[k]) if isinstance(case.get(k), list) else 1 for k in keys]
        if counts is None:
            counts, first = here, str(case["id"])
        elif here != counts:
            raise ValueError(
                f"case {case['id']!r}: its source keys {keys} hold {here} image(s), case {first!r}'s hold {counts}; "
                "every case needs the same number of images per key"
            )
    stated = cfg.data.source_channels
    if stated is not None and counts is not None and list(stated) != counts:
        raise ValueError(f"data.source_channels={list(stated)}, but the cases' source keys {keys} hold {counts} image(s)")
    if counts is None or all(n == 1 for n in counts):
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"source_channels": counts})})


def _load_training_cases(cases: list[dict], prep: Prep, keys: CaseKeys, datalist: dict, options: ReadOptions, workers: int) -> list:
    from monai.data import CacheDataset

    try:
        transform = PrepareCased(prep, keys, datalist, options)
        ds = CacheDataset(data=cases, transform=transform, cache_rate=1.0, num_workers=workers or None, copy_cache=False, progress=False)
        return [ds[i]["case"] for i in range(len(ds))]
    except RuntimeError as exc:  # MONAI wraps a transform's error as "applying transform ...": show the cause
        cause: BaseException = exc
        while isinstance(cause, RuntimeError) and str(cause).startswith("applying transform") and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is exc:
            raise
        raise cause from None


def make_optimizer(net: torch.nn.Module, t: TrainConfig) -> torch.optim.Adam:
    """Adam as pix2pix sets it up (``train.lr``, ``beta1``, ``beta2``).

    The fused kernel (one pass over each parameter's weights and moments instead of several
    element-wise ops) is used on CPU and CUDA: the same update, and on a 2-core CPU the optimiser
    step of a 54M-parameter U-Net costs a fraction of the multi-tensor one (docs/scale.md).
    """
    params = list(net.parameters())
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused or None)


def _lr_lambda(schedule: dict[str, int], decay_start: float):
    """Constant, then linear decay to 0 over ``schedule["steps"]`` (read at every call: a time budget may shorten it)."""

    def factor(step: int) -> float:
        total = schedule["steps"]
        start = int(total * decay_start)
        if step < start:
            return 1.0
        return max(0.0, (total - step) / max(1, total - start))

    return factor


# Steps timed to fit a `train.minutes` budget: the first two (warm-up, allocator, oneDNN caches)
# are skipped, the next eight give a first fit, refined every 50 steps until the lr decay is near;
# the fitted schedule keeps a 3% margin.
_WARMUP_STEPS, _TIMED_STEPS, _REFIT_EVERY, _BUDGET_MARGIN = 2, 8, 50, 0.97


def fit_schedule(budget_s: float, elapsed_s: float, step: int, step_s: float, max_steps: int) -> int:
    """The schedule length that ends a run within ``budget_s``: ``step`` done after ``elapsed_s``,
    ``step_s`` per further step, never more than ``max_steps`` nor less than ``step + 1``.
    """
    fits = int(max(0.0, budget_s * _BUDGET_MARGIN - elapsed_s) / max(step_s, 1e-9))
    return max(step + 1, min(max_steps, step + fits))


def loss_spec(cfg: Config) -> LossSpec:
    """The resolved loss weights and options of ``cfg`` (task defaults filled in)."""
    task = get_task(cfg.task)
    ls = cfg.loss
    return LossSpec(
        l1=float(ls.l1),
        gan=float(ls.gan),
        dice=float(ls.dice),
        bce=float(ls.bce),
        gan_mode=ls.gan_mode,
        l1_in_mask=ls.l1_in_mask,
        region_weight=ls.region_weight,
        logits=task.target_kind == "mask",
    )


def _better(value: float, best: float | None, higher: bool) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if higher else value < best)


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

    Raises:
        RunExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite``.
        NonFiniteLossError: a loss became NaN/Inf (``last.pt`` keeps the last good state).

    Example:
        >>> cfg = load_config("mri2ct", "configs/tiny.yaml")
        >>> train(cfg, "phantom/", "runs/tiny").val_metrics["mae"]
    """
    started = time.perf_counter()
    out = Path(out)
    ddp = init_distributed(device or (cfg.train.device if cfg is not None else "auto"))
    if ddp.main:
        _prepare_run_dir(out, resume, overwrite)
    ddp.barrier()
    ckpt = load_checkpoint(out / "last.pt") if resume else None
    if ckpt is not None:
        cfg = config_from_dict(ckpt["config"])
        run_info = json.loads((out / "run.json").read_text())
        data = data if data is not None else run_info["data"]
        val_data = val_data if val_data is not None else run_info.get("val_data")
        if read_options is None:
            read_options = ReadOptions(**run_info.get("read_options", {}))
    read_options = read_options or ReadOptions()
    if cfg is None or data is None:
        raise ValueError("train needs a config and data (or resume=True on a run folder)")
    if device is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": device})})
    task = get_task(cfg.task)
    t = cfg.train
    # the schedule's length: train.steps, or what fits train.minutes (fitted in the first run, kept on resume)
    schedule = {"steps": t.steps, "fitted": 0}
    if ckpt is not None and "schedule" in ckpt:
        schedule = dict(ckpt["schedule"])
    limit = stop_step if stop_step is not None else t.steps
    stop = min(limit, schedule["steps"])

    # --- data -----------------------------------------------------------------------------------
    train_cases, val_cases_raw, datalist, val_datalist = _split_cases(cfg, data, val_data)
    if not train_cases:
        raise ValueError(f"{data}: no training cases")
    cfg = source_channels_of(cfg, train_cases + val_cases_raw)
    prep = prep_from_config(cfg)
    keys = case_keys_for(cfg)
    cases = _load_training_cases(train_cases, prep, keys, datalist, read_options, cfg.data.num_workers)
    val_prep = prep_from_config(cfg, for_training=False)
    val_cases: list[ValCase] = load_val_cases(val_cases_raw, val_prep, task, cfg.inpaint.eval_seed, keys, val_datalist, read_options)
    # what the sources looked like, so predict can refuse a CT given to an MR model (and back)
    profile = {"source_is_ct": sum(c.source_is_ct for c in cases) * 2 >= len(cases)}

    # --- networks and optimisers ----------------------------------------------------------------
    torch_device = resolve_device(t.device)
    if ddp.enabled and torch_device.type == "cuda":
        torch_device = torch.device("cuda", ddp.local_rank)
    dtype = resolve_precision(torch_device, t.precision)
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    # each rank its own slice stream (rank 0's is the single-process stream)
    gen = torch.Generator().manual_seed(t.seed + 1_000_003 * ddp.rank)
    G = build_generator_for(cfg, prep).to(torch_device)
    use_gan = cfg.loss.gan > 0
    D = build_discriminator_for(cfg, prep).to(torch_device) if use_gan else None
    layout = memory_format(torch_device, dtype, t.channels_last, training=True)
    G = G.to(memory_format=layout)
    if D is not None:
        D = D.to(memory_format=layout)
    opt_g = make_optimizer(G, t)
    opt_d = make_optimizer(D, t) if D is not None else None
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, _lr_lambda(schedule, t.decay_start))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, _lr_lambda(schedule, t.decay_start)) if opt_d is not None else None
    scaler = torch.amp.GradScaler(torch_device.type) if dtype == torch.float16 else None
    step, best = 0, {}
    if ckpt is not None:
        G.load_state_dict(ckpt["generator"])
        opt_g.load_state_dict(ckpt["opt_g"])
        sched_g.load_state_dict(ckpt["sched_g"])
        if D is not None:
            D.load_state_dict(ckpt["discriminator"])
            opt_d.load_state_dict(ckpt["opt_d"])
            sched_d.load_state_dict(ckpt["sched_d"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step, best = int(ckpt["step"]), dict(ckpt.get("best") or {})
        rng = ckpt["rng"]
        if len(rng["data"]) == ddp.world:
            torch.set_rng_state(rng["torch"][ddp.rank])
            gen.set_state(rng["data"][ddp.rank])
            if torch_device.type == "cuda" and rng["cuda"][ddp.rank] is not None:
                torch.cuda.set_rng_state(rng["cuda"][ddp.rank])
        else:
            warnings.warn(
                f"{out / 'last.pt'}: saved by {len(rng['data'])} process(es), resumed by {ddp.world}: "
                "random streams restart from the seed, so the run is not bit-identical to an uninterrupted one"
            )
            gen.manual_seed(t.seed + 1_000_003 * ddp.rank + step)
    elif ddp.rank:
        torch.manual_seed(t.seed + 1_000_003 * ddp.rank)  # per-rank dropout masks
    G_run = torch.compile(G) if t.compile else G
    D_run = torch.compile(D) if (t.compile and D is not None) else D
    if ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch_device.index] if torch_device.type == "cuda" else None
        G_run = DDP(G_run, device_ids=ids)
        D_run = DDP(D_run, device_ids=ids) if D_run is not None else None
    trainer = Pix2PixStep(G_run, D_run, opt_g, opt_d, loss_spec(cfg), torch_device, dtype, scaler, layout, ddp.any)
    batcher = SliceBatcher(cases, t.batch_size, tuple(cfg.data.image_size), cfg.data.context_slices, gen)
    aug = AugmentSpec(**cfg.augment.model_dump(), flip_dim=MIRROR_DIMS[cfg.data.axis])
    val_options = RunOptions(torch_device, dtype, t.val_batch_size, layout == torch.channels_last)  # G's own layout

    # --- run folder -----------------------------------------------------------------------------
    if ckpt is None and ddp.main:
        save_config(cfg, out / "config.yaml")
        _write_json(out / "versions.json", _versions())
        _write_json(
            out / "run.json",
            {
                "task": cfg.task,
                "data": str(Path(data).resolve()),
                "val_data": str(Path(val_data).resolve()) if val_data else None,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "read_options": {"affine_from": read_options.affine_from, "series_uid": read_options.series_uid},
                "resolved": resolved_settings(torch_device, dtype, layout, ddp.world),
            },
        )
    log = MetricsLog(out, resume_step=step, tensorboard=t.tensorboard, enabled=ddp.main)

    def gathered_rng() -> dict[str, list]:
        """Every rank's random states (a collective), so a resume continues every stream."""
        mine = (torch.get_rng_state(), gen.get_state(), torch.cuda.get_rng_state() if torch_device.type == "cuda" else None)
        states = ddp.gather(mine)
        return {"torch": [s[0] for s in states], "data": [s[1] for s in states], "cuda": [s[2] for s in states]}

    def state(rng: dict[str, list]) -> dict[str, Any]:
        return {
            "generator": G.state_dict(),
            "discriminator": D.state_dict() if D is not None else None,
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict() if opt_d is not None else None,
            "sched_g": sched_g.state_dict(),
            "sched_d": sched_d.state_dict() if sched_d is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": step,
            "config": cfg.to_dict(),
            "best": best,
            "world_size": ddp.world,
            "rng": rng,
            "schedule": dict(schedule),
            "data_profile": profile,
        }

    def run_validation(rng: dict[str, list]) -> dict[str, float]:
        nonlocal best
        if not val_cases or not ddp.main:
            return {}
        metrics = validate(G, val_cases, val_prep, task, val_options, out / "previews", t.preview_count, step)
        G.train()
        log.log(step, "val", metrics)
        value = metrics.get(task.best_metric, float("nan"))
        if _better(value, best.get("value"), task.higher_is_better):
            best = {"metric": task.best_metric, "value": value, "step": step}
            save_checkpoint(state(rng), out / "best.pt")
        return metrics

    # --- the loop -------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    G.train()
    if D is not None:
        D.train()
    losses: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    # In a log file (no terminal), a line every 30 s instead of ten a second.
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=stop,
        initial=min(step, stop),
        disable=not progress or not ddp.main,
        desc=f"train {cfg.task}",
        unit="step",
        dynamic_ncols=True,
        mininterval=0.1 if interactive else 30.0,
    )
    first = step
    timing_from: float | None = None
    fit_at = first + _WARMUP_STEPS + _TIMED_STEPS
    # seconds per step, timed once over the same steps the budget uses, for on_timing
    probe_from: float | None = None
    probe_at = first + _WARMUP_STEPS + _TIMED_STEPS if on_timing is not None and ckpt is None else -1
    try:
        with reuse_freed_memory():  # activations reuse malloc's heap (medp2p.models.runtime)
            while step < stop:
                if t.minutes is not None and not schedule["fitted"] and step == first + _WARMUP_STEPS:
                    timing_from = time.perf_counter()
                if step == first + _WARMUP_STEPS and probe_at > 0:
                    probe_from = time.perf_counter()
                if probe_from is not None and step == probe_at and on_timing is not None:
                    on_timing((time.perf_counter() - probe_from) / _TIMED_STEPS, schedule["steps"])
                    probe_from = None
                if timing_from is not None and step == fit_at:
                    # Fit, then refit every _REFIT_EVERY steps with the longer average (checkpoints and
                    # validations included) while the lr is still constant; every rank uses the slowest
                    # rank's figures, so all fit the same schedule.
                    now = time.perf_counter()
                    times = ddp.gather((now - started, (now - timing_from) / (step - first - _WARMUP_STEPS)))
                    elapsed, step_s = max(x[0] for x in times), max(x[1] for x in times)
                    fitted = fit_schedule(60.0 * t.minutes, elapsed, step, step_s, t.steps)
                    if t.decay_start > 0:  # the decay must not start in the past
                        fitted = max(fitted, math.ceil(step / t.decay_start))
                    if fitted != schedule["steps"]:
                        log.log(step, "train", {"schedule_steps": fitted, "step_s": step_s})
                    schedule.update(steps=fitted, fitted=1)
                    stop = min(limit, fitted)
                    bar.total = stop
                    bar.refresh()
                    fit_at = step + _REFIT_EVERY
                    if fit_at + _REFIT_EVERY >= int(fitted * t.decay_start):
                        timing_from = None  # the decay starts soon: the schedule is final
                batch = _augmented_batch(batcher, aug, cfg, prep, gen)
                losses = trainer(step, batch)
                sched_g.step()
                if sched_d is not None:
                    sched_d.step()
                step += 1
                bar.update(1)
                if step % t.log_every == 0 or step == stop:
                    log.log(step, "train", {**losses, "lr": sched_g.get_last_lr()[0]})
                    bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items() if k in ("loss_G", "loss_D")}, refresh=False)
                validate_now = step % t.val_every == 0 or step == stop
                save_now = step % t.checkpoint_every == 0 or step == stop
                if validate_now or save_now:
                    rng = gathered_rng()
                    if validate_now:
                        val_metrics = run_validation(rng) or val_metrics
                    if save_now and ddp.main:
                        save_checkpoint(state(rng), out / "last.pt")
                    ddp.barrier()
        if ddp.enabled:
            _check_replicas(ddp, G, D, out)
    finally:
        bar.close()
        log.close()
    return TrainResult(out, step, losses, val_metrics, best)


def _check_replicas(ddp, G: torch.nn.Module, D: torch.nn.Module | None, out: Path) -> None:
    """Under torchrun: every rank must hold the same weights; rank 0 records the digests in ``ddp.json``."""
    digests = ddp.gather({"generator": weights_digest(G), "discriminator": weights_digest(D) if D is not None else None})
    in_sync = all(d == digests[0] for d in digests)
    if ddp.main:
        _write_json(out / "ddp.json", {"world_size": ddp.world, "in_sync": in_sync, "digests": digests})
    if not in_sync:
        raise RuntimeError(f"ranks hold different weights after training (see {out / 'ddp.json'})")


def _augmented_batch(batcher: SliceBatcher, aug: AugmentSpec, cfg: Config, prep: Prep, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw a batch, corrupt it (inpainting), and augment source, target and masks together."""
    batch = batcher.next()
    images = {SOURCE: batch[SOURCE], TARGET: batch[TARGET]}
    labels: dict[str, torch.Tensor] = {}  # the body only places the boxes: it is not augmented
    if MASK in batch:
        labels[MASK] = batch[MASK]
    if prep.target_kind == "mask":
        labels[TARGET] = images.pop(TARGET)
    if prep.region:
        k = prep.context_slices
        regions = corruption_regions(batch[BODY], k, tuple(cfg.inpaint.kinds), tuple(cfg.inpaint.box_fraction), gen)
        labels[REGION] = regions
    # Inpainting's target is the source image itself: it gets the source's intensity jitter too.
    jitter = (SOURCE, TARGET) if prep.target_kind == "mr" else (SOURCE,)
    images, labels = augment(images, labels, jitter, aug, gen)
    out = {SOURCE: images[SOURCE], TARGET: images.get(TARGET, labels.get(TARGET))}
    if MASK in labels:
        out[MASK] = labels[MASK]
    if prep.region:
        regions = labels[REGION]
        n_src = prep.n_sources
        voided = torch.where(regions.repeat(1, n_src, 1, 1) > 0, torch.tensor(BACKGROUND), out[SOURCE])
        out[SOURCE] = torch.cat([voided, regions], dim=1)
        out[REGION] = regions[:, prep.context_slices : prep.context_slices + 1]
    return out
