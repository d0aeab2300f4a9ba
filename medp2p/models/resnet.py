"""The ResNet generator of pix2pix/CycleGAN (Johnson et al. 2016): 2 downsamplings, N residual blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medp2p.models.layers import norm_layer, uses_bias


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with reflection padding and a skip connection."""

    def __init__(self, channels: int, norm: str, dropout: float) -> None:
        super().__init__()
        bias = uses_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(norm, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block: ``x + body(x)``."""
        out: torch.Tensor = x + self.body(x)
        return out


class ResNetGenerator(nn.Module):
    """``resnet_9blocks``: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    Args:
        in_channels: source channels.
        out_channels: target channels.
        blocks: residual blocks at 1/4 resolution (9 in pix2pix's ``resnet_9blocks``).
        base_channels: features of the first convolution (``ngf``).
        norm: ``instance``, ``batch`` or ``none``.
        dropout: dropout inside the residual blocks (pix2pix default: off).
        final_activation: ``tanh`` or ``none``.

    Example:
        >>> ResNetGenerator(1, 1, blocks=2, base_channels=8)(torch.zeros(1, 1, 30, 30)).shape
        torch.Size([1, 1, 30, 30])
    """

    size_multiple = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        blocks: int = 9,
        base_channels: int = 64,
        norm: str = "instance",
        dropout: float = 0.0,
        final_activation: str = "tanh",
    ) -> None:
        super().__init__()
        bias = uses_bias(norm)
        c = base_channels
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, c, 7, bias=bias),
            norm_layer(norm, c),
            nn.ReLU(inplace=True),
        ]
        for mult in (1, 2):
            layers += [nn.Conv2d(c * mult, c * mult * 2, 3, 2, 1, bias=bias), norm_layer(norm, c * mult * 2), nn.ReLU(inplace=True)]
        layers += [ResidualBlock(4 * c, norm, dropout) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(c * mult, c * mult // 2, 3, 2, 1, output_padding=1, bias=bias),
                norm_layer(norm, c * mult // 2),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7)]
        if final_activation == "tanh":
            layers.append(nn.Tanh())
        elif final_activation != "none":
            raise ValueError(f"final_activation must be 'tanh' or 'none', got {final_activation!r}")
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H, W)``; sizes are padded to a multiple of 4 and cropped back."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        out: torch.Tensor = self.net(x)[..., :h, :w]
        return out
