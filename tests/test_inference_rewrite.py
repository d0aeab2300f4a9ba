"""optimize_for_inference: folded batch norms and matmul transposed convolutions compute what the
plain generator computes (docs/scale.md), on every path the dispatch can take."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medp2p.device.precision import autocast
from medp2p.models import build_generator
from medp2p.models.inference import NARROW_OUTPUT, SMALL_INPUT, MatmulConvTranspose2d, fold_batch_norm, optimize_for_inference


def _randomise_norms(net: nn.Module) -> None:
    """Running statistics and affine parameters far from the identity, so that folding shows."""
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)


@pytest.mark.parametrize(
    "cin, cout, size, matmul",
    [(3, 1, (5, 6), True), (8, 4, (1, 1), True), (8, 5, (1, 7), True), (6, 6, (4, 4), True), (6, 6, (4, 5), False), (4, 2, (9, 3), True)],
)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_matmul_conv_transpose_equals_conv_transpose(
    cin: int, cout: int, size: tuple[int, int], matmul: bool, bias: bool, channels_last: bool
) -> None:
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=bias)
    fast = MatmulConvTranspose2d(conv)
    x = torch.randn(3, cin, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # narrow (at most NARROW_OUTPUT channels out) or small (at most SMALL_INPUT pixels in): matmul
    assert NARROW_OUTPUT == 4 and SMALL_INPUT == 16
    assert fast.uses_matmul(x) == matmul
    with torch.inference_mode():
        expected, got = conv(x), fast(x)
    assert got.shape == expected.shape == (3, cout, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_matmul_conv_transpose_follows_its_weight() -> None:
    """The cached tap matrix is remade after a state_dict load, an in-place write or a dtype change."""
    torch.manual_seed(0)
    conv, other = nn.ConvTranspose2d(6, 2, 4, 2, 1), nn.ConvTranspose2d(6, 2, 4, 2, 1)
    fast = MatmulConvTranspose2d(conv)
    x = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv(x))
        fast.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x), other(x), atol=1e-5, rtol=1e-5)
        fast.weight.mul_(2)
        other.weight.mul_(2)
        torch.testing.assert_close(fast(x), other(x), atol=1e-5, rtol=1e-5)
        fast.double()
        torch.testing.assert_close(fast(x.double()), other.double()(x.double()))


def test_matmul_conv_transpose_under_bfloat16_autocast() -> None:
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(16, 1, 4, 2, 1)
    fast = MatmulConvTranspose2d(conv)
    x = torch.randn(2, 16, 8, 8)
    cpu = torch.device("cpu")
    with torch.inference_mode(), autocast(cpu, torch.bfloat16):
        expected, got = conv(x), fast(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), atol=0.05, rtol=0.02)


def test_matmul_conv_transpose_takes_only_what_it_computes() -> None:
    assert MatmulConvTranspose2d.supports(nn.ConvTranspose2d(4, 4, 4, 2, 1))
    for other in (
        nn.ConvTranspose2d(4, 4, 3, 2, 1, output_padding=1),  # the ResNet generator's upsampling
        nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2),
        nn.ConvTranspose2d(4, 4, 4, 1, 1),
        nn.Conv2d(4, 4, 4, 2, 1),
    ):
        assert not MatmulConvTranspose2d.supports(other)
    with pytest.raises(ValueError, match="k=4, s=2, p=1"):
        MatmulConvTranspose2d(nn.ConvTranspose2d(4, 4, 3, 2, 1))


CASES = [
    # generator, kwargs, in/out channels, input size
    ("unet", {"depth": 5, "base_channels": 8, "norm": "batch"}, (3, 1), (64, 64)),
    ("unet", {"depth": 4, "base_channels": 8, "norm": "batch", "final_activation": "none"}, (2, 3), (37, 50)),
    ("unet", {"depth": 4, "base_channels": 8, "norm": "instance"}, (1, 1), (32, 48)),
    ("unet", {"depth": 3, "base_channels": 4, "norm": "none"}, (1, 6), (16, 16)),
    ("resnet", {"blocks": 2, "base_channels": 8, "norm": "batch"}, (3, 1), (30, 26)),
]


@pytest.mark.parametrize("name, kwargs, channels, size", CASES)
@pytest.mark.parametrize("batch", [1, 4])
def test_optimized_generator_predicts_what_the_plain_one_does(
    name: str, kwargs: dict, channels: tuple[int, int], size: tuple[int, int], batch: int
) -> None:
    torch.manual_seed(0)
    g = build_generator(name, in_channels=channels[0], out_channels=channels[1], dropout=0.5, **kwargs)
    _randomise_norms(g)
    g.eval()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    fast = optimize_for_inference(g)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # all folded ...
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == n_bn  # ... in the copy only
    n_up = sum(MatmulConvTranspose2d.supports(m) for m in g.modules())
    assert sum(isinstance(m, MatmulConvTranspose2d) for m in fast.modules()) == n_up
    assert (n_up > 0) == (name == "unet")
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    x = torch.rand(batch, channels[0], *size) * 2 - 1
    with torch.inference_mode():
        expected = g(x)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            got = fast(x.contiguous(memory_format=memory_format))
            torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in before.items())


def test_fold_batch_norm_refuses_a_training_model_and_counts() -> None:
    g = build_generator("unet", in_channels=1, out_channels=1, depth=4, base_channels=4, norm="batch")
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(g)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert n_bn > 0 and fold_batch_norm(g.eval()) == n_bn
    assert fold_batch_norm(build_generator("unet", in_channels=1, out_channels=1, depth=4, base_channels=4).eval()) == 0
