"""Ensembles and test-time passes: several models and several views of each slice, averaged, with their spread.

One case's model-space input (:class:`~medp2p.infer.volume.ModelInput`) goes through every
member's generator once per :class:`Pass`: the plain input, its left-right mirror image, in-plane
shifts by whole voxels (``torch.roll``, undone exactly by the opposite roll), and MC-dropout
samples (the generator's dropout layers on, seeded). Each pass's output is decoded by its own
member (:meth:`~medp2p.data.codecs.TargetCodec.decode_soft`: HU, the member's intensity window,
mask probabilities) onto the input's grid, and a running mean and variance (Welford) take it in,
so memory holds the input, one pass's output and two float32 volumes however many passes run.
The prediction is the mean (masks: mean probability > 0.5); the uncertainty the population
standard deviation across members x passes (masks: the mean probability and its binary entropy).
A generator trained with ``loss.aleatoric`` also gives each voxel's expected error as a Laplace
scale ``b``; its variance ``2 b^2``, averaged over the passes (one more float32 volume), adds to
the spread's: ``std = sqrt(spread^2 + mean(2 b^2))``, the law of total variance.

Example:
    >>> passes = tta_passes(model.prep, flip=True, shift=2, mc_samples=0)
    >>> combined = run_members([model_a, model_b], inp, passes)
    >>> combined.std.max()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from medp2p.data.geometry import from_model_space, mirror_dim
from medp2p.data.prepare import Prep
from medp2p.infer.volume import ModelInput, run_slices
from medp2p.models import aleatoric_scale
from medp2p.tasks import Task
from medp2p.types import Volume

#: What a pass does to the input: nothing, a left-right mirror, a whole-voxel in-plane shift, MC dropout.
PASS_KINDS = ("identity", "flip", "shift", "dropout")
#: ``--uncertainty``'s default in-plane shift, in model-space voxels.
DEFAULT_SHIFT = 2
#: Prep fields members must share: they fix the model-space input every member runs on.
SHARED_PREP = ("source_keys", "source_channels", "axis", "spacing_mm", "mr_percentiles", "size_multiple", "min_size", "region")


@dataclass(frozen=True)
class Pass:
    """One view of the input a generator runs on.

    Args:
        kind: one of :data:`PASS_KINDS`.
        shift: ``shift``: ``(rows, columns)`` in model-space voxels.
        seed: ``dropout``: the seed of the dropout masks.
    """

    kind: str = "identity"
    shift: tuple[int, int] = (0, 0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PASS_KINDS:
            raise ValueError(f"pass kind must be one of {PASS_KINDS}, got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        """The pass as recorded in ``uncertainty.json``."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "shift":
            out["shift_voxels"] = list(self.shift)
        if self.kind == "dropout":
            out["seed"] = self.seed
        return out


def tta_passes(prep: Prep, flip: bool = False, shift: int = 0, mc_samples: int = 0) -> list[Pass]:
    """The passes of each member: the input, its mirror (``flip``), four shifts by ``shift`` voxels, ``mc_samples`` dropout samples.

    Raises:
        ValueError: ``flip`` for sagittal slices (they hold no left-right axis), or a negative count.

    Example:
        >>> [p.kind for p in tta_passes(prep, flip=True, shift=2)]
        ['identity', 'flip', 'shift', 'shift', 'shift', 'shift']
    """
    if shift < 0 or mc_samples < 0:
        raise ValueError(f"shift and mc_samples must be >= 0, got {shift} and {mc_samples}")
    mirror_dim(prep.axis, flip)  # raises for a flip of slices that hold no left-right axis
    passes = [Pass()]
    if flip:
        passes.append(Pass("flip"))
    if shift:
        passes += [Pass("shift", s) for s in ((shift, 0), (-shift, 0), (0, shift), (0, -shift))]
    passes += [Pass("dropout", seed=i) for i in range(mc_samples)]
    return passes


def has_dropout(generator: torch.nn.Module) -> bool:
    """Whether the generator holds a dropout layer with a non-zero rate (MC dropout needs one)."""
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in generator.modules())


