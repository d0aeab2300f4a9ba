"""Shape tables for the generators and the discriminator; registries fail loudly."""

from __future__ import annotations

import pytest
import torch

from medp2p.models import GENERATORS, build_discriminator, build_generator, gan_loss, soft_dice_loss, weighted_l1

GEN_CASES = [
    # name, kwargs, in_channels, input size
    ("unet", {"depth": 4, "base_channels": 8}, 1, (32, 32)),
    ("unet", {"depth": 4, "base_channels": 8}, 3, (48, 64)),
    ("unet", {"depth": 5, "base_channels": 4}, 5, (37, 50)),  # not a multiple of 2**depth: padded
    ("unet", {"depth": 3, "base_channels": 4, "norm": "batch"}, 3, (16, 24)),
    ("unet", {"depth": 3, "base_channels": 4, "norm": "none", "final_activation": "none"}, 1, (8, 8)),
    ("resnet", {"blocks": 2, "base_channels": 8}, 1, (32, 32)),
    ("resnet", {"blocks": 1, "base_channels": 4}, 3, (30, 26)),
    ("resnet", {"blocks": 1, "base_channels": 4, "norm": "batch"}, 5, (21, 19)),
]


@pytest.mark.parametrize("name, kwargs, cin, size", GEN_CASES)
def test_generator_shapes(name: str, kwargs: dict, cin: int, size: tuple[int, int]) -> None:
    g = build_generator(name, in_channels=cin, out_channels=1, **kwargs).eval()
    y = g(torch.randn(2, cin, *size))
    assert y.shape == (2, 1, *size)
    if kwargs.get("final_activation", "tanh") == "tanh":
        assert y.abs().max() <= 1


def test_unet256_is_pix2pix_sized() -> None:
    g = build_generator("unet", in_channels=1, out_channels=1)
    assert g.size_multiple == 256
    n = sum(p.numel() for p in g.parameters())
    assert 54.3e6 < n < 54.5e6  # pix2pix unet_256: 54.4M
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == 3
    r = build_generator("resnet", in_channels=1, out_channels=1)
    assert 11.3e6 < sum(p.numel() for p in r.parameters()) < 11.4e6  # resnet_9blocks: 11.4M


@pytest.mark.parametrize(
    "cin, layers, size, out",
    [(2, 3, 256, 30), (4, 3, 256, 30), (6, 3, 64, 6), (2, 2, 32, 6), (4, 1, 16, 6)],
)
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_discriminator_shapes(cin: int, layers: int, size: int, out: int, norm: str) -> None:
    d = build_discriminator("patchgan", in_channels=cin, base_channels=8, layers=layers, norm=norm)
    assert d(torch.randn(2, cin, size, size)).shape == (2, 1, out, out)


def test_spectral_norm_wraps_every_convolution() -> None:
    d = build_discriminator("patchgan", in_channels=2, base_channels=8, spectral_norm=True)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    assert d(torch.randn(1, 2, 64, 64)).shape == (1, 1, 6, 6)


def test_registry_misses_name_the_choices() -> None:
    with pytest.raises(KeyError, match=r"Unknown generator 'unet256'; choose from \['resnet', 'unet'\]"):
        build_generator("unet256", in_channels=1, out_channels=1)
    with pytest.raises(KeyError, match="Unknown discriminator"):
        build_discriminator("pixel", in_channels=2)
    assert sorted(GENERATORS) == ["resnet", "unet"]


def test_losses() -> None:
    logits = torch.tensor([[[[10.0]]]])
    assert gan_loss(logits, True) < 1e-3 and gan_loss(logits, False) > 5
    assert gan_loss(torch.ones(1, 1, 2, 2), True, "lsgan") == 0
    pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert weighted_l1(pred, target) == 0.5
    assert weighted_l1(pred, target, target) == 1.0  # only where the weight is
    assert soft_dice_loss(torch.full((1, 1, 2, 2), 20.0), torch.ones(1, 1, 2, 2)) < 1e-3
