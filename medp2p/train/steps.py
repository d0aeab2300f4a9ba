"""One pix2pix training step, readable top to bottom: ``d_step`` then ``g_step``.

fake = G(source)
loss_D = 0.5 * (GAN(D(source, fake.detach()), False) + GAN(D(source, target), True))
loss_G = gan * GAN(D(source, fake), True) + l1 * L1(fake, target) [+ l2 * L2 + dice * Dice + bce * BCE]
         [+ aleatoric * LaplaceNLL(scale; fake.detach(), target)]

With ``loss.aleatoric`` the generator has a second output channel, the voxel's error scale; the
discriminator and the other terms see the first channel only.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medp2p.device.precision import autocast
from medp2p.models import LossSpec, gan_loss, laplace_nll, soft_dice_loss, weighted_l1, weighted_l2
from medp2p.types import MASK, REGION, SOURCE, TARGET


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or Inf; the run stops before any weight is updated with it."""


def _set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def _stop_on_non_finite(step: int, losses: dict[str, torch.Tensor], any_rank: Callable[[torch.Tensor], bool]) -> None:
    """Raise when a loss is NaN/Inf (on any rank): one flag computed on the device, one read."""
    flag = ~torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in losses.values()])).all()
    # Under torchrun every rank must stop together, before the generator's gradient all-reduce.
    if any_rank(flag):
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
        named = ", ".join(f"{k}={v}" for k, v in bad.items()) or "on another rank"
        raise NonFiniteLossError(
            f"step {step}: non-finite loss ({named}); stopped before updating the generator (last.pt keeps the last good state). "
            "Check the inputs for NaN/Inf voxels (medp2p validate), or lower train.lr"
        )


def _bool(flag: torch.Tensor) -> bool:
    return bool(flag)