def _sampling(module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> Any:
    """A forward hook: the dropout layer's output as in training mode, whatever mode the model is in."""
    was = module.training
    module.training = True
    try:
        return type(module).forward(module, *args)
    finally:
        module.training = was


@contextlib.contextmanager
def mc_dropout(generator: torch.nn.Module, seed: int) -> Iterator[None]:
    """Dropout layers sampling (everything else, batch norm included, in eval mode), with seeded masks.

    The layers sample through forward hooks, so the generator stays in eval mode (prediction
    puts it there) and nothing is left changed afterwards.
    """
    layers = [m for m in generator.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    devices = sorted({p.device.index or 0 for p in generator.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        handles = [m.register_forward_hook(_sampling) for m in layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def run_pass(generator: torch.nn.Module, inp: ModelInput, prep: Prep, options: Any, p: Pass) -> torch.Tensor:
    """The generator's ``(C, D, H, W)`` output for one pass, the pass's transform undone."""
    opts = replace(options, flip_tta=False)
    stack, extra = inp.stack, inp.extra
    if p.kind == "flip":
        dim = mirror_dim(prep.axis, True)
        assert dim is not None
        flipped = None if extra is None else extra.flip(dim)
        return run_slices(generator, stack.flip(dim), flipped, prep, opts).flip(dim)
    if p.kind == "shift":
        dy, dx = p.shift
        rolled = None if extra is None else torch.roll(extra, (dy, dx), dims=(2, 3))
        out = run_slices(generator, torch.roll(stack, (dy, dx), dims=(2, 3)), rolled, prep, opts)
        return torch.roll(out, (-dy, -dx), dims=(2, 3))
    if p.kind == "dropout":
        with mc_dropout(generator, p.seed):
            return run_slices(generator, stack, extra, prep, opts)
    return run_slices(generator, stack, extra, prep, opts)


@dataclass
class Spread:
    """A running mean and population variance of volumes (Welford), in float32.

    Example:
        >>> s = Spread(); s.add(np.zeros(3)); s.add(np.full(3, 2.0))
        >>> s.mean, s.std
        (array([1., 1., 1.], dtype=float32), array([1., 1., 1.], dtype=float32))
    """

    n: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def add(self, x: np.ndarray) -> None:
        """Take one more volume in."""
        x = np.asarray(x, np.float32)
        self.n += 1
        if self.n == 1:
            self.mean, self.m2 = x.copy(), np.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> np.ndarray:
        """The population standard deviation (0 with one volume)."""
        out: np.ndarray = np.sqrt(np.maximum(self.m2, 0.0) / max(self.n, 1))
        return out


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy of a foreground probability, in bits (0 at 0 and 1, 1 at 0.5).

    Example:
        >>> binary_entropy(np.array([0.0, 0.5, 1.0]))
        array([0., 1., 0.], dtype=float32)
    """
    q = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(q > 0, q * np.log2(q), 0.0) + np.where(q < 1, (1 - q) * np.log2(1 - q), 0.0))
    return h.astype(np.float32)


@dataclass
class Combined:
    """What the members and passes gave for one case, on the input's grid.

    ``mean``: the averaged soft output (HU, intensity, foreground probability); ``std``: the
    spread across members x passes in the same units; ``passes``: what ran, member by member.
    """

    mean: np.ndarray
    std: np.ndarray
    passes: list[dict[str, Any]]
    members: list[str] = field(default_factory=list)
    learned_scale: bool = False

    def record(self, units: str, labels: bool) -> dict[str, Any]:
        """``uncertainty.json``: the members, every pass that ran and their kinds, and what the maps hold."""
        spread = "population standard deviation across members x passes"
        if self.learned_scale:
            spread = f"sqrt(spread^2 + mean(2 b^2)): the {spread} and the generators' learned Laplace error scale b (loss.aleatoric)"
        return {
            "members": self.members,
            "passes": self.passes,
            "passes_per_member": len(self.passes) // max(1, len(self.members)),
            "kinds": sorted({p["kind"] for p in self.passes}),
            "units": units,
            "maps": "mean foreground probability and its binary entropy (bits)" if labels else f"{spread} ({units})",
            "learned_scale": self.learned_scale,
        }  # fmt: skip


def run_members(members: Sequence[Any], inp: ModelInput, passes: Sequence[Pass]) -> Combined:
    """Every member's generator over every pass of ``inp``, each decoded by its own member, averaged.

    ``members`` are :class:`~medp2p.infer.model.Model` values that share the input rules
    (:func:`check_members`); the first one's preparation made ``inp``.
    """
    spread = Spread()
    learned: np.ndarray | None = None  # the sum over passes of the learned error variance, 2 b^2
    ran = []
    for i, member in enumerate(members):
        prep = member.prep
        for p in passes:
            if p.kind == "dropout" and not has_dropout(member.generator):
                raise ValueError(f"{member.path}: --mc-samples needs dropout layers, and this generator has none")
            out = run_pass(member.generator, inp, prep, member.options, p)
            spread.add(prep.codec.decode_soft(out[0], inp.grid, inp.windows, prep.fitted_target_window))
            if out.shape[0] > 1:
                var = learned_variance(out[1], inp, prep)
                learned = var if learned is None else np.add(learned, var, out=learned)
            del out
            ran.append({"member": i, **p.to_dict()})
    std = spread.std if learned is None else np.sqrt(spread.std**2 + learned / spread.n)
    return Combined(spread.mean, std, ran, [str(m.path) for m in members], learned is not None)


def learned_variance(scale_out: torch.Tensor, inp: ModelInput, prep: Prep) -> np.ndarray:
    """A Laplace error scale channel (model space) as a variance on the input's grid, in squared output units: ``2 b^2``."""
    units = prep.codec.units_per_model_unit(inp.windows, prep.fitted_target_window)
    b = from_model_space(aleatoric_scale(scale_out), inp.grid)
    b *= units
    var: np.ndarray = np.square(b, out=b)
    var *= 2.0
    return var


def finish_combined(c: Combined, inp: ModelInput, task: Task, prep: Prep, maps: bool) -> tuple[Volume, list[tuple[str, Volume]]]:
    """The averaged prediction on the input's grid and, with ``maps``, its uncertainty maps (``task.uncertainty_names``).

    Inpainting keeps the input outside the region, where the spread is 0.
    """
    mean, std = c.mean, c.std
    if inp.region is not None:
        inside = inp.region.array > 0
        mean = np.where(inside, mean, inp.first.array).astype(np.float32)
        std = np.where(inside, std, 0.0).astype(np.float32)
    result = prep.codec.harden(mean).astype(np.float32, copy=False)
    if not maps:
        return inp.first.with_array(result), []
    arrays = (mean, binary_entropy(mean)) if prep.codec.labels else (std,)
    return inp.first.with_array(result), [(n, inp.first.with_array(a)) for n, a in zip(task.uncertainty_names, arrays, strict=True)]


def check_members(members: Sequence[Any]) -> None:
    """Refuse members that cannot be averaged: another task, target, input rules or inpainting seed.

    Raises:
        ValueError: naming the first member that differs from the first one, and how.
    """
    first = members[0]
    for other in members[1:]:
        differs = []
        if other.task is not first.task:  # task values are registered once (TASKS)
            differs.append(f"task {other.task.name} vs {first.task.name}")
        if other.prep.target_key != first.prep.target_key:
            differs.append(f"target {other.prep.target_key!r} vs {first.prep.target_key!r}")
        for name in SHARED_PREP:
            a, b = getattr(other.prep, name), getattr(first.prep, name)
            if a != b:
                differs.append(f"data.{name} {a!r} vs {b!r}")
        mine, theirs = other.plan.losses, first.plan.losses
        if mine.learns_scale != theirs.learns_scale:
            differs.append(f"loss.aleatoric {mine.aleatoric} vs {theirs.aleatoric} (a learned error scale in one only)")
        if first.prep.region and other.cfg.inpaint.eval_seed != first.cfg.inpaint.eval_seed:
            differs.append(f"inpaint.eval_seed {other.cfg.inpaint.eval_seed} vs {first.cfg.inpaint.eval_seed}")
        if differs:
            raise ValueError(f"{other.path}: cannot be averaged with {first.path}: {'; '.join(differs)}")
