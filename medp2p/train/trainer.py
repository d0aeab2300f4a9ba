"""The trainer: networks, optimisers, schedules and the seeded random streams of one run, built from a plan.

``build_trainer(plan, device)`` builds what ``medp2p train`` trains (benchmarks use the same);
``restore(trainer, checkpoint)`` continues a run exactly; ``trainer.state(...)`` is what a
checkpoint holds.

Example:
    >>> trainer = build_trainer(build_plan(load_config("mri2ct", "configs/tiny.yaml")), torch.device("cpu"))
    >>> losses = trainer.step_fn(0, batch)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medp2p.config import TrainConfig
from medp2p.device import Dist, memory_format, resolve_precision
from medp2p.device.precision import configure_backends
from medp2p.infer.volume import RunOptions
from medp2p.plan import Plan
from medp2p.train.steps import Pix2PixStep


def make_optimizer(net: nn.Module, t: TrainConfig) -> torch.optim.Adam:
    """Adam as pix2pix sets it up (``train.lr``, ``beta1``, ``beta2``).

    The fused kernel (one pass over each parameter's weights and moments instead of several
    element-wise ops) is used on CPU and CUDA: the same update, and on a 2-core CPU the optimiser
    step of a 54M-parameter U-Net costs a fraction of the multi-tensor one (docs/scale.md).
    """
    params = list(net.parameters())
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused or None)


def lr_factor(schedule: dict[str, int], decay_start: float) -> Callable[[int], float]:
    """Constant, then linear decay to 0 over ``schedule["steps"]`` (read at every call: a time budget may shorten it)."""

    def factor(step: int) -> float:
        total = schedule["steps"]
        start = int(total * decay_start)
        if step < start:
            return 1.0
        return max(0.0, (total - step) / max(1, total - start))

    return factor


@dataclass
class Trainer:
    """Everything that changes while a run trains, and the step that changes it.

    Args:
        plan: the run's plan.
        device, dtype, layout: where and how it computes (autocast dtype None: float32).
        G, D: the networks (plain modules: checkpoints hold their state dicts).
        opt_g, opt_d, sched_g, sched_d: Adam and the linear-decay schedule of each.
        scaler: a GradScaler for float16, else None.
        step_fn: one pix2pix step, on the (compiled, DDP-wrapped) networks.
        gen: the data stream's generator (sampling, augmentation, corruption).
        ddp: this process's place under torchrun.
        schedule: ``{"steps": N, "fitted": 0|1}``: the schedule's length (``train.minutes`` fits it).
        step: steps done.
        best: the best validation so far (``metric``, ``value``, ``step``).
    """

    plan: Plan
    device: torch.device
    dtype: torch.dtype | None
    layout: torch.memory_format
    G: nn.Module
    D: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    sched_g: torch.optim.lr_scheduler.LambdaLR
    sched_d: torch.optim.lr_scheduler.LambdaLR | None
    scaler: torch.amp.GradScaler | None
    step_fn: Pix2PixStep
    gen: torch.Generator
    ddp: Dist
    schedule: dict[str, int] = field(default_factory=dict)
    step: int = 0
    best: dict[str, Any] = field(default_factory=dict)

    @property
    def val_options(self) -> RunOptions:
        """How validation runs the generator: its device, precision and layout."""
        t = self.plan.config.train
        return RunOptions(self.device, self.dtype, t.val_batch_size, self.layout == torch.channels_last)

    def train_mode(self) -> None:
        """Both networks in training mode (after validation put G in eval mode)."""
        self.G.train()
        if self.D is not None:
            self.D.train()

    def advance(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step on ``batch``: the update, then both schedules; returns the losses (still on the device)."""
        losses = self.step_fn(self.step, batch)
        self.sched_g.step()
        if self.sched_d is not None:
            self.sched_d.step()
        self.step += 1
        return losses

    def rng_states(self) -> dict[str, list[Any]]:
        """Every rank's random states (a collective), so a resume continues every stream."""
        cuda = torch.cuda.get_rng_state() if self.device.type == "cuda" else None
        states = self.ddp.gather((torch.get_rng_state(), self.gen.get_state(), cuda))
        return {"torch": [s[0] for s in states], "data": [s[1] for s in states], "cuda": [s[2] for s in states]}

    def state(self, rng: dict[str, list[Any]], profile: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint holds (loadable with ``torch.load(weights_only=True)``)."""

        def sd(obj: Any) -> Any:
            return obj.state_dict() if obj is not None else None

        return {
            "generator": self.G.state_dict(), "discriminator": sd(self.D), "opt_g": self.opt_g.state_dict(), "opt_d": sd(self.opt_d),
            "sched_g": self.sched_g.state_dict(), "sched_d": sd(self.sched_d), "scaler": sd(self.scaler), "step": self.step,
            "config": self.plan.config.to_dict(), "best": self.best, "world_size": self.ddp.world, "rng": rng,
            "schedule": dict(self.schedule), "data_profile": profile,
            # the sampler's whole state: batch n of step s, rank r of W is drawn from batch_seed(seed, s * W + r)
            "sampler": {"seed": self.plan.config.train.seed, "world": self.ddp.world, "next_step": self.step},
        }  # fmt: skip


def _networks(plan: Plan, device: torch.device, layout: torch.memory_format) -> tuple[nn.Module, nn.Module | None]:
    G = plan.build_generator().to(device)
    D = plan.build_discriminator()
    D = D.to(device) if D is not None else None
    G = G.to(memory_format=layout)  # type: ignore[call-overload]  # torch's stub lacks memory_format
    if D is not None:
        D = D.to(memory_format=layout)  # type: ignore[call-overload]
    return G, D


def _wrapped(G: nn.Module, D: nn.Module | None, device: torch.device, ddp: Dist, compile: bool) -> tuple[nn.Module, nn.Module | None]:
    """The modules the step runs: DistributedDataParallel under torchrun, then ``torch.compile`` (compiled after wrapping)."""
    G_run: nn.Module = G
    D_run: nn.Module | None = D
    if ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        G_run = DDP(G, device_ids=ids)
        D_run = DDP(D, device_ids=ids) if D is not None else None
    if compile:
        G_run = torch.compile(G_run)  # type: ignore[assignment]
        D_run = torch.compile(D_run) if D_run is not None else None  # type: ignore[assignment]
    return G_run, D_run


def build_trainer(plan: Plan, device: torch.device, ddp: Dist = Dist()) -> Trainer:
    """The networks, optimisers and seeded streams ``plan`` describes, on ``device``.

    Weights are initialised from ``train.seed`` (the same on every rank); each rank draws its
    own slice stream (rank 0's is the single-process one). Under torchrun the networks are wrapped
    in DistributedDataParallel (batch norms made SyncBatchNorm on GPUs), and ``torch.compile``
    (``train.compile``) compiles the wrapped modules. The CUDA backend switches (TF32,
    ``cudnn.benchmark``, deterministic algorithms) are set from the config here.
    """
    t = plan.config.train
    dtype = resolve_precision(device, t.precision)
    configure_backends(device, t.precision, t.deterministic)
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    gen = torch.Generator().manual_seed(t.seed + 1_000_003 * ddp.rank)
    layout = memory_format(device, dtype, t.channels_last, training=True, dims=plan.config.model.dims)
    G, D = _networks(plan, device, layout)
    if ddp.enabled and device.type == "cuda":  # batch statistics over every rank's batch (SyncBatchNorm runs on GPUs)
        G = nn.SyncBatchNorm.convert_sync_batchnorm(G)  # type: ignore[no-untyped-call]
        D = nn.SyncBatchNorm.convert_sync_batchnorm(D) if D is not None else None  # type: ignore[no-untyped-call]
    opt_g = make_optimizer(G, t)
    opt_d = make_optimizer(D, t) if D is not None else None
    schedule = {"steps": t.steps, "fitted": 0}
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_factor(schedule, t.decay_start))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lr_factor(schedule, t.decay_start)) if opt_d is not None else None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    if ddp.rank:
        torch.manual_seed(t.seed + 1_000_003 * ddp.rank)  # per-rank dropout masks (a resume restores its own)
    G_run, D_run = _wrapped(G, D, device, ddp, t.compile)
    step_fn = Pix2PixStep(G_run, D_run, opt_g, opt_d, plan.losses, device, dtype, scaler, layout, ddp.any)
    return Trainer(plan, device, dtype, layout, G, D, opt_g, opt_d, sched_g, sched_d, scaler, step_fn, gen, ddp, schedule)


def restore(trainer: Trainer, ckpt: dict[str, Any]) -> None:
    """Continue from a checkpoint exactly: weights, optimisers, schedules, step, best, random streams.

    Random streams are restored only when the checkpoint was saved by as many processes as now
    run; otherwise they restart from the seed (with a warning: the run is then not bit-identical).
    """
    trainer.G.load_state_dict(ckpt["generator"])
    trainer.opt_g.load_state_dict(ckpt["opt_g"])
    trainer.sched_g.load_state_dict(ckpt["sched_g"])
    if trainer.D is not None and trainer.opt_d is not None and trainer.sched_d is not None:
        trainer.D.load_state_dict(ckpt["discriminator"])
        trainer.opt_d.load_state_dict(ckpt["opt_d"])
        trainer.sched_d.load_state_dict(ckpt["sched_d"])
    if trainer.scaler is not None and ckpt.get("scaler"):
        trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.step, trainer.best = int(ckpt["step"]), dict(ckpt.get("best") or {})
    if "schedule" in ckpt:
        trainer.schedule.update(ckpt["schedule"])  # in place: the schedules' lambdas read this dict
    rng, ddp, t = ckpt["rng"], trainer.ddp, trainer.plan.config.train
    if len(rng["data"]) == ddp.world:
        torch.set_rng_state(rng["torch"][ddp.rank])
        trainer.gen.set_state(rng["data"][ddp.rank])
        if trainer.device.type == "cuda" and rng["cuda"][ddp.rank] is not None:
            torch.cuda.set_rng_state(rng["cuda"][ddp.rank])
    else:
        warnings.warn(
            f"{ckpt.get('path', 'last.pt')}: saved by {len(rng['data'])} process(es), resumed by {ddp.world}: "
            "random streams restart from the seed, so the run is not bit-identical to an uninterrupted one",
            stacklevel=2,
        )
        trainer.gen.manual_seed(t.seed + 1_000_003 * ddp.rank + trainer.step)
