"""Shape tables for the generators and the discriminator; registries fail loudly."""

from __future__ import annotations

import pytest
import torch

from medp2p.models import GENERATORS, build_discriminator, build_generator, gan_loss, soft_dice_loss, weighted_l1, weighted_l2

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
    with pytest.raises(KeyError, match=r"Unknown generator 'unet256'; choose from \['resnet', 'unet', 'unet3d'\]"):
        build_generator("unet256", in_channels=1, out_channels=1)
    with pytest.raises(KeyError, match="Unknown discriminator"):
        build_discriminator("pixel", in_channels=2)
    assert sorted(GENERATORS) == ["resnet", "unet", "unet3d"]


def test_losses() -> None:
    logits = torch.tensor([[[[10.0]]]])
    assert gan_loss(logits, True) < 1e-3 and gan_loss(logits, False) > 5
    assert gan_loss(torch.ones(1, 1, 2, 2), True, "lsgan") == 0
    pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert weighted_l1(pred, target) == 0.5
    assert weighted_l1(pred, target, target) == 1.0  # only where the weight is
    assert weighted_l2(pred, target * 3) == 4.5 and weighted_l2(pred, target * 3, target) == 9.0
    assert weighted_l2(pred, target * 3, 1 - target) == 0.0
    assert soft_dice_loss(torch.full((1, 1, 2, 2), 20.0), torch.ones(1, 1, 2, 2)) < 1e-3


def test_fast_path_matches_fp32_within_tolerance() -> None:
    """bfloat16 autocast + channels_last (the CPU/CUDA fast path) against fp32 NCHW on the same weights.

    Stated tolerance (docs/scale.md): generator outputs in [-1, 1] differ by at most 0.02 and by
    0.005 on average (10 HU on the CT window), training losses by 2%.
    """
    from medp2p.device.precision import autocast
    from medp2p.train import Pix2PixStep
    from medp2p.train.steps import LossSpec
    from medp2p.types import SOURCE, TARGET

    torch.manual_seed(0)
    g = build_generator("unet", in_channels=3, out_channels=1, depth=5, base_channels=16, dropout=0.0).eval()
    x = torch.rand(8, 3, 64, 64) * 2 - 1
    cpu = torch.device("cpu")
    with torch.inference_mode():
        ref = g(x)
        g_fast = g.to(memory_format=torch.channels_last)
        with autocast(cpu, torch.bfloat16):
            fast = g_fast(x.contiguous(memory_format=torch.channels_last)).float()
    diff = (fast - ref).abs()
    assert float(diff.max()) < 0.02 and float(diff.mean()) < 0.005

    def one_step(dtype, memory_format) -> dict[str, float]:
        torch.manual_seed(1)
        gen = build_generator("unet", in_channels=3, out_channels=1, depth=5, base_channels=16, dropout=0.0).to(memory_format=memory_format)
        disc = build_discriminator("patchgan", in_channels=4, base_channels=16, layers=3).to(memory_format=memory_format)
        opts = [torch.optim.Adam(n.parameters(), 2e-4, betas=(0.5, 0.999)) for n in (gen, disc)]
        step = Pix2PixStep(gen, disc, *opts, LossSpec(l1=100.0, gan=1.0, dice=0.0, bce=0.0), cpu, dtype, None, memory_format)
        batch = {SOURCE: x, TARGET: torch.rand(8, 1, 64, 64) * 2 - 1}
        return {k: float(v) for k, v in step(0, batch).items()}  # the step leaves its losses on the device

    fp32, bf16 = one_step(None, torch.contiguous_format), one_step(torch.bfloat16, torch.channels_last)
    for key in ("loss_D", "loss_G", "loss_G_L1"):
        assert bf16[key] == pytest.approx(fp32[key], rel=0.02), key


@pytest.mark.slow
def test_frozen_compilation_predicts_what_eager_does() -> None:
    from medp2p.device.precision import compile_for_inference

    torch.manual_seed(0)
    g = build_generator("unet", in_channels=1, out_channels=1, depth=3, base_channels=4, dropout=0.5).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.inference_mode():
        eager = g(x)
        compiled = compile_for_inference(g)(x)
    assert torch.allclose(compiled, eager, atol=1e-4)


@pytest.mark.parametrize(
    "device, dtype, setting, training, expected",
    [
        ("cpu", None, "auto", True, torch.contiguous_format),  # float32 training on a CPU: NCHW
        ("cpu", torch.bfloat16, "auto", True, torch.channels_last),  # autocast: NHWC
        ("cuda", torch.bfloat16, "auto", True, torch.channels_last),
        ("cuda", None, "auto", True, torch.channels_last),
        ("cpu", None, "auto", False, torch.channels_last),  # prediction: NHWC
        ("cpu", None, True, True, torch.channels_last),  # explicit settings are kept
        ("cpu", torch.bfloat16, False, True, torch.contiguous_format),
        ("cpu", None, False, False, torch.contiguous_format),
    ],
)
def test_memory_format_auto_and_explicit(device: str, dtype, setting, training: bool, expected) -> None:
    from medp2p.device.precision import memory_format

    assert memory_format(torch.device(device), dtype, setting, training=training) == expected


