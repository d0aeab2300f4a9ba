"""Training: every task runs on the tiny phantom, learns a fixed batch, resumes bit-exactly, survives SIGKILL, stops on NaN."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.config import load_config
from medp2p.data.augment import AugmentSpec
from medp2p.data.case_reader import read_case
from medp2p.data.prepare import prepare_case
from medp2p.data.sampling import SliceBatcher
from medp2p.plan import build_plan
from medp2p.train import NonFiniteLossError, Pix2PixStep, fit_schedule, make_optimizer, train, training_batch
from medp2p.types import REGION, SOURCE, TARGET
from tests.conftest import torchrun

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
runner = CliRunner()
TASK_SETS = {"mri2ct": [], "seg": [], "inpaint": []}


def _cli(*args: str):
    return runner.invoke(app, ["train", *args])


@pytest.mark.parametrize("task", sorted(TASK_SETS))
def test_cli_trains_each_task_in_seconds(tiny_phantom: Path, tmp_path: Path, task: str) -> None:
    out = tmp_path / "run"
    result = _cli(
        "--task", task, "--data", str(tiny_phantom), "--out", str(out), "--config", TINY, "--set", "data.val_cases=1", "--steps", "6"
    )
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "versions.json", "run.json", "last.pt", "best.pt", "metrics.csv"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["config"]["task"] == task
    assert list((out / "previews").glob("*.png"))
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["phase"] for r in rows} == {"train", "val"}
    best_metric = {"mri2ct": "mae", "seg": "dice", "inpaint": "ssim"}[task]
    assert any(r["metric"] == best_metric and r["phase"] == "val" for r in rows)


def test_tensorboard_events_are_written(tiny_phantom: Path, tmp_path: Path) -> None:
    cfg = load_config("mri2ct", TINY, ["train.tensorboard=true", "data.val_cases=1"])
    train(cfg, tiny_phantom, tmp_path / "run", stop_step=2, progress=False)
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "val/mae" in events.Tags()["scalars"]
    previews = sorted((tmp_path / "run" / "previews").glob("step*_*.png"))
    (tag,) = [t for t in events.Tags()["images"] if t.startswith("val_preview/")]  # preview_count 1: one case
    image = events.Images(tag)[-1]
    assert tag == "val_preview/" + previews[-1].stem.split("_", 1)[1] and image.step == 2
    from PIL import Image

    with Image.open(previews[-1]) as png:
        assert (image.width, image.height) == png.size  # the preview PNG itself, fixed windows and all


def test_existing_run_is_refused_without_resume_or_overwrite(tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ("--task", "seg", "--data", str(tiny_phantom), "--out", str(out), "--config", TINY, "--steps", "2")
    assert _cli(*args).exit_code == 0
    before = (out / "last.pt").read_bytes()
    result = _cli(*args)
    assert result.exit_code == 2 and "--resume" in result.output
    assert (out / "last.pt").read_bytes() == before
    (out / "notes.txt").write_text("mine")
    assert _cli(*args, "--overwrite").exit_code == 0
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes run files only
    assert _cli("--out", str(tmp_path / "none"), "--resume").exit_code == 2
    assert _cli("--task", "seg", "--out", str(out), "--resume", "--set", "train.lr=1").exit_code == 2


@pytest.mark.parametrize("task", sorted(TASK_SETS))
def test_loss_goes_down_on_a_fixed_batch(tiny_phantom: Path, task: str) -> None:
    cfg = load_config(task, TINY, ["train.precision=fp32", "model.dropout=0"])
    plan = build_plan(cfg)
    prep = plan.prep
    case = prepare_case(
        read_case({"id": "c", **{k: str(tiny_phantom / "case_000" / f"{k}.nii.gz") for k in ("mr", "ct", "mask", "tumor")}}, plan.keys),
        prep,
    )
    gen = torch.Generator().manual_seed(0)
    batcher = SliceBatcher([case], 4, tuple(cfg.data.image_size), cfg.data.context_slices, gen)
    no_aug = AugmentSpec(flip_prob=0, affine_prob=0, intensity_prob=0)
    batch = training_batch(batcher, no_aug, plan, gen)
    torch.manual_seed(0)
    G, D = plan.build_generator(), plan.build_discriminator()
    spec = plan.losses
    step = Pix2PixStep(
        G,
        D if spec.gan else None,
        torch.optim.Adam(G.parameters(), 1e-3, betas=(0.5, 0.999)),
        torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999)) if D is not None else None,
        spec,
        torch.device("cpu"),
        None,
    )
    key = {"mri2ct": "loss_G_L1", "inpaint": "loss_G_L1", "seg": "loss_G_BCE"}[task]
    history = [step(i, batch)[key] for i in range(40)]
    assert history[-1] < 0.5 * history[0], history


@pytest.mark.parametrize("task", ["inpaint", "mri2ct"])
def test_intensity_jitter_reaches_the_target_only_where_it_is_the_source(tiny_phantom: Path, task: str) -> None:
    # Inpainting learns to restore the source image: a target left un-jittered would ask the
    # model to undo a random gain/offset/gamma it cannot see. A CT target never gets MR jitter.
    cfg = load_config(task, TINY, ["data.context_slices=1"])
    plan = build_plan(cfg)
    prep = plan.prep
    case = prepare_case(
        read_case({"id": "c", **{k: str(tiny_phantom / "case_000" / f"{k}.nii.gz") for k in ("mr", "ct", "mask")}}, plan.keys),
        prep,
    )
    jitter_only = AugmentSpec(flip_prob=0, affine_prob=0, intensity_prob=1.0, gamma=0.3)
    batches = {}
    for name, spec in (("jitter", jitter_only), ("none", AugmentSpec(flip_prob=0, affine_prob=0, intensity_prob=0))):
        gen = torch.Generator().manual_seed(4)
        batcher = SliceBatcher([case], 4, tuple(cfg.data.image_size), cfg.data.context_slices, gen)
        batches[name] = training_batch(batcher, spec, plan, gen)
    jittered, plain = batches["jitter"], batches["none"]
    assert not torch.allclose(jittered[SOURCE][:, :3], plain[SOURCE][:, :3])  # the source was jittered
    if task == "inpaint":
        centre, kept = jittered[SOURCE][:, 1:2], jittered[REGION] == 0
        assert torch.equal(jittered[TARGET][kept], centre[kept])  # target = source outside the box
        assert not torch.allclose(jittered[TARGET], plain[TARGET])
    else:
        assert torch.equal(jittered[TARGET], plain[TARGET])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "last.pt", weights_only=True)
    out = {f"G.{k}": v for k, v in ckpt["generator"].items()}
    if ckpt["discriminator"] is not None:
        out.update({f"D.{k}": v for k, v in ckpt["discriminator"].items()})
    out.update({f"optG.{k}": v["exp_avg"] for k, v in ckpt["opt_g"]["state"].items()})
    return out


@pytest.mark.parametrize(
    "task, extra",
    [
        ("mri2ct", ["data.context_slices=1"]),
        # dropout (U-Net depth 6 has a full-width inner level), corruption and augmentation all draw randomness
        ("inpaint", ["model.depth=6", "data.context_slices=1", "inpaint.kinds=[box, slices, stripes]"]),
    ],
)
def test_resume_is_bit_identical(tiny_phantom: Path, tmp_path: Path, task: str, extra: list[str]) -> None:
    sets = [x for e in ["data.val_cases=1", *extra] for x in ("--set", e)]
    common = ("--task", task, "--data", str(tiny_phantom), "--config", TINY, *sets)
    assert _cli(*common, "--out", str(tmp_path / "a"), "--steps", "4").exit_code == 0
    assert _cli(*common, "--out", str(tmp_path / "b"), "--steps", "2").exit_code == 0
    result = _cli("--out", str(tmp_path / "b"), "--resume", "--steps", "4")
    assert result.exit_code == 0, result.output
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ca, cb = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in "ab")
    assert ca["step"] == cb["step"] == 4
    assert ca["sched_g"] == cb["sched_g"]
    assert torch.equal(ca["rng"]["data"][0], cb["rng"]["data"][0]) and torch.equal(ca["rng"]["torch"][0], cb["rng"]["torch"][0])


def test_fit_schedule_keeps_the_budget() -> None:
    # 100 s budget, 10 s gone at step 10, 0.5 s per step: 0.97 * 100 - 10 = 87 s -> 174 more steps
    assert fit_schedule(100.0, 10.0, 10, 0.5, 10_000) == 184
    assert fit_schedule(100.0, 10.0, 10, 0.5, 50) == 50  # never beyond train.steps
    assert fit_schedule(100.0, 200.0, 10, 0.5, 10_000) == 11  # over budget already: end at the next step


def test_minutes_fit_the_schedule_and_the_lr_decays_to_zero(tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    sets = ["train.steps=100000", "train.minutes=0.15", "train.val_every=100000", "train.checkpoint_every=5", "train.log_every=1"]
    start = time.perf_counter()
    result = _cli(
        "--task", "mri2ct", "--data", str(tiny_phantom), "--out", str(out), "--config", TINY, *[x for e in sets for x in ("--set", e)]
    )
    wall = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    ckpt = torch.load(out / "last.pt", weights_only=True)
    fitted = ckpt["schedule"]["steps"]
    assert ckpt["schedule"]["fitted"] == 1 and 10 < fitted < 100000 and ckpt["step"] == fitted
    assert wall < 0.15 * 60 + 10  # the budget (9 s) plus the CLI's own start-up and the last checkpoint
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    lr = [float(r["value"]) for r in rows if r["metric"] == "lr"]
    assert lr[0] > 0 and lr[-1] == 0.0  # the whole schedule ran, decay included
    assert [int(float(r["value"])) for r in rows if r["metric"] == "schedule_steps"][-1] == fitted  # first fit, then refits
    # resuming a fitted run keeps its schedule (no second fit)
    back = _cli("--out", str(out), "--resume", "--steps", str(fitted + 5))
    assert back.exit_code == 0, back.output
    assert torch.load(out / "last.pt", weights_only=True)["step"] == fitted


def test_killed_run_resumes_from_its_last_checkpoint(tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "medp2p.cli",
        "train",
        "--task",
        "mri2ct",
        "--data",
        str(tiny_phantom),
        "--out",
        str(out),
        "--config",
        TINY,
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.steps=100000",
        "--set",
        "train.val_every=100000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if (out / "last.pt").exists():
                try:
                    if torch.load(out / "last.pt", weights_only=True)["step"] >= 3:
                        break
                except Exception:
                    pass  # being replaced right now: atomic rename means old or new, try again
            time.sleep(0.05)
        else:
            pytest.fail("training never wrote a checkpoint")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = torch.load(out / "last.pt", weights_only=True)["step"]
    result = _cli("--out", str(out), "--resume", "--steps", str(killed_at + 2))
    assert result.exit_code == 0, result.output
    assert torch.load(out / "last.pt", weights_only=True)["step"] == killed_at + 2
    assert not [p for p in out.iterdir() if ".tmp" in p.name], "no stale temporary files after resume"
    with (out / "metrics.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r["metric"] == "loss_G"]
    assert steps == sorted(set(steps)) and steps[-1] == killed_at + 2  # no rows from the killed run's future


def test_nan_stops_the_run_and_keeps_the_last_checkpoint(tiny_phantom: Path, tmp_path: Path, monkeypatch) -> None:
    from medp2p.data.sampling import SliceBatches

    real_get = SliceBatches.__getitem__

    def poisoned(self, step):
        batch = real_get(self, step)
        if step == 3:  # the 4th batch
            batch["source"][0, 0, 3, 3] = float("nan")
        return batch

    monkeypatch.setattr(SliceBatches, "__getitem__", poisoned)
    cfg = load_config("mri2ct", TINY, ["train.checkpoint_every=1"])
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 3: non-finite loss \(.*nan"):
        train(cfg, tiny_phantom, out, progress=False)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["generator"].values() if v.is_floating_point())


def test_nan_input_exits_one_with_a_message(tiny_phantom: Path, tmp_path: Path) -> None:
    import shutil

    import nibabel as nib
    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(tiny_phantom, data)
    img = nib.load(data / "case_000/mr.nii.gz")
    arr = img.get_fdata().astype(np.float32)
    arr[:, :, :] = np.nan
    arr[8:20, 8:20, :] = 5.0
    arr[10:12, 10:12, :] = 7.0
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), data / "case_000/mr.nii.gz")
    (data / "case_001").rename(tmp_path / "c1")
    (data / "case_002").rename(tmp_path / "c2")
    result = _cli("--task", "mri2ct", "--data", str(data), "--out", str(tmp_path / "run"), "--config", TINY, "--steps", "3")
    assert result.exit_code == 1
    # refused where it is read, before any step: the file and the count, on one line
    line = next(line for line in result.output.splitlines() if "error:" in line)
    assert "case_000/mr.nii.gz" in line and f"{arr.size - 12 * 12 * arr.shape[2]} NaN/Inf voxel(s)" in line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_non_finite_loss_stops_the_run_with_a_message(tiny_phantom: Path, tmp_path: Path) -> None:
    result = _cli(
        "--task",
        "mri2ct",
        "--data",
        str(tiny_phantom),
        "--out",
        str(tmp_path / "run"),
        "--config",
        TINY,
        "--steps",
        "6",
        "--set",
        "train.lr=1e30",
        "--set",
        "loss.gan=0",
        "--set",
        "train.checkpoint_every=100",
    )
    assert result.exit_code == 1
    assert "non-finite loss" in result.output


def test_resume_removes_a_temporary_file_left_by_a_kill(tiny_phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _cli("--task", "seg", "--data", str(tiny_phantom), "--out", str(out), "--config", TINY, "--steps", "2").exit_code == 0
    (out / ".last.pt.abc123.tmp.pt").write_bytes(b"half a checkpoint")
    assert _cli("--out", str(out), "--resume", "--steps", "3").exit_code == 0
    assert not list(out.glob(".*tmp*"))


def test_torchrun_two_processes_keep_identical_weights_and_resume(tiny_phantom: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "run"
    # batch norm: its running statistics differ between ranks, the weights must not
    common = (
        "--task",
        "mri2ct",
        "--data",
        str(tiny_phantom),
        "--config",
        TINY,
        "--set",
        "data.val_cases=1",
        "--set",
        "model.depth=6",
        "--set",
        "model.norm=batch",
    )
    proc = torchrun(*common, "--out", str(out), "--steps", "3", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "ddp.json").read_text())
    assert info["world_size"] == 2 and info["in_sync"] is True
    assert info["digests"][0] == info["digests"][1]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2 and len(ckpt["rng"]["data"]) == 2
    assert not torch.equal(ckpt["rng"]["data"][0], ckpt["rng"]["data"][1])  # each rank its own slice stream
    with (out / "metrics.csv").open() as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r["metric"] == "loss_G"]
    assert steps == [1, 2, 3]  # rank 0 alone logs
    proc = torchrun("--out", str(out), "--resume", "--steps", "5", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 5
    assert json.loads((out / "ddp.json").read_text())["in_sync"] is True


def test_a_case_missing_an_image_is_named_not_hidden_behind_monai(tiny_phantom: Path, tmp_path: Path) -> None:
    import json

    case = {"id": "lonely", "mr": str(tiny_phantom / "case_000/mr.nii.gz")}
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [case]}))
    result = _cli("--task", "seg", "--data", str(datalist), "--out", str(tmp_path / "run"), "--config", TINY, "--steps", "1")
    assert result.exit_code == 1
    assert "lonely" in result.output and "tumor" in result.output and "applying transform" not in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_small_crops_are_centred_on_the_body() -> None:
    from medp2p.data.prepare import PreparedCase

    d, h, w = 6, 64, 64
    body = torch.zeros(1, d, h, w)
    body[:, :, 50:60, 2:12] = 1  # a small body in a corner
    body[:, 0] = 0  # one slice without body
    case = PreparedCase("c", torch.randn(1, d, h, w), torch.randn(1, d, h, w), None, body, torch.ones(d), None, None)
    batcher = SliceBatcher([case], 64, (16, 16), 0, torch.Generator().manual_seed(0))
    batch = batcher.next()
    assert batch["source"].shape == (64, 1, 16, 16)
    has_body = batch["body"].flatten(1).amax(1) > 0
    # every crop of a slice with body shows body (only slice 0 has none)
    picks = torch.multinomial(torch.ones(d, dtype=torch.double), 64, replacement=True, generator=torch.Generator().manual_seed(0))
    assert has_body[picks > 0].all() and not has_body[picks == 0].any()


def test_fused_adam_makes_the_reference_update() -> None:
    cfg = load_config("mri2ct", TINY)
    torch.manual_seed(0)
    a = build_plan(cfg).build_generator()
    b = build_plan(cfg).build_generator()
    b.load_state_dict(a.state_dict())
    fused = make_optimizer(a, cfg.train)
    plain = torch.optim.Adam(b.parameters(), lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2), foreach=False)
    assert fused.defaults["fused"]
    x = torch.rand(2, build_plan(cfg).prep.in_channels, 32, 32)
    for _ in range(3):
        for net, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            net(x).abs().mean().backward()
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