class Pix2PixStep:
    """The generator/discriminator pair, their optimisers, and one training step.

    Args:
        generator, discriminator: the networks (``discriminator`` may be None when ``loss.gan == 0``).
        opt_g, opt_d: their optimisers.
        loss: weights and options.
        device: where the batch goes.
        dtype: autocast dtype, or None for float32.
        scaler: a ``torch.amp.GradScaler`` for float16, else None.
        memory_format: ``torch.channels_last`` or ``torch.contiguous_format``.
        any_rank: a collective "is this flag True on any rank?" (the NaN guard; one device read).
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module | None,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer | None,
        loss: LossSpec,
        device: torch.device,
        dtype: torch.dtype | None,
        scaler: torch.amp.GradScaler | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        any_rank: Callable[[torch.Tensor], bool] = _bool,
    ) -> None:
        self.G, self.D = generator, discriminator
        # The G step only reads D (its weights are frozen there): run the plain module, not the
        # DDP wrapper (inside torch.compile's, when compiled), which would wait for gradients
        # that never come.
        plain: Any = discriminator
        while plain is not None and (hasattr(plain, "_orig_mod") or hasattr(plain, "module")):
            plain = getattr(plain, "_orig_mod", None) or plain.module
        self.D_plain: nn.Module | None = plain
        self.any_rank = any_rank
        self.opt_g, self.opt_d = opt_g, opt_d
        self.loss = loss
        self.device, self.dtype = device, dtype
        self.scaler = scaler
        self.memory_format = memory_format

    def _to_image(self, out: torch.Tensor) -> torch.Tensor:
        """What the discriminator sees of a generator output: images in [-1, 1]."""
        return torch.sigmoid(out) * 2 - 1 if self.loss.logits else out

    def _backward(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            self.scaler.step(opt)
        else:
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()

    def d_step(self, step: int, source: torch.Tensor, target: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Update D: real pairs towards 1, generated pairs towards 0."""
        assert self.D is not None and self.opt_d is not None
        _set_requires_grad(self.D, True)
        real_img = target * 2 - 1 if self.loss.logits else target
        with autocast(self.device, self.dtype):
            pred_fake = self.D(torch.cat([source, self._to_image(fake).detach()], 1))
            pred_real = self.D(torch.cat([source, real_img], 1))
        loss_d_fake = gan_loss(pred_fake, False, self.loss.gan_mode)
        loss_d_real = gan_loss(pred_real, True, self.loss.gan_mode)
        loss_d = 0.5 * (loss_d_fake + loss_d_real)
        self._backward(loss_d, self.opt_d)  # a non-finite D loss shows in G's, checked before G's update
        return {"loss_D": loss_d.detach(), "loss_D_real": loss_d_real.detach(), "loss_D_fake": loss_d_fake.detach()}

    def g_step(
        self,
        step: int,
        source: torch.Tensor,
        target: torch.Tensor,
        fake: torch.Tensor,
        weight: torch.Tensor | None,
        d_losses: dict[str, torch.Tensor] | None = None,
        scale: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Update G: fool D, and match the target (L1, or Dice + BCE for masks); ``scale``: the error-scale channel."""
        w = self.loss
        terms: dict[str, torch.Tensor] = {}
        if w.gan > 0:
            assert self.D is not None and self.D_plain is not None
            _set_requires_grad(self.D, False)
            with autocast(self.device, self.dtype):
                pred = self.D_plain(torch.cat([source, self._to_image(fake)], 1))
            terms["loss_G_GAN"] = gan_loss(pred, True, w.gan_mode)
        if w.l1 > 0 or w.l2 > 0:
            image, wanted = self._to_image(fake), target * 2 - 1 if w.logits else target
            if w.l1 > 0:
                terms["loss_G_L1"] = weighted_l1(image, wanted, weight)
            if w.l2 > 0:
                terms["loss_G_L2"] = weighted_l2(image, wanted, weight)
        if w.dice > 0:
            terms["loss_G_Dice"] = soft_dice_loss(fake, target)
        if w.bce > 0:
            terms["loss_G_BCE"] = F.binary_cross_entropy_with_logits(fake.float(), target.float())
        if scale is not None:
            terms["loss_G_NLL"] = laplace_nll(scale, fake, target, weight)
        weights = {
            "loss_G_GAN": w.gan,
            "loss_G_L1": w.l1,
            "loss_G_L2": w.l2,
            "loss_G_Dice": w.dice,
            "loss_G_BCE": w.bce,
            "loss_G_NLL": w.aleatoric,
        }
        loss_g = functools.reduce(operator.add, (weights[k] * v for k, v in terms.items()))
        values = {"loss_G": loss_g, **terms}
        _stop_on_non_finite(step, {**(d_losses or {}), **values}, self.any_rank)
        self._backward(loss_g, self.opt_g)
        return {k: v.detach() for k, v in values.items()}

    def __call__(self, step: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step on ``batch`` (source, target, optional mask/region); returns the losses (device tensors).

        One read from the device per step (the non-finite flag); the losses stay on the device until
        the caller reads them (the loop does at ``train.log_every``).
        """
        mf = self.memory_format
        source = batch[SOURCE].to(self.device, non_blocking=True).contiguous(memory_format=mf)
        target = batch[TARGET].to(self.device, non_blocking=True).contiguous(memory_format=mf)
        weight = None
        if REGION in batch:
            region = batch[REGION].to(self.device)
            weight = 1 + (self.loss.region_weight - 1) * region
        elif MASK in batch and self.loss.l1_in_mask:
            weight = self.loss.mask_weight(batch[MASK].to(self.device))
        with autocast(self.device, self.dtype):
            fake = self.G(source)
        fake = fake.float()
        scale = None
        if self.loss.learns_scale:  # the second channel is the error scale
            fake, scale = fake[:, :1], fake[:, 1:]
        d_losses = self.d_step(step, source, target, fake) if self.loss.gan > 0 else {}
        values = {**d_losses, **self.g_step(step, source, target, fake, weight, d_losses, scale)}
        if self.scaler is not None:
            self.scaler.update()
        return values
