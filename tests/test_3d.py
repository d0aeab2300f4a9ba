"""The 3D patch mode (``model.dims: 3``): networks, patch sampling and regions, sliding windows, the four tasks end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.config import ConfigError, load_config
from medp2p.data.codecs import BACKGROUND
from medp2p.data.corruption import corruption_patches
from medp2p.data.sampling import SliceTables, draw_patches
from medp2p.infer.volume import RunOptions, predict_volume, run_slices
from medp2p.infer.windows import region_box, run_windows
from medp2p.io import read_volume
from medp2p.models.unet3d import PatchDiscriminator3D, UNet3DGenerator, size_multiples, unet_strides
from medp2p.plan import build_plan
from medp2p.types import Volume
from tests.conftest import ROOT

TINY = str(ROOT / "configs" / "tiny.yaml")
SETS_3D = ["model.dims=3", "data.patch_size=[16,16,8]", "model.depth=3"]


class Identity(torch.nn.Module):
    """The first input channel back: what an exact sliding window must return unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].clone()


# --- networks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patch, levels, strides",
    [
        ((32, 96, 96), 4, ((2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))),  # the slab stops at 4 slices
        ((8, 64, 64), 4, ((2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2))),
        ((64, 64, 64), 3, ((2, 2, 2), (2, 2, 2), (2, 2, 2))),
        ((4, 16, 16), 3, ((1, 2, 2), (1, 2, 2), (1, 1, 1))),  # nothing left to halve: stride-1 levels
    ],
)
def test_strides_halve_only_axes_that_keep_size(patch: tuple[int, int, int], levels: int, strides: tuple) -> None:
    assert unet_strides(patch, levels) == strides


def test_strides_wait_for_the_coarse_axis_as_nnunet_does() -> None:
    # 2.5 mm slices, 0.5 mm pixels: in-plane is halved twice before the slice axis is
    assert unet_strides((32, 128, 128), 4, spacing=(2.5, 0.5, 0.5)) == ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
    assert size_multiples(unet_strides((32, 128, 128), 4, spacing=(2.5, 0.5, 0.5))) == (4, 16, 16)


@pytest.mark.parametrize(
    "patch, depth, channels, size, d_out",
    [
        ((16, 32, 32), 3, 1, (16, 32, 32), (1, 1, 4, 4, 4)),
        ((8, 32, 32), 4, 2, (8, 32, 32), (1, 1, 4, 4, 4)),  # the slab stops at 4 slices
        ((16, 32, 32), 3, 1, (13, 21, 30), None),  # odd sizes: padded inside, cropped back
        ((32, 32, 32), 5, 3, (32, 32, 32), (1, 1, 4, 4, 4)),
    ],
)
def test_3d_network_shapes(patch: tuple, depth: int, channels: int, size: tuple, d_out: tuple | None) -> None:
    g = UNet3DGenerator(channels, 1, unet_strides(patch, depth), base_channels=4, norm="batch", dropout=0.5)
    x = torch.randn(1, channels, *size)
    assert g(x).shape == (1, 1, *size)
    assert g.size_multiple == size_multiples(unet_strides(patch, depth))
    if d_out is not None:
        d = PatchDiscriminator3D(channels + 1, patch, base_channels=4, layers=3)
        assert d(torch.randn(1, channels + 1, *size)).shape == d_out


