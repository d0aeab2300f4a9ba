"""3D networks for the patch mode (``model.dims: 3``): a pix2pix-style 3D U-Net and a 3D PatchGAN.

Both downsample an axis only while it still has size, as nnU-Net plans its pooling
(Isensee et al. 2021): a patch of 32 x 96 x 96 voxels (slices x rows x columns) at four levels
is halved in-plane four times and through-plane three times, so the innermost feature map is
4 x 6 x 6 rather than 2 x 6 x 6 (a fifth level would keep all three). A level that halves an axis uses pix2pix's 4-voxel kernel with
stride 2 there; a level that keeps it uses a 3-voxel kernel with stride 1 (same size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medp2p.models.layers import norm_layer, unet_forward, uses_bias

#: Feature maps are not halved below this many voxels along an axis (nnU-Net's minimum is 4).
MIN_FEATURE_SIZE = 4

Strides = tuple[tuple[int, int, int], ...]


def unet_strides(patch_size: Sequence[int], levels: int, spacing: Sequence[float] | None = None) -> Strides:
    """Per level, the stride (1 or 2) along each of the patch's three axes.

    An axis is halved at a level while the result keeps at least :data:`MIN_FEATURE_SIZE` voxels
    and, when ``spacing`` is given (mm per voxel of each axis), while the axis is not more than
    twice as coarse as the finest axis at that level (nnU-Net's rule for anisotropic data: a
    2.5 mm slice axis waits until the 1 mm in-plane axes have caught up).

    Example:
        >>> unet_strides((32, 96, 96), 4)
        ((2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
        >>> unet_strides((32, 96, 96), 2, spacing=(2.5, 1.0, 1.0))
        ((1, 2, 2), (2, 2, 2))
    """
    if len(patch_size) != 3:
        raise ValueError(f"a 3D patch has three sizes, got {tuple(patch_size)}")
    size = [float(s) for s in patch_size]
    mm = [float(s) for s in spacing] if spacing is not None else [1.0, 1.0, 1.0]
    strides = []
    for _ in range(levels):
        finest = min(mm)
        level = tuple(2 if size[a] / 2 >= MIN_FEATURE_SIZE and (spacing is None or mm[a] <= 2 * finest) else 1 for a in range(3))
        for a in range(3):
            size[a] /= level[a]
            mm[a] *= level[a]
        strides.append((int(level[0]), int(level[1]), int(level[2])))
    return tuple(strides)


def size_multiples(strides: Strides) -> tuple[int, int, int]:
    """The product of each axis's strides: sizes that need no padding are multiples of it."""
    return (math.prod(s[0] for s in strides), math.prod(s[1] for s in strides), math.prod(s[2] for s in strides))


def _kernel(stride: tuple[int, int, int]) -> tuple[int, int, int]:
    return (stride[0] + 2, stride[1] + 2, stride[2] + 2)  # 4 where halved, 3 where kept: padding 1 either way


class UNet3DGenerator(nn.Module):
    """pix2pix's U-Net in 3D: ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)``.

    The same layout as :class:`~medp2p.models.unet.UNetGenerator` (no norm on the outermost and
    innermost encoder levels, widths doubling up to 8x, dropout in the inner full-width decoder
    levels), with per-axis strides from :func:`unet_strides`. Sizes that are not multiples of
    :attr:`size_multiple` are padded (replicate) and the output cropped back.

    Args:
        in_channels: source channels (one per source image, plus the region's for inpainting).
        out_channels: target channels.
        strides: per level, the stride along each axis (:func:`unet_strides`); its length is the depth.
        base_channels: features of the first level.
        norm: ``instance``, ``batch`` or ``none``.
        dropout: dropout probability in the inner full-width decoder levels.
        final_activation: ``tanh`` or ``none`` (logits).

    Example:
        >>> g = UNet3DGenerator(1, 1, unet_strides((16, 32, 32), 3), base_channels=4)
        >>> g(torch.zeros(2, 1, 16, 32, 32)).shape
        torch.Size([2, 1, 16, 32, 32])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        strides: Sequence[Sequence[int]],
        base_channels: int = 32,
        norm: str = "instance",
        dropout: float = 0.0,
        final_activation: str = "tanh",
    ) -> None:
        super().__init__()
        levels: Strides = tuple((int(s[0]), int(s[1]), int(s[2])) for s in strides)
        depth = len(levels)
        if depth < 2:
            raise ValueError(f"U-Net depth must be at least 2, got {depth}")
        if final_activation not in ("tanh", "none"):
            raise ValueError(f"final_activation must be 'tanh' or 'none', got {final_activation!r}")
        self.strides = levels
        bias = uses_bias(norm)
        widths = [base_channels * min(2**i, 8) for i in range(depth)]
        self.down = nn.ModuleList()
        for i, s in enumerate(levels):
            cin = in_channels if i == 0 else widths[i - 1]
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2, inplace=True)]
            layers.append(nn.Conv3d(cin, widths[i], _kernel(s), s, 1, bias=bias or i in (0, depth - 1)))
            if 0 < i < depth - 1:
                layers.append(norm_layer(norm, widths[i], dims=3))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            s = levels[i]
            cin = widths[i] if i == depth - 1 else 2 * widths[i]
            if i == 0:
                layers = [nn.ReLU(inplace=True), nn.ConvTranspose3d(cin, out_channels, _kernel(s), s, 1)]
                if final_activation == "tanh":
                    layers.append(nn.Tanh())
            else:
                layers = [nn.ReLU(inplace=True), nn.ConvTranspose3d(cin, widths[i - 1], _kernel(s), s, 1, bias=bias)]
                layers.append(norm_layer(norm, widths[i - 1], dims=3))
                if dropout > 0 and i < depth - 1 and widths[i] == widths[i - 1] == 8 * base_channels:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        """Input sizes that need no padding are multiples of this, per axis."""
        return size_multiples(self.strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W) -> (B, C_out, D, H, W)``."""
        sizes = x.shape[-3:]
        pads = [(-n) % m for n, m in zip(sizes, self.size_multiple, strict=True)]
        if any(pads):
            spec: list[int] = []
            for p in reversed(pads):  # F.pad runs from the last axis backwards
                spec += [p // 2, p - p // 2]
            x = F.pad(x, spec, mode="replicate")
        x = unet_forward(self.down, self.up, x)
        if any(pads):
            d, h, w = sizes
            x = x[..., pads[0] // 2 : pads[0] // 2 + d, pads[1] // 2 : pads[1] // 2 + h, pads[2] // 2 : pads[2] // 2 + w]
        return x


class PatchDiscriminator3D(nn.Module):
    """pix2pix's PatchGAN in 3D: patch logits ``(B, 1, d, h, w)`` of ``cat(source, image)`` ``(B, C, D, H, W)``.

    ``layers`` downsampling convolutions (strides from :func:`unet_strides` of ``patch_size``, so
    a thin slab is not halved away), then a stride-1 convolution at twice the width and a
    stride-1 convolution to one channel; the norm is skipped on the first convolution as in
    pix2pix. Every stride-1 convolution keeps the size (3-voxel kernels), so any patch that the
    generator takes gives a map of logits.

    Example:
        >>> d = PatchDiscriminator3D(2, (16, 32, 32), base_channels=4)
        >>> d(torch.zeros(1, 2, 16, 32, 32)).shape
        torch.Size([1, 1, 4, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        patch_size: Sequence[int],
        base_channels: int = 32,
        layers: int = 3,
        norm: str = "instance",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        bias = uses_bias(norm)
        blocks: list[nn.Module] = []
        cin = in_channels
        for i, s in enumerate(unet_strides(patch_size, layers)):
            cout = base_channels * min(2**i, 8)
            blocks.append(nn.Conv3d(cin, cout, _kernel(s), s, 1, bias=bias or i == 0))
            if i > 0:
                blocks.append(norm_layer(norm, cout, dims=3))
            blocks.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        cout = base_channels * min(2**layers, 8)
        blocks += [nn.Conv3d(cin, cout, 3, 1, 1, bias=bias), norm_layer(norm, cout, dims=3), nn.LeakyReLU(0.2, inplace=True)]
        blocks.append(nn.Conv3d(cout, 1, 3, 1, 1))
        for block in blocks:  # pix2pix initialisation, as MONAI gives the 2D PatchGAN
            if isinstance(block, nn.Conv3d):
                nn.init.normal_(block.weight, 0.0, 0.02)
                if block.bias is not None:
                    nn.init.zeros_(block.bias)
        if spectral_norm:
            from torch.nn.utils.parametrizations import spectral_norm as wrap

            blocks = [wrap(b) if isinstance(b, nn.Conv3d) else b for b in blocks]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits of ``cat(source, image)``."""
        return self.net(x)  # type: ignore[no-any-return]
