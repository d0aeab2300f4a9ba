"""The conditional 70x70 PatchGAN discriminator of pix2pix, built on MONAI's ``PatchDiscriminator``."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import PatchDiscriminator as MonaiPatchDiscriminator
from torch import nn

from medp2p.models.layers import apply_spectral_norm

_MONAI_NORMS: dict[str, Any] = {"instance": ("INSTANCE", {"affine": True}), "batch": "BATCH", "none": None}


class PatchDiscriminator(nn.Module):
    """Scores overlapping patches of ``cat(source, image)`` as real or fake: ``(B, C, H, W) -> (B, 1, h, w)``.

    With ``layers=3`` each output pixel sees a 70x70 input patch (pix2pix's ``basic`` D); a
    256x256 input gives a 30x30 map of logits.

    Args:
        in_channels: source channels + target channels (the discriminator is conditioned on the source).
        base_channels: features of the first convolution (``ndf``).
        layers: stride-2 levels before the two stride-1 convolutions.
        norm: ``instance``, ``batch`` or ``none``.
        spectral_norm: wrap every convolution in spectral normalisation.

    Example:
        >>> PatchDiscriminator(in_channels=2)(torch.zeros(1, 2, 256, 256)).shape
        torch.Size([1, 1, 30, 30])
    """

    def __init__(
        self, in_channels: int, base_channels: int = 64, layers: int = 3, norm: str = "instance", spectral_norm: bool = False
    ) -> None:
        super().__init__()
        if norm not in _MONAI_NORMS:
            raise KeyError(f"Unknown norm {norm!r}; choose from {sorted(_MONAI_NORMS)}")
        self.net = MonaiPatchDiscriminator(
            spatial_dims=2,
            channels=base_channels,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=layers,
            kernel_size=4,
            norm=_MONAI_NORMS[norm],
            bias=norm == "none",
            padding=1,
            last_conv_kernel_size=4,
        )
        if spectral_norm:
            apply_spectral_norm(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits ``(B, 1, h, w)`` of ``cat(source, image)``."""
        # MONAI returns every intermediate feature map; the patch logits are the last.
        for block in self.net.children():
            x = block(x)
        return x