def test_3d_generator_is_a_function_of_its_whole_patch() -> None:
    # a voxel's output depends on slices above and below it (what a 2D slice cannot see)
    torch.manual_seed(0)
    g = UNet3DGenerator(1, 1, unet_strides((8, 16, 16), 3), base_channels=4).eval()
    x = torch.randn(1, 1, 8, 16, 16)
    y = x.clone()
    y[:, :, 0] += 1.0  # change the first slice only
    with torch.no_grad():
        assert not torch.allclose(g(x)[:, :, 4], g(y)[:, :, 4])


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets, message",
    [
        (["model.dims=3"], "needs data.patch_size"),
        (["model.dims=3", "data.patch_size=[16,16,8]", "model.generator=resnet"], "has no 3D form"),
        (["model.dims=3", "data.patch_size=[16,16,8]", "data.context_slices=1"], "context_slices=0"),
        (["model.dims=3", "data.patch_size=[18,16,8]", "model.depth=3"], "must be a multiple of [4, 4, 2]"),
        (["data.patch_size=[16,16,8]"], "set model.dims=3"),
    ],
)
def test_3d_config_mistakes_are_named(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("mri2ct", TINY, sets)


def test_blob_regions_are_3d_only() -> None:
    with pytest.raises(ConfigError, match="'blob' is a 3D compartment"):
        load_config("inpaint", TINY, ["inpaint.kinds=[box, blob]"])
    cfg = load_config("inpaint", TINY, [*SETS_3D, "inpaint.kinds=[box, blob, slices]"])  # 'slices' needs no context in 3D
    plan = build_plan(cfg)
    assert plan.prep.patch_size == (8, 16, 16) and plan.prep.in_channels == 2  # the image and the region channel
    assert plan.generator.name == "unet3d" and plan.discriminator is not None and plan.discriminator.name == "patchgan3d"


# --- sampling and regions -------------------------------------------------------------------------


class _Case:
    """A sampled case in memory: (C, D, H, W) arrays served slice-major."""

    def __init__(self, depth: int, body: np.ndarray) -> None:
        self.id, self.depth, self.has_mask = "c", depth, True
        self.weights = np.ones(depth)
        self.extent = np.array([[1, 10, 2, 12]] * depth)
        grid = np.arange(depth, dtype=np.float32)[:, None, None] * np.ones((depth, 14, 16), np.float32)
        self.arrays = {"source": grid[None], "target": -grid[None], "body": body[None], "mask": (grid[None] > 1).astype(np.float32)}

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.arrays[name][:, start:stop].transpose(1, 0, 2, 3)


def test_patches_are_slabs_around_a_drawn_slice_moved_inside_the_volume() -> None:
    case = _Case(12, np.ones((12, 14, 16), np.float32))
    batch = draw_patches(SliceTables([case]), 6, (4, 8, 8), torch.Generator().manual_seed(3))
    assert batch["source"].shape == (6, 1, 4, 8, 8) and batch["target"].shape == (6, 1, 4, 8, 8)
    assert batch["body"].shape == (6, 4, 8, 8) and batch["mask"].shape == (6, 1, 4, 8, 8)
    slabs = batch["source"][:, 0, :, 0, 0]  # the slice index of each patch slice
    assert torch.equal(slabs[:, 1:] - slabs[:, :-1], torch.ones(6, 3))  # consecutive slices
    assert slabs.min() >= 0 and slabs.max() <= 11
    assert torch.equal(batch["target"], -batch["source"])
    again = draw_patches(SliceTables([case]), 6, (4, 8, 8), torch.Generator().manual_seed(3))
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # the batch is its seed's


def test_a_volume_thinner_than_the_patch_repeats_its_edge_slices() -> None:
    case = _Case(3, np.ones((3, 14, 16), np.float32))
    batch = draw_patches(SliceTables([case]), 4, (6, 8, 8), torch.Generator().manual_seed(0))
    slabs = batch["source"][:, 0, :, 0, 0]
    assert slabs.min() == 0 and slabs.max() == 2
    assert torch.all(slabs[:, 1:] >= slabs[:, :-1])


@pytest.mark.parametrize("kind", ["box", "blob", "slices", "stripes"])
def test_patch_regions_touch_the_centre_slice_and_stay_in_the_body(kind: str) -> None:
    body = torch.zeros(8, 8, 24, 24)
    body[:, :, 4:20, 3:21] = 1
    regions = corruption_patches(body, (kind,), (0.2, 0.5), torch.Generator().manual_seed(5))
    assert regions.shape == body.shape and set(regions.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(regions[:, 4].flatten(1).amax(1) == 1)  # every sample hits its centre slice
    if kind in ("box", "blob"):
        assert torch.all(regions <= body)
        assert torch.all(regions.flatten(2).amax(2).sum(1) > 1)  # a 3D region: more than one slice
    if kind == "slices":
        per_slice = regions.flatten(2).amin(2)  # whole slices
        assert torch.equal(per_slice, regions.flatten(2).amax(2))
    again = corruption_patches(body, (kind,), (0.2, 0.5), torch.Generator().manual_seed(5))
    assert torch.equal(regions, again)


def test_blobs_are_not_boxes() -> None:
    body = torch.ones(16, 16, 32, 32)
    gen = torch.Generator().manual_seed(1)
    blob = corruption_patches(body, ("blob",), (0.4, 0.6), gen)
    filled = []
    for r in blob:
        idx = torch.nonzero(r)
        lo, hi = idx.amin(0), idx.amax(0)
        filled.append(r.sum() / torch.prod(hi - lo + 1))
    assert max(filled) < 0.9  # ellipsoids fill less of their bounding box than a box does


# --- sliding windows ------------------------------------------------------------------------------


def _oblique(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    theta = np.deg2rad(17.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = (-40.0, 12.5, 7.0)
    arr = rng.normal(100, 30, shape).astype(np.float32)
    arr[:2] = 0  # some background
    return Volume(arr, affine)


@pytest.mark.parametrize("shape, spacing", [((23, 19, 11), (1.1, 0.9, 3.0)), ((9, 31, 5), (0.7, 0.7, 4.5)), ((40, 37, 29), (1, 1, 1))])
@pytest.mark.parametrize("tta", [False, True])
def test_identity_through_sliding_windows_is_exact(shape: tuple, spacing: tuple, tta: bool) -> None:
    plan = build_plan(load_config("mri2ct", TINY, SETS_3D))
    prep = plan.inference_prep
    rng = torch.Generator().manual_seed(0)
    stack = torch.randn(1, shape[2], shape[0], shape[1], generator=rng)  # odd sizes, some thinner than the patch
    out = run_windows(Identity(), stack, None, prep, RunOptions(batch_size=3, flip_tta=tta))
    assert torch.equal(out, stack)
    # end to end on an oblique, anisotropic volume: the same sCT as slice-by-slice prediction, on its grid
    vol = _oblique(shape, spacing)
    three = predict_volume(Identity(), vol, prep, options=RunOptions(batch_size=2, flip_tta=tta))
    two = predict_volume(Identity(), vol, replace(prep, patch_size=None), options=RunOptions(batch_size=2))
    assert three.shape == vol.shape and np.array_equal(three.affine, vol.affine)
    assert np.array_equal(three.array, two.array)


def test_windows_blend_with_gaussian_weights_not_a_plain_mean() -> None:
    class Position(torch.nn.Module):  # each window's output: its own index, constant over the window
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.stack([torch.full(x.shape[2:], float(Position.calls + i)) for i in range(x.shape[0])])[:, None]
            Position.calls += x.shape[0]
            return out

    plan = build_plan(load_config("mri2ct", TINY, SETS_3D))
    stack = torch.zeros(1, 8, 16, 24)  # two windows side by side along W, overlapping by half
    out = run_windows(Position(), stack, None, plan.inference_prep, RunOptions(batch_size=1))
    row = out[0, 4, 8]
    assert row[0] == 0 and row[-1] == 1  # only one window covers each end
    assert 0 < row[12] < 1 and row[10] < row[12] < row[14]  # a smooth hand-over in the overlap
    assert abs(float(row[11] + row[12]) - 1.0) < 1e-6  # symmetric about the overlap's centre


def test_inpainting_windows_run_only_around_the_region() -> None:
    plan = build_plan(load_config("inpaint", TINY, SETS_3D))
    stack = torch.randn(1, 20, 48, 48)
    extra = torch.zeros(1, 20, 48, 48)
    extra[0, 9:11, 20:24, 30:33] = 1
    box = region_box(extra, (8, 16, 16))
    assert box == (slice(5, 15), slice(12, 32), slice(22, 41))
    seen = []

    class Spy(Identity):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape)
            return super().forward(x)

    out = run_windows(Spy(), stack, extra, plan.inference_prep, RunOptions(batch_size=4))
    assert torch.equal(out, stack[:1])  # identity inside, the input outside
    assert sum(s[0] for s in seen) == 8  # 2 x 2 x 2 windows over the box, not 3 x 6 x 6 over the volume
    assert torch.equal(run_windows(Spy(), stack, torch.zeros_like(extra), plan.inference_prep, RunOptions()), stack[:1])


def test_run_slices_hands_3d_preps_to_the_windows() -> None:
    plan = build_plan(load_config("mri2ct", TINY, SETS_3D))
    stack = torch.randn(1, 6, 10, 12)
    out = run_slices(Identity(), stack, None, plan.inference_prep, RunOptions(batch_size=2, fixed_batch=True))
    assert torch.equal(out, stack)
    assert float(BACKGROUND) == -1.0  # the pad value of a volume thinner than the patch


# --- the four tasks end to end --------------------------------------------------------------------


def _cli(*args: str) -> object:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("task", ["mri2ct", "seg", "inpaint", "mr2mr"])
def test_each_task_trains_predicts_and_evaluates_in_3d(task: str, tiny_phantom: Path, contrasts: Path, tmp_path: Path) -> None:
    data = contrasts / "list.json" if task == "mr2mr" else tiny_phantom
    sets = [x for s in [*(["data.val_cases=1"] if task != "mr2mr" else []), *SETS_3D, "train.steps=3"] for x in ("--set", s)]
    if task == "inpaint":
        sets += ["--set", "inpaint.kinds=[box, blob]"]
    _cli("train", "--task", task, "--data", str(data), "--config", TINY, "--out", str(tmp_path / "run"), *sets)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert any(v.dim() == 5 for v in ckpt["generator"].values())  # 3D convolutions were trained
    extra = ["--uncertainty"] if task == "mri2ct" else []  # members x passes (mirror, shifts) from the same pipeline
    _cli("predict", "--model", str(tmp_path / "run"), "-i", str(data), "-o", str(tmp_path / "pred"), *extra)
    _cli("evaluate", "--task", task, "--pred", str(tmp_path / "pred"), "--ref", str(data), "-o", str(tmp_path / "report"))
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert not summary["failures"] and not summary["missing"] and summary["cases"] == 3
    assert (tmp_path / "report" / "metrics.csv").is_file()
    from medp2p.tasks import TASKS

    for case in sorted(p for p in (tmp_path / "pred").iterdir() if p.is_dir()):
        out = read_volume(case / TASKS[task].output_name)
        ref = read_volume(tiny_phantom / case.name / "mr.nii.gz")
        assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)  # on the input's exact grid
        if extra:
            std = read_volume(case / "sct_std.nii.gz")
            assert std.shape == ref.shape and np.allclose(std.affine, ref.affine) and std.array.max() > 0


def test_3d_resume_is_bit_identical(tiny_phantom: Path, tmp_path: Path) -> None:
    # dropout (depth 6 has full-width inner levels), 3D regions and augmentation all draw randomness
    extra = ["data.val_cases=1", *SETS_3D[:2], "model.depth=6", "inpaint.kinds=[box, blob, slices, stripes]"]
    sets = [x for e in extra for x in ("--set", e)]
    common = ("--task", "inpaint", "--data", str(tiny_phantom), "--config", TINY, *sets)
    _cli("train", *common, "--out", str(tmp_path / "a"), "--steps", "4")
    _cli("train", *common, "--out", str(tmp_path / "b"), "--steps", "2")
    _cli("train", "--out", str(tmp_path / "b"), "--resume", "--steps", "4")
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in "ab")
    assert a["step"] == b["step"] == 4
    assert any(
        m.p > 0 for m in build_plan(load_config("inpaint", TINY, extra)).build_generator().modules() if isinstance(m, torch.nn.Dropout)
    )
    for net in ("generator", "discriminator"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)


# --- training pieces ------------------------------------------------------------------------------


def _prepared(tiny_phantom: Path, task: str, sets: list[str]) -> tuple:
    from medp2p.data.case_reader import read_case
    from medp2p.data.prepare import prepare_case

    cfg = load_config(task, TINY, [*SETS_3D, *sets])
    plan = build_plan(cfg)
    files = {k: str(tiny_phantom / "case_000" / f"{k}.nii.gz") for k in ("mr", "ct", "mask", "tumor")}
    return plan, prepare_case(read_case({"id": "c", **files}, plan.keys), plan.prep)


def test_a_3d_slab_split_keeps_only_the_training_slab(tiny_phantom: Path) -> None:
    from medp2p.data.geometry import slab_bounds

    _, whole = _prepared(tiny_phantom, "mri2ct", [])
    _, slab = _prepared(tiny_phantom, "mri2ct", ["data.slice_range=[0.0, 0.5]"])
    lo, hi = slab_bounds(whole.source.shape[1], (0.0, 0.5))
    assert slab.source.shape[1] == hi - lo == slab.weights.shape[0]  # no patch can reach the held-out slices
    assert torch.equal(slab.source, whole.source[:, lo:hi]) and torch.equal(slab.target, whole.target[:, lo:hi])


def test_patch_augmentation_moves_every_slice_alike(tiny_phantom: Path) -> None:
    from medp2p.data.augment import AugmentSpec
    from medp2p.train.batches import BatchRecipe

    plan, case = _prepared(tiny_phantom, "mri2ct", [])
    tables = SliceTables([case])
    raw = draw_patches(tables, 4, plan.prep.patch_size, torch.Generator().manual_seed(2))
    raw["source"] = raw["source"][:, :, :1].expand_as(raw["source"]).clone()  # every slice the same image
    raw["target"] = raw["target"][:, :, :1].expand_as(raw["target"]).clone()
    spec = AugmentSpec(flip_prob=1.0, affine_prob=1.0, intensity_prob=1.0, rotate_deg=20, flip_dim=-1)
    out = BatchRecipe.of(plan, spec)(dict(raw), torch.Generator().manual_seed(9))
    assert out["source"].shape == raw["source"].shape and out["target"].shape == raw["target"].shape
    assert not torch.equal(out["source"], raw["source"])  # it was augmented ...
    for key in ("source", "target"):  # ... and each patch's slices stayed identical to each other
        assert torch.equal(out[key], out[key][:, :, :1].expand_as(out[key]))


@pytest.mark.parametrize("task", ["mri2ct", "inpaint"])
def test_3d_loss_goes_down_on_a_fixed_batch(tiny_phantom: Path, task: str) -> None:
    from medp2p.data.augment import AugmentSpec
    from medp2p.train.batches import BatchRecipe
    from medp2p.train.steps import Pix2PixStep

    plan, case = _prepared(tiny_phantom, task, ["train.precision=fp32", "model.dropout=0", "inpaint.kinds=[blob]"])
    gen = torch.Generator().manual_seed(0)
    batch = BatchRecipe.of(plan, AugmentSpec(flip_prob=0, affine_prob=0, intensity_prob=0))(
        draw_patches(SliceTables([case]), 2, plan.prep.patch_size, gen), gen
    )
    assert batch["source"].dim() == 5 and batch["source"].shape[1] == plan.prep.in_channels
    torch.manual_seed(0)
    G, D = plan.build_generator(), plan.build_discriminator()
    step = Pix2PixStep(
        G, D, torch.optim.Adam(G.parameters(), 1e-3, betas=(0.5, 0.999)),
        torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999)) if D is not None else None, plan.losses, torch.device("cpu"), None,
    )  # fmt: skip
    history = [float(step(i, batch)["loss_G_L1"]) for i in range(40)]
    assert history[-1] < 0.5 * history[0], history


def test_a_3d_model_exports_to_onnx_and_predicts_the_same_volume(tiny_phantom: Path, tmp_path: Path) -> None:
    from medp2p.infer.onnx import OnnxGenerator, read_onnx_metadata

    sets = [x for s in ["data.val_cases=1", *SETS_3D, "model.norm=batch", "train.steps=2"] for x in ("--set", s)]
    _cli("train", "--task", "mri2ct", "--data", str(tiny_phantom), "--config", TINY, "--out", str(tmp_path / "run"), *sets)
    _cli("export", "--model", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx"))
    assert read_onnx_metadata(tmp_path / "m.onnx")["contract"]["patch_size"] == [8, 16, 16]
    from medp2p.infer.checkpoint import generator_from_checkpoint, load_checkpoint

    generator, _ = generator_from_checkpoint(load_checkpoint(tmp_path / "run"))
    x = torch.randn(3, 1, 8, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxGenerator(tmp_path / "m.onnx")(x).numpy(), generator.eval()(x).numpy(), atol=1e-4)
    for name, model, extra in (("torch", tmp_path / "run", ["--precision", "fp32"]), ("onnx", tmp_path / "m.onnx", [])):
        _cli("predict", "--model", str(model), "-i", str(tiny_phantom), "-o", str(tmp_path / name), *extra)
    for case in ("case_000", "case_001", "case_002"):
        a, b = (read_volume(tmp_path / n / case / "sct.nii.gz") for n in ("torch", "onnx"))
        np.testing.assert_allclose(b.array, a.array, atol=1e-3)  # HU
