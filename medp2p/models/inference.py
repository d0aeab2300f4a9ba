"""A generator rewritten for prediction: the same function, computed with less work on a CPU.

:func:`optimize_for_inference` is what ``medp2p predict`` runs (unless ``--compile`` asks for
Inductor, which does its own fusion). Two rewrites, both exact up to float rounding:

- **Batch norm folded into the convolution before it** (eval mode: the running statistics are
  constants), with :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`. The U-Net's 13 batch norms
  were 3.6% of a 256x256 forward on a 2-core CPU.
- **Stride-2 4x4 transposed convolutions as one matrix product plus an overlap-add**
  (:class:`MatmulConvTranspose2d`) where oneDNN's deconvolution is slow on the CPU: the
  outermost level (one output channel: 88 -> 26 ms for 16 slices of 256x256 on machine B) and
  the inner levels on 4x4 inputs or smaller (46 -> 22 and 67 -> 42 ms); the wide levels keep
  oneDNN, which is faster there. docs/results.md has the figures.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["MatmulConvTranspose2d", "fold_batch_norm", "optimize_for_inference"]

#: Transposed convolutions with at most this many output channels take the matmul path.
NARROW_OUTPUT = 4
#: ... and so do those whose input has at most this many pixels.
SMALL_INPUT = 16

# ConvTranspose2d(k=4, s=2, p=1): output row 2i+a sums input rows i and i+s with kernel rows k0, k1.
# a = 0: input row i (k0 = 1) and i-1 (k1 = 3); a = 1: input row i (k0 = 2) and i+1 (k1 = 0).
_PHASES = ((1, 3, 1), (2, 0, -1))  # (k0, k1, shift): the second term comes from row i - shift


def _add_shifted(dst: torch.Tensor, src: torch.Tensor, shift: int, dim: int) -> None:
    """``dst[i] += src[i - shift]`` along ``dim`` where ``i - shift`` is inside (``shift`` is +-1)."""
    n = src.shape[dim]
    if n < 2:
        return
    if shift == 1:
        dst.narrow(dim, 1, n - 1).add_(src.narrow(dim, 0, n - 1))
    else:
        dst.narrow(dim, 0, n - 1).add_(src.narrow(dim, 1, n - 1))


class MatmulConvTranspose2d(nn.Module):
    """``ConvTranspose2d(cin, cout, 4, stride=2, padding=1)`` computed as a matmul: the same output.

    ``(pixels, cin) @ (cin, 16 * cout)``, then an overlap-add of the 16 kernel taps into the four
    output phases.

    On a CPU it runs this way when the output has at most :data:`NARROW_OUTPUT` channels or the
    input at most :data:`SMALL_INPUT` pixels, where oneDNN's deconvolution is slow; otherwise,
    and on CUDA, it calls ``F.conv_transpose2d`` with the original weights.

    Example:
        >>> conv = nn.ConvTranspose2d(8, 1, 4, 2, 1)
        >>> fast = MatmulConvTranspose2d(conv)
        >>> x = torch.randn(2, 8, 5, 6)
        >>> torch.allclose(fast(x), conv(x), atol=1e-5)
        True
    """

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not self.supports(conv):
            raise ValueError(f"MatmulConvTranspose2d needs ConvTranspose2d(k=4, s=2, p=1), got {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self._taps: torch.Tensor | None = None  # made on first use
        self._taps_of: tuple[object, ...] = ()

    def taps(self) -> torch.Tensor:
        """The weight as ``(cin, ky * kx * cout)``: one row of taps per input channel.

        Remade when the weight moves, changes dtype or is written to.
        """
        w = self.weight
        key = (w.device, w.dtype, w._version, w.data_ptr())
        if self._taps is None or self._taps_of != key:
            self._taps = w.detach().permute(0, 2, 3, 1).reshape(self.in_channels, -1).contiguous()
            self._taps_of = key
        return self._taps

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        """Whether ``conv`` is a transposed convolution this rewrite computes exactly (stride 2, kernel 4, padding 1)."""
        return (
            isinstance(conv, nn.ConvTranspose2d)
            and conv.kernel_size == (4, 4)
            and conv.stride == (2, 2)
            and conv.padding == (1, 1)
            and conv.output_padding == (0, 0)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
        )

    def uses_matmul(self, x: torch.Tensor) -> bool:
        """Whether the matmul path runs for ``x`` (where oneDNN is slow; else the native convolution)."""
        h, w = x.shape[-2:]
        return x.device.type == "cpu" and (self.out_channels <= NARROW_OUTPUT or h * w <= SMALL_INPUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The transposed convolution of ``x``, by matmul where that is faster."""
        if not self.uses_matmul(x):
            return F.conv_transpose2d(x, self.weight, self.bias, stride=2, padding=1)
        b, cin, h, w = x.shape
        cout = self.out_channels
        cols = (x.permute(0, 2, 3, 1).reshape(-1, cin) @ self.taps()).view(b, h, w, 4, 4, cout)
        out = torch.empty(b, h, 2, w, 2, cout, dtype=cols.dtype, device=cols.device)  # (i, a, j, b): row 2i+a, column 2j+b
        for a, (k0, k1, shift) in enumerate(_PHASES):
            rows = cols[:, :, :, k0].clone()  # (b, h, w, kx, cout)
            _add_shifted(rows, cols[:, :, :, k1], shift, dim=1)
            for c, (j0, j1, jshift) in enumerate(_PHASES):
                phase = out[:, :, a, :, c]
                phase.copy_(rows[:, :, :, j0])
                _add_shifted(phase, rows[:, :, :, j1], jshift, dim=2)
        y = out.view(b, 2 * h, 2 * w, cout)
        if self.bias is not None:
            y.add_(self.bias.to(y.dtype))
        return y.permute(0, 3, 1, 2)  # channels_last memory, NCHW shape

    def extra_repr(self) -> str:
        """Channels and kernel, for ``print(module)``."""
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(4, 4), stride=(2, 2), padding=(1, 1)"


