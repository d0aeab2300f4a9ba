"""A learned error scale (``loss.aleatoric``): the Laplace likelihood, the second channel, and the maps it joins.

The likelihood's minimum is the mean absolute error and it leaves the prediction's gradient alone;
the discriminator and the other losses see the first channel only; the scale decodes into output
units and adds to the passes' spread by the law of total variance; inpainting keeps a second
channel where the generator does not run; members with and without a scale are refused together.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medp2p.config import ConfigError, load_config
from medp2p.data.codecs import HU, MR_SOURCE
from medp2p.data.intensity import HU_WINDOW
from medp2p.data.prepare import Prep
from medp2p.infer import load_model, predict_cases
from medp2p.infer.ensemble import Pass, check_members, run_members
from medp2p.infer.volume import RunOptions, prepare_input, run_slices
from medp2p.io import read_volume
from medp2p.models import aleatoric_scale, laplace_nll
from medp2p.models.losses import SCALE_RANGE
from medp2p.plan import build_plan
from medp2p.train import Pix2PixStep, train
from medp2p.types import MASK, SOURCE, TARGET, Volume
from tests.conftest import ROOT
from tests.test_io_volumes import AFFINES

TINY = ROOT / "configs" / "tiny.yaml"


class CentreAndScale(torch.nn.Module):
    """A stand-in generator: channel 0 the centre input channel (plus ``ramp`` x column / width, which a shift pass
    does not undo: a spread), channel 1 a constant scale output ``t``."""

    def __init__(self, k: int, t: float, ramp: float = 0.0) -> None:
        super().__init__()
        self.k, self.t, self.ramp = k, t, ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x[:, self.k : self.k + 1] + self.ramp * torch.arange(x.shape[-1]) / x.shape[-1]
        return torch.cat([y, torch.full_like(y, self.t)], 1)


def test_the_scale_spans_its_range_log_linearly_and_the_likelihood_is_least_at_the_mean_absolute_error() -> None:
    ends = aleatoric_scale(torch.tensor([-1.0, 0.0, 1.0, 5.0]))
    assert ends[0].item() == pytest.approx(SCALE_RANGE[0]) and ends[2].item() == pytest.approx(SCALE_RANGE[1])
    assert ends[1].item() == pytest.approx(math.sqrt(SCALE_RANGE[0] * SCALE_RANGE[1])) and ends[3] == ends[2]
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(2, 1, 16, 16, generator=gen)
    pred = (target + 0.08 * torch.randn(2, 1, 16, 16, generator=gen).sign()).requires_grad_(True)  # |error| = 0.08 everywhere
    t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([t], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss = laplace_nll(t.expand(2, 1, 16, 16), pred, target)
        loss.backward()
        opt.step()
    assert aleatoric_scale(t).item() == pytest.approx(0.08, rel=0.02)
    assert pred.grad is None  # the prediction trains on its own losses only
    weight = torch.zeros(2, 1, 16, 16)
    weight[0] = 1
    assert laplace_nll(t.expand(2, 1, 16, 16), pred, target, weight).item() == pytest.approx(
        laplace_nll(t.expand(1, 1, 16, 16), pred[:1], target[:1]).item(), rel=1e-6
    )


def test_the_scale_is_a_second_generator_channel_for_image_tasks_and_refused_for_masks() -> None:
    plan = build_plan(load_config("mri2ct", TINY, ["loss.aleatoric=1"]))
    assert plan.generator.kwargs["out_channels"] == 2 and plan.losses.aleatoric == 1.0
    assert plan.discriminator is not None and plan.discriminator.kwargs["in_channels"] == plan.prep.in_channels + 1
    assert build_plan(load_config("mri2ct", TINY)).generator.kwargs["out_channels"] == 1
    with pytest.raises(ConfigError, match="loss.aleatoric"):
        load_config("seg", TINY, ["loss.aleatoric=1"])


def test_a_training_step_learns_the_scale_and_the_discriminator_sees_the_image_channel_only() -> None:
    plan = build_plan(load_config("mri2ct", TINY, ["loss.aleatoric=1"]))
    torch.manual_seed(0)
    G, D = plan.build_generator(), plan.build_discriminator()
    assert D is not None
    step = Pix2PixStep(
        G, D, torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 2e-4), plan.losses, torch.device("cpu"), None
    )
    gen = torch.Generator().manual_seed(1)
    size = plan.config.data.image_size
    batch = {
        SOURCE: torch.rand(2, plan.prep.in_channels, *size, generator=gen) * 2 - 1,
        TARGET: torch.rand(2, 1, *size, generator=gen) * 2 - 1,
        MASK: torch.ones(2, 1, *size),
    }
    losses = [step(i, batch) for i in range(30)]
    assert {"loss_G_NLL", "loss_G_L1", "loss_G_GAN", "loss_D"} <= set(losses[0])
    assert all(torch.isfinite(v) for v in losses[-1].values())
    assert losses[-1]["loss_G_NLL"] < losses[0]["loss_G_NLL"] - 0.5


@pytest.mark.parametrize("codec", [HU, MR_SOURCE], ids=["hu", "mr"])
def test_the_learned_scale_decodes_into_output_units_and_adds_to_the_spread(rng: np.random.Generator, codec) -> None:
    mr = Volume(rng.uniform(0, 1000, (24, 20, 9)).astype(np.float32), AFFINES["oblique"])
    prep = Prep(("mr",), "ct" if codec is HU else "mr", codec)
    inp = prepare_input(mr, prep)
    units = HU_WINDOW.half_width if codec is HU else inp.windows[0].half_width  # MR: the source's own window
    assert codec.units_per_model_unit(inp.windows, None) == units

    def member(t: float) -> SimpleNamespace:
        return SimpleNamespace(generator=CentreAndScale(0, t, ramp=0.5), prep=prep, options=RunOptions(batch_size=4), path="a")

    one = run_members([member(0.3)], inp, [Pass()])
    b = aleatoric_scale(torch.tensor(0.3)).item() * units
    assert one.learned_scale and one.std.shape == mr.shape
    np.testing.assert_allclose(one.std, math.sqrt(2) * b, rtol=1e-5)  # one pass: no spread, the scale alone
    passes = [Pass(), Pass("shift", (0, 3)), Pass("shift", (0, -3))]
    both = run_members([member(0.3)], inp, passes)
    spread = run_members([member(-1.0)], inp, passes)  # the smallest scale: the spread and 2 b_min^2
    epistemic = spread.std**2 - 2 * (SCALE_RANGE[0] * units) ** 2
    assert epistemic.max() > (0.05 * units) ** 2  # the shifts disagree
    np.testing.assert_allclose(both.std, np.sqrt(epistemic + 2 * b**2), rtol=1e-3)  # the law of total variance
    assert "learned Laplace error scale" in both.record(codec.units, False)["maps"]


def test_inpainting_keeps_a_second_channel_where_the_generator_does_not_run(rng: np.random.Generator) -> None:
    mr = Volume(rng.uniform(0, 1000, (16, 16, 6)).astype(np.float32), AFFINES["RAS"])
    region = np.zeros(mr.shape, np.float32)
    region[4:9, 5:10, 2:4] = 1
    prep = Prep(("mr",), "mr", MR_SOURCE, region=True)
    inp = prepare_input(mr, prep, mr.with_array(region))
    out = run_slices(CentreAndScale(0, 0.5), inp.stack, inp.extra, prep, RunOptions(batch_size=4))
    assert out.shape[0] == 2
    ran = inp.extra[0].flatten(1).amax(1) > 0
    assert ran.any() and not ran.all()
    assert torch.equal(out[0, ~ran], inp.stack[0, ~ran]) and bool((out[1, ~ran] == -1).all()) and bool((out[1, ran] == 0.5).all())


def test_a_tiny_run_with_a_learned_scale_writes_it_into_the_uncertainty_map(tiny_phantom: Path, tmp_path: Path, tiny_runs: dict) -> None:
    cfg = load_config("inpaint", TINY, ["data.val_cases=1", "loss.aleatoric=1"])
    run = train(cfg, tiny_phantom, tmp_path / "run", stop_step=2, progress=False).run_dir
    model = load_model(run)
    assert model.generator(torch.zeros(1, model.prep.in_channels, 32, 32)).shape[1] == 2
    predict_cases(run, [tiny_phantom], tmp_path / "plain")  # the image channel alone, as before
    report = predict_cases(run, [tiny_phantom], tmp_path / "out", uncertainty=True)
    assert len(report.written) == 3 and not report.failures
    case = tmp_path / "out" / "case_000"
    record = json.loads((case / "uncertainty.json").read_text())
    assert record["learned_scale"] is True and "loss.aleatoric" in record["maps"]
    plain = read_volume(tmp_path / "plain" / "case_000" / model.task.output_name)
    std = read_volume(case / model.task.uncertainty_names[0])
    assert std.shape == plain.shape and np.isfinite(std.array).all() and (std.array >= 0).all()
    assert (std.array > 0).any() and (std.array == 0).any()  # inside the region only
    with pytest.raises(ValueError, match="loss.aleatoric"):
        check_members([model, load_model(tiny_runs["inpaint"])])
    from medp2p.infer.onnx import onnx_contract

    output = onnx_contract(model.plan, model.prep.in_channels)["output"]
    assert output["channels"] == 2 and output["error_scale_range"] == list(SCALE_RANGE)
