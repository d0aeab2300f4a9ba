"""Losses: adversarial (vanilla or least squares), masked L1 and L2, Dice, and a Laplace likelihood for a learned error scale."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GAN_MODES = ("vanilla", "lsgan")
#: The learned Laplace scale's range in model units (a window's half width is 1): the scale
#: channel's tanh output -1 .. 1 maps log-linearly onto it (a CT's 1e-3 is 2 HU, 2 is 4,024 HU).
SCALE_RANGE = (1e-3, 2.0)


@dataclass(frozen=True)
class LossSpec:
    """Resolved loss weights and options: the config's ``loss`` section after the task's defaults.

    Args:
        l1, gan, dice, bce: term weights (0 switches a term off; ``gan=0`` trains no discriminator).
        l2: weight of the mean squared error, in the same mask and weights as L1: the conditional
            mean where L1 learns the median, for targets scored by MSE.
        gan_mode: ``vanilla`` (BCE) or ``lsgan``.
        l1_in_mask: restrict L1 (and L2) to the body mask, when the batch has one.
        outside_weight: with ``l1_in_mask``, the L1 and L2 weight of voxels outside the mask
            against 1 inside (:meth:`mask_weight`); 0: no L1/L2 outside, so without a GAN term a
            prediction's background (a CT's air) is whatever the network happens to write there.
        region_weight: inpainting: L1 weight inside the region against 1 outside.
        logits: the generator outputs logits (masks), not images in [-1, 1].
        aleatoric: weight of the Laplace likelihood of a second generator channel, the voxel's
            error scale (:func:`laplace_nll`); 0: one output channel, no scale learned.

    Example:
        >>> LossSpec(l1=100.0, gan=1.0, dice=0.0, bce=0.0).gan_mode
        'vanilla'
    """

    l1: float
    gan: float
    dice: float
    bce: float
    l2: float = 0.0
    gan_mode: str = "vanilla"
    l1_in_mask: bool = True
    outside_weight: float = 0.0
    region_weight: float = 10.0
    logits: bool = False
    aleatoric: float = 0.0

    def mask_weight(self, mask: torch.Tensor) -> torch.Tensor:
        """Per-pixel L1/L2 weights from a 0/1 body mask: 1 inside, :attr:`outside_weight` outside.

        Example:
            >>> LossSpec(1.0, 0.0, 0.0, 0.0, outside_weight=0.1).mask_weight(torch.tensor([0.0, 1.0]))
            tensor([0.1000, 1.0000])
        """
        if self.outside_weight == 0:
            return mask
        return self.outside_weight + (1 - self.outside_weight) * mask

    @property
    def learns_scale(self) -> bool:
        """Whether the generator has a second output channel, the voxel's error scale (``aleatoric`` > 0)."""
        return self.aleatoric > 0

    @property
    def out_channels(self) -> int:
        """The generator's output channels: the target, and the error scale when it :attr:`learns_scale`."""
        return 2 if self.learns_scale else 1


def gan_loss(logits: torch.Tensor, real: bool, mode: str = "vanilla") -> torch.Tensor:
    """pix2pix's GANLoss: BCE with logits (``vanilla``) or mean squared error (``lsgan``) against 1 or 0.

    Example:
        >>> loss_G_GAN = gan_loss(D(torch.cat([src, fake], 1)), real=True)
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    if mode == "lsgan":
        return F.mse_loss(logits.float(), target.float())
    raise KeyError(f"Unknown gan mode {mode!r}; choose from {sorted(GAN_MODES)}")


def weighted_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error, weighted per pixel: ``sum(w |p - t|) / sum(w)`` (plain mean without weights).

    Args:
        pred: ``(B, C, H, W)``.
        target: the same shape.
        weight: ``(B, 1, H, W)`` or broadcastable; e.g. a body mask restricts the loss to the body.
    """
    return _weighted_mean((pred.float() - target.float()).abs(), weight)


def weighted_l2(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error, weighted per pixel as :func:`weighted_l1`: ``sum(w (p - t)^2) / sum(w)``.

    Example:
        >>> float(weighted_l2(torch.tensor([0.0, 2.0]), torch.zeros(2), torch.tensor([0.0, 1.0])))
        4.0
    """
    return _weighted_mean((pred.float() - target.float()).square(), weight)


def _weighted_mean(diff: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return diff.mean()
    weight = weight.float().expand_as(diff)
    return (diff * weight).sum() / weight.sum().clamp_min(1.0)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over each image, averaged over the batch; smoothing ``eps`` keeps empty slices defined."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(1)
    dice = (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)
    return 1 - dice.mean()


def aleatoric_scale(t: torch.Tensor) -> torch.Tensor:
    """The Laplace scale ``b`` (model units) of the scale channel's output ``t`` in [-1, 1]: log-linear onto :data:`SCALE_RANGE`.

    Example:
        >>> aleatoric_scale(torch.tensor([-1.0, 1.0]))
        tensor([0.0010, 2.0000])
    """
    lo, hi = math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])
    return torch.exp(lo + (t.float().clamp(-1, 1) + 1) * (0.5 * (hi - lo)))


def laplace_nll(scale_out: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Laplace negative log-likelihood of the target around a fixed prediction, weighted as :func:`weighted_l1`.

    ``|target - pred| / b + log b`` with ``b = aleatoric_scale(scale_out)``, minimised where ``b``
    is the expected absolute error at that voxel (Kendall and Gal 2017, "What uncertainties do we
    need in Bayesian deep learning", with the L1 loss's Laplace likelihood). ``pred`` is detached:
    the prediction trains on its own losses alone, and the scale learns how wrong it tends to be.
    """
    b = aleatoric_scale(scale_out)
    nll = (target.float() - pred.detach().float()).abs() / b + torch.log(b)
    if weight is None:
        return nll.mean()
    weight = weight.float().expand_as(nll)
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)