#: Convolutions a following batch norm folds into.
_FOLDABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)


def fold_batch_norm(net: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` / ``BatchNorm3d`` into the convolution it follows, in place.

    Only norms that directly follow a convolution in an ``nn.Sequential``; the norm becomes
    ``nn.Identity``.

    Returns the number folded. Raises ``ValueError`` for a module in training mode, whose batch
    norms normalise with batch statistics and cannot be folded.
    """
    if net.training:
        raise ValueError("fold_batch_norm needs a model in eval mode (call .eval() first)")
    folded = 0
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(1, len(seq)):
            conv, bn = seq[i - 1], seq[i]
            if type(bn) in (nn.BatchNorm2d, nn.BatchNorm3d) and bn.track_running_stats and type(conv) in _FOLDABLE:
                assert isinstance(conv, _FOLDABLE) and isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d))
                seq[i - 1] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d)))
                seq[i] = nn.Identity()
                folded += 1
    return folded


def optimize_for_inference(net: nn.Module, inplace: bool = False) -> nn.Module:
    """``net`` rewritten for inference: the same outputs, faster.

    In eval mode, with its batch norms folded and its k4 s2 transposed convolutions replaced by
    :class:`MatmulConvTranspose2d`: a copy, ``net`` left as it was, unless ``inplace``.

    Example:
        >>> fast = optimize_for_inference(generator)
        >>> with torch.inference_mode():
        ...     y = fast(x)  # generator(x) up to float rounding
    """
    fast = (net if inplace else copy.deepcopy(net)).eval()
    fold_batch_norm(fast)
    for parent in list(fast.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ConvTranspose2d) and MatmulConvTranspose2d.supports(child):
                setattr(parent, name, MatmulConvTranspose2d(child))
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast
