"""Networks and losses (torch only: no files, no cases).

Registries are explicit dicts; a miss names the choices.

Example:
    >>> from medp2p.models import build_generator
    >>> g = build_generator("unet", in_channels=1, out_channels=1, depth=4, base_channels=8)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from medp2p.models.discriminator import PatchDiscriminator
from medp2p.models.layers import NORMS, init_weights
from medp2p.models.losses import GAN_MODES, LossSpec, aleatoric_scale, gan_loss, laplace_nll, soft_dice_loss, weighted_l1, weighted_l2
from medp2p.models.resnet import ResNetGenerator
from medp2p.models.unet import UNetGenerator
from medp2p.models.unet3d import PatchDiscriminator3D, UNet3DGenerator

GENERATORS: dict[str, Callable[..., nn.Module]] = {"unet": UNetGenerator, "resnet": ResNetGenerator, "unet3d": UNet3DGenerator}
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {"patchgan": PatchDiscriminator, "patchgan3d": PatchDiscriminator3D}


def build_generator(name: str, **kwargs: Any) -> nn.Module:
    """A generator from :data:`GENERATORS`, initialised as pix2pix does.

    Example:
        >>> build_generator("resnet", in_channels=1, out_channels=1, blocks=9)
    """
    if name not in GENERATORS:
        raise KeyError(f"Unknown generator {name!r}; choose from {sorted(GENERATORS)}")
    net = GENERATORS[name](**kwargs)
    init_weights(net)
    return net


def build_discriminator(name: str, **kwargs: Any) -> nn.Module:
    """A discriminator from :data:`DISCRIMINATORS` (MONAI initialises its weights N(0, 0.02))."""
    if name not in DISCRIMINATORS:
        raise KeyError(f"Unknown discriminator {name!r}; choose from {sorted(DISCRIMINATORS)}")
    return DISCRIMINATORS[name](**kwargs)


__all__ = [
    "DISCRIMINATORS",
    "GAN_MODES",
    "GENERATORS",
    "LossSpec",
    "NORMS",
    "PatchDiscriminator",
    "PatchDiscriminator3D",
    "ResNetGenerator",
    "UNet3DGenerator",
    "UNetGenerator",
    "aleatoric_scale",
    "build_discriminator",
    "build_generator",
    "gan_loss",
    "init_weights",
    "laplace_nll",
    "soft_dice_loss",
    "weighted_l1",
    "weighted_l2",
]
