"""Normalisation choices shared by the generators and the discriminator."""

from __future__ import annotations

import torch
from torch import nn

#: Feature normalisations by name. ``instance`` is pix2pix's behaviour at batch size 1.
NORMS = ("instance", "batch", "none")


def norm_layer(name: str, channels: int, dims: int = 2) -> nn.Module:
    """A 2D (or, with ``dims=3``, 3D) normalisation layer for ``channels`` features.

    Example:
        >>> norm_layer("instance", 64)
        InstanceNorm2d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=False)
    """
    if name == "instance":
        return (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(channels, affine=True)
    if name == "batch":
        return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)
    if name == "none":
        return nn.Identity()
    raise KeyError(f"Unknown norm {name!r}; choose from {sorted(NORMS)}")


def unet_forward(down: nn.ModuleList, up: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """A U-Net's encoder levels, then its decoder levels each fed the twin encoder output (2D and 3D alike)."""
    skips = []
    for level in down:
        x = level(x)
        skips.append(x)
    x = up[0](skips.pop())
    for level in up[1:]:
        x = level(torch.cat([x, skips.pop()], dim=1))
    return x


def uses_bias(norm: str) -> bool:
    """Convolutions followed by a normalisation with its own shift need no bias (pix2pix does the same)."""
    return norm == "none"


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Wrap every convolution of ``module`` in spectral normalisation (Miyato et al. 2018), in place."""
    from torch.nn.utils.parametrizations import spectral_norm

    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
            setattr(module, name, spectral_norm(child))
        else:
            apply_spectral_norm(child)
    return module


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """pix2pix initialisation: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.BatchNorm3d, nn.InstanceNorm3d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
