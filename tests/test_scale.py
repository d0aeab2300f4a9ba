"""Training at scale, on the CPU: the case store, the input pipeline, exact resume with workers, fewer
reads from the device, and the CUDA / torchrun logic with ``torch.cuda`` mocked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.config import load_config
from medp2p.data.sampling import SliceBatches, StepSampler
from medp2p.data.store import build_store, prep_fingerprint
from medp2p.io import read_volume, write_nifti
from medp2p.plan import build_plan
from medp2p.train.batches import BatchRecipe
from tests.conftest import ROOT, torchrun

runner = CliRunner()
TINY = str(ROOT / "configs" / "tiny.yaml")


def _cases(tiny_phantom: Path) -> list[dict]:
    return [
        {"id": c, **{k: str(tiny_phantom / c / f"{k}.nii.gz") for k in ("mr", "ct", "mask")}} for c in ("case_000", "case_001", "case_002")
    ]


# --- the case store ---------------------------------------------------------------------------------------


def test_the_store_is_built_once_and_rebuilds_only_what_changed(
    tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medp2p.data.store as store

    data = tmp_path / "data"
    shutil.copytree(tiny_phantom, data)
    plan = build_plan(load_config("mri2ct", TINY))
    built: list[str] = []
    real = store._build_one
    monkeypatch.setattr(store, "_build_one", lambda job: built.append(job.case["id"]) or real(job))
    first = build_store(_cases(data), plan.prep, plan.keys, tmp_path / "cache")
    assert sorted(built) == ["case_000", "case_001", "case_002"]
    folder = first[0].folder
    assert folder.parent.name == prep_fingerprint(plan.prep, plan.keys)
    assert np.load(folder / "body.npy").dtype == np.uint8 and np.load(folder / "mask.npy").dtype == np.uint8
    assert np.load(folder / "source.npy").shape[1] == 1  # slice-major (D, S, H, W)
    built.clear()
    again = build_store(_cases(data), plan.prep, plan.keys, tmp_path / "cache")
    assert built == [] and [c.folder for c in again] == [c.folder for c in first]
    mr = read_volume(data / "case_001" / "mr.nii.gz")
    write_nifti(mr.with_array(mr.array * 1.1), data / "case_001" / "mr.nii.gz")
    build_store(_cases(data), plan.prep, plan.keys, tmp_path / "cache")
    assert built == ["case_001"]
    other = build_plan(load_config("mri2ct", TINY, ["data.mr_percentiles=[1, 99]"]))
    assert prep_fingerprint(other.prep, other.keys) != prep_fingerprint(plan.prep, plan.keys)
    assert (tmp_path / "cache" / prep_fingerprint(plan.prep, plan.keys) / "manifest.json").is_file()


def test_a_parallel_build_and_a_concurrent_second_build_give_the_same_store(tiny_phantom: Path, tmp_path: Path) -> None:
    plan = build_plan(load_config("mri2ct", TINY))
    serial = build_store(_cases(tiny_phantom), plan.prep, plan.keys, tmp_path / "a")
    parallel = build_store(_cases(tiny_phantom), plan.prep, plan.keys, tmp_path / "b", workers=2)
    for x, y in zip(serial, parallel, strict=True):
        for name in ("source", "target", "body", "mask", "weights", "extent"):
            np.testing.assert_array_equal(np.load(x.folder / f"{name}.npy"), np.load(y.folder / f"{name}.npy"))
    # two processes building one store at once: both finish, one copy of each case remains
    code = (
        "import sys, json; from medp2p.config import load_config; from medp2p.plan import build_plan;"
        "from medp2p.data.store import build_store;"
        f"p = build_plan(load_config('mri2ct', {TINY!r})); cases = json.loads(sys.argv[1]);"
        "print(len(build_store(cases, p.prep, p.keys, sys.argv[2])))"
    )
    args = [sys.executable, "-c", code, json.dumps(_cases(tiny_phantom)), str(tmp_path / "c")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == ["3", "3"]
    store = tmp_path / "c" / prep_fingerprint(plan.prep, plan.keys)
    assert len([d for d in store.iterdir() if d.is_dir() and not d.name.startswith(".")]) == 3
    assert not [d for d in store.iterdir() if d.name.startswith(".") and d.is_dir()]


# --- the input pipeline -------------------------------------------------------------------------------------


def _loader_batches(tiny_phantom: Path, tmp_path: Path, workers: int, steps: range, cfg_sets: list[str]) -> list[dict]:
    plan = build_plan(load_config("inpaint", TINY, cfg_sets))
    stored = build_store(_cases(tiny_phantom), plan.prep, plan.keys, tmp_path / "cache")
    recipe = BatchRecipe.of(plan)
    batches = SliceBatches(stored, 4, (32, 32), plan.prep.context_slices, seed=5, transform=recipe)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=StepSampler(steps.start), num_workers=workers)
    out = []
    for step, batch in zip(steps, loader, strict=False):
        out.append(batch)
        if step == steps.stop - 1:
            break
    return out


def test_batches_do_not_depend_on_workers_or_where_the_stream_starts(tiny_phantom: Path, tmp_path: Path) -> None:
    sets = ["data.context_slices=1", "augment.monai=[{name: RandGaussianNoised, keys: [source], prob: 0.5, std: 0.1}]"]
    inline = _loader_batches(tiny_phantom, tmp_path, 0, range(0, 4), sets)
    workers = _loader_batches(tiny_phantom, tmp_path, 2, range(0, 4), sets)
    resumed = _loader_batches(tiny_phantom, tmp_path, 2, range(2, 4), sets)
    for a, b in zip(inline, workers, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for a, b in zip(inline[2:], resumed, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(inline[0]["source"], inline[1]["source"])
    assert inline[0]["source"].shape == (4, 6, 32, 32)  # 3 context slices voided + 3 of region


def test_ranks_draw_disjoint_streams(tiny_phantom: Path, tmp_path: Path) -> None:
    plan = build_plan(load_config("mri2ct", TINY))
    stored = build_store(_cases(tiny_phantom), plan.prep, plan.keys, tmp_path / "cache")
    r0 = SliceBatches(stored, 4, (32, 32), 0, seed=1, rank=0, world=2)
    r1 = SliceBatches(stored, 4, (32, 32), 0, seed=1, rank=1, world=2)
    single = SliceBatches(stored, 4, (32, 32), 0, seed=1)
    assert not torch.equal(r0[0]["source"], r1[0]["source"])
    assert torch.equal(r0[1]["source"], single[2]["source"]) and torch.equal(r1[1]["source"], single[3]["source"])  # global batch s*W + r


def test_unknown_monai_transforms_fail_at_config_load() -> None:
    from medp2p.config import ConfigError

    with pytest.raises(ConfigError, match="RandNope.*choose from.*RandGaussianNoised"):
        load_config("mri2ct", None, ["augment.monai=[{name: RandNope, keys: [source]}]"])
    with pytest.raises(ConfigError, match="unexpected keyword argument 'sigma'"):
        load_config("mri2ct", None, ["augment.monai=[{name: RandGaussianNoised, keys: [source], sigma: 1}]"])


def test_resume_is_bit_identical_with_workers_and_monai_transforms(tiny_phantom: Path, tmp_path: Path) -> None:
    sets = ["data.val_cases=1", "data.num_workers=2", "augment.monai=[{name: RandGaussianNoised, keys: [source], prob: 0.5, std: 0.05}]"]
    common = ["train", "--task", "mri2ct", "--data", str(tiny_phantom), "--config", TINY, *[x for s in sets for x in ("--set", s)]]
    assert runner.invoke(app, [*common, "--out", str(tmp_path / "a"), "--steps", "4"]).exit_code == 0
    assert runner.invoke(app, [*common, "--out", str(tmp_path / "b"), "--steps", "2"]).exit_code == 0
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "b"), "--resume", "--steps", "4"])
    assert result.exit_code == 0, result.output
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in "ab")
    for key in a["generator"]:
        assert torch.equal(a["generator"][key], b["generator"][key]), key
    assert a["sampler"] == b["sampler"] == {"seed": 0, "world": 1, "next_step": 4}
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert Path(info["cache_dir"]) == (tmp_path / "cache").resolve()


# --- fewer reads from the device -------------------------------------------------------------------------------


def test_a_step_reads_one_value_back_from_the_device(tiny_phantom: Path) -> None:
    from medp2p.data.augment import AugmentSpec
    from medp2p.data.sampling import SliceBatcher
    from medp2p.train import build_trainer, training_batch

    plan = build_plan(load_config("mri2ct", TINY, ["train.precision=fp32"]))
    stored = build_store(_cases(tiny_phantom), plan.prep, plan.keys, Path(tiny_phantom).parent / "cache_reads")
    trainer = build_trainer(plan, torch.device("cpu"))
    batch = training_batch(SliceBatcher(stored, 2, (32, 32), 0, torch.Generator().manual_seed(0)), AugmentSpec(), plan, torch.Generator())
    reads = {"n": 0}
    real = {name: getattr(torch.Tensor, name) for name in ("__bool__", "__float__", "item", "tolist", "__int__")}

    def counting(name: str):
        def read(self, *a, **k):
            reads["n"] += 1
            return real[name](self, *a, **k)

        return read

    trainer.advance(batch)  # warm-up
    with mock.patch.multiple(torch.Tensor, **{n: counting(n) for n in real}):
        losses = trainer.advance(batch)
    assert reads["n"] == 1, reads  # the non-finite flag; the losses stay on the device
    assert all(isinstance(v, torch.Tensor) for v in losses.values()) and "loss_D" in losses


# --- CUDA and torchrun logic, with torch.cuda mocked -----------------------------------------------------------------


def test_device_names_are_parsed_and_checked() -> None:
    from medp2p.device import resolve_device

    with mock.patch("torch.cuda.is_available", return_value=True), mock.patch("torch.cuda.device_count", return_value=2):
        assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("auto").type == "cuda"
        with pytest.raises(ValueError, match="2 CUDA device.*cuda:0 to cuda:1"):
            resolve_device("cuda:2")
    with mock.patch("torch.cuda.is_available", return_value=False):
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda:0")
        assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize(
    "capability, native, expected", [((7, 0), False, torch.float16), ((8, 0), True, torch.bfloat16), ((9, 0), True, torch.bfloat16)]
)
def test_auto_precision_uses_bf16_only_where_native(capability: tuple[int, int], native: bool, expected: torch.dtype) -> None:
    from medp2p.device import resolve_precision

    def supported(including_emulation: bool = True) -> bool:
        return True if including_emulation else native  # a V100 "supports" bf16 only by emulation

    with (
        mock.patch("torch.cuda.is_bf16_supported", side_effect=supported),
        mock.patch("torch.cuda.get_device_capability", return_value=capability),
    ):
        assert resolve_precision(torch.device("cuda", 0), "auto") is expected
        assert resolve_precision(torch.device("cuda", 0), "fp32") is None and resolve_precision(torch.device("cuda", 0), "tf32") is None


@pytest.mark.parametrize("precision, tf32", [("fp32", False), ("tf32", True), ("bf16", True)])
def test_tf32_follows_the_precision_asked_for(precision: str, tf32: bool) -> None:
    from medp2p.device.precision import configure_backends

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        settings = configure_backends(torch.device("cuda", 0), precision)
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
        assert torch.backends.cudnn.benchmark and settings["tf32"] is tf32
        configure_backends(torch.device("cuda", 0), precision, fixed_shapes=False)
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before


def test_a_cuda_rank_binds_its_gpu_before_joining_a_group_that_carries_cpu_tensors() -> None:
    from medp2p.device import distributed

    calls: list[str] = []
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    with (
        mock.patch.dict(os.environ, env),
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.set_device", side_effect=lambda i: calls.append(f"set_device({i})")),
        mock.patch.object(distributed.dist, "is_initialized", return_value=False),
        mock.patch.object(
            distributed.dist,
            "init_process_group",
            side_effect=lambda backend, **kw: calls.append(f"init({backend}, {kw['device_id']}, {kw['timeout']})"),
        ),
        mock.patch.object(distributed.dist, "get_rank", return_value=1),
        mock.patch.object(distributed.dist, "get_world_size", return_value=2),
    ):
        ddp = distributed.init_distributed("auto", timeout_min=45)
    assert calls == ["set_device(1)", "init(cpu:gloo,cuda:nccl, cuda:1, 0:45:00)"]
    assert ddp.device == "cuda:1" and ddp.rank == 1 and ddp.world == 2


def test_cpu_only_tricks_are_not_entered_on_cuda(tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medp2p.train import loop

    entered: list[str] = []
    monkeypatch.setattr(loop, "reuse_freed_memory", lambda: entered.append("reuse") or __import__("contextlib").nullcontext())

    class FakeTrainer:
        device = torch.device("cuda", 0)

    # the choice fit() makes, for each device type
    for device, expect in ((torch.device("cuda", 0), []), (torch.device("cpu"), ["reuse"])):
        entered.clear()
        FakeTrainer.device = device
        loop.cpu_only_tricks(FakeTrainer())  # type: ignore[arg-type]
        assert entered == expect, device


_STAND_IN = """
import os, sys
import torch.distributed as dist
from medp2p.device import distributed