def test_channels_last_setting_is_auto_true_or_false() -> None:
    from medp2p.config import load_config
    from medp2p.device.precision import memory_format

    assert load_config("mri2ct", None, []).train.channels_last == "auto"
    assert load_config("mri2ct", None, ["train.channels_last=false"]).train.channels_last is False
    assert load_config("mri2ct", None, ["train.channels_last=true"]).train.channels_last is True
    with pytest.raises(Exception, match="channels_last"):
        load_config("mri2ct", None, ["train.channels_last=sideways"])
    with pytest.raises(ValueError, match="auto, true or false"):
        memory_format(torch.device("cpu"), None, "sideways")


@pytest.mark.parametrize("l1, l2, learns", [(1.0, 0.0, "median"), (0.0, 1.0, "mean")])
def test_l1_learns_the_median_and_l2_the_mean_of_a_skewed_target(l1: float, l2: float, learns: str) -> None:
    """One free output value against targets 0, 0, 0, 1 (median 0, mean 0.25): ``loss.l1`` and ``loss.l2`` in a real step."""
    from medp2p.train import Pix2PixStep
    from medp2p.train.steps import LossSpec
    from medp2p.types import MASK, SOURCE, TARGET

    class Constant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.value = torch.nn.Parameter(torch.tensor(0.6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.value.expand(x.shape[0], 1, *x.shape[2:])

    gen = Constant()
    spec = LossSpec(l1=l1, gan=0.0, dice=0.0, bce=0.0, l2=l2)
    step = Pix2PixStep(gen, None, torch.optim.SGD(gen.parameters(), 0.01), None, spec, torch.device("cpu"), None)
    target = torch.tensor([0.0, 0.0, 0.0, 1.0, 5.0]).reshape(1, 1, 1, 5)
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 1, 5)  # the 5 lies outside the mask
    batch = {SOURCE: torch.zeros(1, 1, 1, 5), TARGET: target, MASK: mask}
    losses = [step(i, batch) for i in range(400)]
    assert set(losses[0]) == {"loss_G", "loss_G_L1" if l1 else "loss_G_L2"}
    assert float(gen.value) == pytest.approx({"median": 0.0, "mean": 0.25}[learns], abs=0.02)


@pytest.mark.parametrize("outside", [0.0, 0.1])
def test_outside_weight_learns_the_background_outside_the_mask(outside: float) -> None:
    """``loss.outside_weight``: 0 leaves voxels outside the mask untrained; > 0 learns them (a CT's air), at that weight."""
    from medp2p.config import load_config
    from medp2p.plan import build_plan
    from medp2p.train import Pix2PixStep
    from medp2p.train.steps import LossSpec
    from medp2p.types import MASK, SOURCE, TARGET

    assert build_plan(load_config("mri2ct", None, [f"loss.outside_weight={outside}"])).losses.outside_weight == outside
    with pytest.raises(Exception, match="outside_weight"):
        load_config("mri2ct", None, ["loss.outside_weight=2"])  # a weight above the mask's own 1

    class Free(torch.nn.Module):  # one free output value per pixel
        def __init__(self) -> None:
            super().__init__()
            self.value = torch.nn.Parameter(torch.full((1, 1, 1, 5), 0.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.value

    gen = Free()
    spec = LossSpec(l1=1.0, gan=0.0, dice=0.0, bce=0.0, outside_weight=outside)
    step = Pix2PixStep(gen, None, torch.optim.SGD(gen.parameters(), 0.2), None, spec, torch.device("cpu"), None)
    target = torch.tensor([0.0, 0.0, 0.5, 1.0, -1.0]).reshape(1, 1, 1, 5)  # the -1 (air) lies outside the mask
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 1, 5)
    batch = {SOURCE: torch.zeros(1, 1, 1, 5), TARGET: target, MASK: mask}
    first = float(step(0, batch)["loss_G_L1"])
    # the weighted mean of |0.5 - t|: 0.5, 0.5, 0, 0.5 inside (weight 1) and 1.5 outside (weight `outside`)
    assert first == pytest.approx((1.5 + 1.5 * outside) / (4 + outside), abs=1e-6)
    for i in range(1, 600):
        step(i, batch)
    got = gen.value.detach().flatten()
    assert got[:4].tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0], abs=0.05)  # inside: learned either way
    assert float(got[4]) == (pytest.approx(-1.0, abs=0.05) if outside else 0.5)  # outside: learned only with a weight
