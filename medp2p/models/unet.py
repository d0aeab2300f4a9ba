"""The pix2pix U-Net generator (Isola et al. 2017), depth and width configurable.

``depth=8, base_channels=64`` is pix2pix's ``unet_256``: eight stride-2 4x4 convolutions take
256x256 down to 1x1, eight transposed convolutions come back, each decoder level concatenated
with its encoder twin; dropout in the decoder of the inner levels at full width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medp2p.models.layers import norm_layer, unet_forward, uses_bias


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    Any ``H, W`` works: sizes that are not a multiple of ``2**depth`` are padded (replicate) and
    the output is cropped back.

    Args:
        in_channels: source channels (1 for MR; 2k+1 for 2.5D; more for multi-modal input).
        out_channels: target channels.
        depth: number of stride-2 levels (8 for 256x256 as in pix2pix).
        base_channels: features of the first level (pix2pix ``ngf``); deeper levels double up to 8x.
        norm: ``instance``, ``batch`` or ``none``.
        dropout: dropout probability in the inner full-width decoder levels (pix2pix: 0.5).
        final_activation: ``tanh`` for images scaled to [-1, 1], ``none`` for logits.

    Example:
        >>> g = UNetGenerator(in_channels=3, out_channels=1, depth=4, base_channels=8)
        >>> g(torch.zeros(2, 3, 48, 40)).shape
        torch.Size([2, 1, 48, 40])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 8,
        base_channels: int = 64,
        norm: str = "instance",
        dropout: float = 0.5,
        final_activation: str = "tanh",
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"U-Net depth must be at least 2, got {depth}")
        if final_activation not in ("tanh", "none"):
            raise ValueError(f"final_activation must be 'tanh' or 'none', got {final_activation!r}")
        self.depth = depth
        bias = uses_bias(norm)
        widths = [base_channels * min(2**i, 8) for i in range(depth)]  # output features of encoder level i
        self.down = nn.ModuleList()
        for i in range(depth):
            cin = in_channels if i == 0 else widths[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2, inplace=True)]
            layers.append(nn.Conv2d(cin, widths[i], 4, 2, 1, bias=bias or i in (0, depth - 1)))
            if 0 < i < depth - 1:  # no norm on the outermost and innermost encoder levels
                layers.append(norm_layer(norm, widths[i]))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            cin = widths[i] if i == depth - 1 else 2 * widths[i]
            if i == 0:
                layers = [nn.ReLU(inplace=True), nn.ConvTranspose2d(cin, out_channels, 4, 2, 1)]
                if final_activation == "tanh":
                    layers.append(nn.Tanh())
            else:
                layers = [nn.ReLU(inplace=True), nn.ConvTranspose2d(cin, widths[i - 1], 4, 2, 1, bias=bias)]
                layers.append(norm_layer(norm, widths[i - 1]))
                # pix2pix: dropout in the full-width levels between the innermost and the 8x->4x step
                if dropout > 0 and i < depth - 1 and widths[i] == widths[i - 1] == 8 * base_channels:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))

    @property
    def size_multiple(self) -> int:
        """Input sizes that need no padding are multiples of this."""
        return int(2**self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H, W)``; H and W must be multiples of :attr:`size_multiple`."""
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
        x = unet_forward(self.down, self.up, x)
        if ph or pw:
            x = x[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        return x