# NCCL cannot reduce CPU tensors; this stand-in refuses them unless the group's backend string maps
# the CPU, as NCCL-only groups do not ("No backend type associated with device type cpu").
real_init = dist.init_process_group
def init(backend, **kw):
    init.backend = backend
    kw.pop("device_id", None)
    return real_init("gloo", **kw)  # the real transport on this CPU-only machine
dist.init_process_group = init
distributed.process_group_backend = lambda cuda: "cpu:gloo,cuda:nccl"  # what a CUDA run asks for
def refusing(fn):
    def call(tensor, *a, **k):
        if getattr(tensor, "device", None) is not None and tensor.device.type == "cpu" and "cpu:" not in init.backend:
            raise RuntimeError("No backend type associated with device type cpu")
        return fn(tensor, *a, **k)
    return call
dist.all_reduce = refusing(dist.all_reduce)
dist.broadcast = refusing(dist.broadcast)
from medp2p.cli import main
sys.argv = ["medp2p"] + sys.argv[1:]
main()
"""


def test_two_ranks_initialised_as_a_cuda_run_train_and_validate(tiny_phantom: Path, tmp_path: Path) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(_STAND_IN)
    args = ["--task", "mri2ct", "--data", str(tiny_phantom), "--config", TINY, "--set", "data.val_cases=1", "--steps", "3"]
    proc = torchrun(*args, "--out", str(tmp_path / "run"), cwd=ROOT, entry=script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "run" / "ddp.json").read_text())
    assert info["in_sync"] is True and info["world_size"] == 2
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        assert any(",val,mae," in line for line in fh)  # validation ran (spread over the ranks)
    # the group the old code made (NCCL only) refuses the CPU flag the NaN guard all-reduces
    old = _STAND_IN.replace('lambda cuda: "cpu:gloo,cuda:nccl"', 'lambda cuda: "nccl"')
    script.write_text(old)
    proc = torchrun(*args, "--out", str(tmp_path / "run_old"), cwd=ROOT, entry=script)
    assert proc.returncode != 0 and "No backend type associated with device type cpu" in proc.stdout + proc.stderr
