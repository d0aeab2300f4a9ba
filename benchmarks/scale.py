"""Training at scale, measured on this machine in one run (docs/results.md, "Training at scale").

Phantom cases of 256x256x128 (6 generated, the rest hard links to them under other paths, so the
case store holds each as its own entry) train ``configs/mri2ct.yaml``'s preparation and
augmentation with a tiny network (batch 8, 256x256 crops). Parts:

- ``rss``: peak RSS of ``medp2p train`` on 6 and on N cases once the store is built (the ratio
  the issue bounds at 1.15x), the time a resumed run takes to reach its first step at N cases, and
  each rank's peak RSS under ``torchrun --nproc_per_node 2`` at N cases;
- ``pipeline``: the input pipeline alone (store -> sampled, augmented 2.5D batches, no model) in
  one thread, in slices/s per core, next to the shipped mri2ct model's consumption rate;
- ``wait``: the training loop's data-wait fraction with 2 workers and the tiny model;
- ``readers``: RSS after reading the same random slices from the store through ``np.load`` with
  ``mmap_mode="r"`` against the store's ``pread`` reader;
- ``augment``: the built-in augmentation against the same transform in MONAI (RandFlipd +
  RandAffined + RandScaleIntensityd + RandShiftIntensityd + RandAdjustContrastd), per batch of 8.

    python benchmarks/scale.py                      # every part, 60 cases
    python benchmarks/scale.py --only pipeline augment --cases 6

Prints one JSON line per part, then all of them in one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medp2p.config import load_config  # noqa: E402  (after the path)
from medp2p.data.phantom import PhantomSpec, write_phantom  # noqa: E402
from medp2p.plan import build_plan  # noqa: E402

SHAPE = (256, 256, 128)
SPEC = PhantomSpec(SHAPE, (1.0, 1.0, 1.5))
CONFIG = ROOT / "configs" / "mri2ct.yaml"
TINY = ["model.depth=4", "model.base_channels=8", "model.disc_channels=8", "model.disc_layers=2"]
RUN = ["train.batch_size=8", "train.val_every=100000", "train.log_every=1", "train.tensorboard=false", "train.preview_count=0"]
PARTS = ("rss", "pipeline", "wait", "readers", "augment")


def make_cases(work: Path, n: int, spec: PhantomSpec = SPEC) -> Path:
    """A datalist of ``n`` cases: 6 generated phantoms, the rest hard links to them under their own paths."""
    base = work / "base"
    if not (base / "case_005" / "mr.nii.gz").is_file():
        write_phantom(base, cases=6, seed=0, spec=spec, overwrite=True)
    cases = []
    for i in range(n):
        folder = work / "cases" / f"case_{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for key in ("mr", "ct", "mask"):
            link = folder / f"{key}.nii.gz"
            if not link.exists():
                os.link(base / f"case_{i % 6:03d}" / f"{key}.nii.gz", link)
        cases.append({"id": folder.name, **{k: str(folder / f"{k}.nii.gz") for k in ("mr", "ct", "mask")}})
    datalist = work / f"cases_{n}.json"
    datalist.write_text(json.dumps({"training": cases}, indent=1))
    return datalist


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def watch(
    cmd: list[str], until: Path | None = None, until_step: int = 0, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> dict[str, Any]:
    """Run ``cmd`` (in ``cwd``) and sample its process tree every 20 ms: each process's peak RSS and the tree's, and its output.

    ``until`` / ``until_step``: also record when ``until`` (a metrics.csv) first logs a step >= ``until_step``.
    """
    start = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks: dict[int, tuple[str, int]] = {}
    tree_peak, reached = 0, None
    while proc.poll() is None:
        total = 0
        for p in _tree(proc):
            try:
                rss, line = p.memory_info().rss, " ".join(p.cmdline()[:4])
            except psutil.Error:
                continue
            total += rss
            seen, top = peaks.get(p.pid, ("", 0))
            peaks[p.pid] = (seen or line, max(rss, top))  # an exiting process shows no command line
        tree_peak = max(tree_peak, total)
        if until is not None and reached is None and _last_step(until) >= until_step:
            reached = time.perf_counter() - start
        time.sleep(0.02)
    output = ""
    if proc.stdout:
        with proc.stdout:
            output = proc.stdout.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    wall = time.perf_counter() - start
    return {"peaks": peaks, "tree_peak": tree_peak, "reached_s": reached, "wall_s": wall, "pid": proc.pid, "output": output}


def _last_step(metrics: Path) -> int:
    try:
        rows = metrics.read_text().splitlines()
    except OSError:
        return -1
    steps = [int(r.split(",")[0]) for r in rows[1:] if r and r.split(",")[0].isdigit()]
    return max(steps, default=-1)


def train_cmd(
    datalist: Path, out: Path, cache: Path, steps: int, sets: list[str], resume: bool = False, stop: int | None = None
) -> list[str]:
    """``medp2p train`` on ``datalist`` with the tiny network, a schedule of ``steps`` (or ``--resume`` of ``out``)."""
    if resume:
        return [sys.executable, "-m", "medp2p.cli", "train", "--out", str(out), "--resume", "--steps", str(steps)]
    cmd = [sys.executable, "-m", "medp2p.cli", "train", "--task", "mri2ct", "--data", str(datalist), "--out", str(out)]
    cmd += ["--config", str(CONFIG), "--cache-dir", str(cache), "--overwrite", "--set", f"train.steps={steps}"]
    cmd += ["--steps", str(stop or steps)]
    for s in [*TINY, *RUN, *sets]:
        cmd += ["--set", s]
    return cmd


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def part_rss(work: Path, n: int) -> dict[str, Any]:
    """Peak RSS at 6 and ``n`` cases (store built), time to the first resumed step, torchrun ranks."""
    cache = work / "cache"
    few, many = make_cases(work, 6), make_cases(work, n)
    build = watch(train_cmd(many, work / "build", cache, 1, ["data.num_workers=2"]))  # builds the store
    sets = ["data.num_workers=0", "train.checkpoint_every=20"]
    r6 = watch(train_cmd(few, work / "r6", cache, 40, sets, stop=20))
    rn = watch(train_cmd(many, work / "rn", cache, 40, sets, stop=20))
    resumed = watch(train_cmd(many, work / "rn", cache, 25, [], resume=True), until=work / "rn" / "metrics.csv", until_step=21)
    out: dict[str, Any] = {
        "cases": n,
        "store_build_s": round(build["wall_s"], 1),
        "peak_rss_mb_6": _mb(r6["peaks"][r6["pid"]][1]),
        f"peak_rss_mb_{n}": _mb(rn["peaks"][rn["pid"]][1]),
        f"resume_to_first_step_s_{n}": round(resumed["reached_s"] or float("nan"), 2),
    }
    out["rss_ratio"] = round(out[f"peak_rss_mb_{n}"] / out["peak_rss_mb_6"], 3)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medp2p.cli"]
    ddp = watch([*torchrun, *train_cmd(many, work / "ddp", cache, 20, sets)[3:]], env={"OMP_NUM_THREADS": "1"})
    ranks = [rss for pid, (_, rss) in ddp["peaks"].items() if pid != ddp["pid"]]  # the agent's children: the ranks
    out["torchrun_rank_peak_rss_mb"] = [_mb(r) for r in sorted(ranks)]
    out["torchrun_rank_ratio_to_6"] = round(max(ranks) / r6["peaks"][r6["pid"]][1], 3) if ranks else None
    return out


def _stored(work: Path, n: int) -> tuple[Any, list[Any]]:
    """The plan of ``configs/mri2ct.yaml`` (tiny network) and ``n`` stored cases."""
    from medp2p.data.store import build_store

    plan = build_plan(load_config("mri2ct", str(CONFIG), TINY))
    cases = json.loads(make_cases(work, n).read_text())["training"]
    return plan, build_store(cases, plan.prep, plan.keys, work / "cache", workers=2)


def part_pipeline(work: Path) -> dict[str, Any]:
    """Store -> sampled, augmented 2.5D batches of 8 at 256x256 in one thread; the model's rate beside it."""
    from medp2p.data.sampling import SliceBatches
    from medp2p.train import build_trainer
    from medp2p.train.batches import BatchRecipe

    plan, stored = _stored(work, 6)
    torch.set_num_threads(1)
    batches = SliceBatches(stored, 8, (256, 256), plan.prep.context_slices, 0, 0, 1, BatchRecipe.of(plan))
    for i in range(3):
        batches[i]
    n, start = 60, time.perf_counter()
    for i in range(3, 3 + n):
        batch = batches[i]
    pipe = 8 * n / (time.perf_counter() - start)
    # on a GPU the workers only draw (slices, crops, corruption, the augmentation's random numbers)
    drawn = SliceBatches(stored, 8, (256, 256), plan.prep.context_slices, 0, 0, 1, BatchRecipe.of(plan, on_device=True))
    start = time.perf_counter()
    for i in range(3, 3 + n):
        drawn[i]
    draw_only = 8 * n / (time.perf_counter() - start)
    torch.set_num_threads(os.cpu_count() or 1)
    shipped = build_plan(load_config("mri2ct", str(CONFIG), RUN))
    trainer = build_trainer(shipped, torch.device("cpu"))
    trainer.train_mode()
    for _ in range(2):
        trainer.advance(batch)
    steps, start = 5, time.perf_counter()
    for _ in range(steps):
        float(trainer.advance(batch)["loss_G"])
    model = 8 * steps / (time.perf_counter() - start)
    return {
        "pipeline_slices_per_s_per_core": round(pipe, 1),
        "draw_only_slices_per_s_per_core": round(draw_only, 1),
        "model_slices_per_s": round(model, 2),
        "cores": os.cpu_count(),
        "pipeline_over_model": round(pipe / model, 1),
    }


def part_wait(work: Path) -> dict[str, Any]:
    """The training loop's data-wait fraction with 2 workers and the tiny network standing in for a fast GPU."""
    datalist = make_cases(work, 6)
    out = work / "wait"
    watch(train_cmd(datalist, out, work / "cache", 100, ["data.num_workers=2", "train.log_every=20", "train.checkpoint_every=1000"]))
    with (out / "metrics.csv").open() as f:
        waits = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "data_wait"]
    return {"data_wait_by_log": [round(w, 3) for w in waits], "data_wait_after_first": round(float(np.mean(waits[1:])), 3)}


_READER = """
import sys, numpy as np, psutil
sys.path.insert(0, {root!r})
from medp2p.data.store import _NpyReader
paths, mode = {paths!r}, {mode!r}
rng = np.random.default_rng(0)
arrays = [np.load(p, mmap_mode="r") if mode == "mmap" else _NpyReader(__import__("pathlib").Path(p)) for p in paths]
before = psutil.Process().memory_info().rss
for _ in range(400):
    a = arrays[rng.integers(len(arrays))]
    d = int(rng.integers(1, 126))
    rows = np.asarray(a[d - 1 : d + 2]) if mode == "mmap" else a.rows(d - 1, d + 2)
    rows.sum()
print(psutil.Process().memory_info().rss - before, psutil.Process().memory_info().rss)
"""


def part_readers(work: Path) -> dict[str, Any]:
    """RSS growth over 400 random 3-slice reads from 6 stored cases: ``np.load(mmap_mode="r")`` against ``pread``."""
    _, stored = _stored(work, 6)
    paths = [str(c.folder / "source.npy") for c in stored] + [str(c.folder / "target.npy") for c in stored]
    out: dict[str, Any] = {}
    for mode in ("mmap", "pread"):
        code = _READER.format(root=str(ROOT), paths=paths, mode=mode)
        grew, total = map(int, subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
        out[f"{mode}_rss_growth_mb"] = _mb(grew)
        out[f"{mode}_rss_mb"] = _mb(total)
    return out


def part_augment(work: Path) -> dict[str, Any]:
    """The built-in augmentation and its MONAI equivalent on one batch of 8 x 3 x 256 x 256 (ms per batch, one thread)."""
    import monai.transforms as mt

    from medp2p.data.augment import AugmentSpec, apply_augment, draw_augment

    torch.set_num_threads(1)
    spec = AugmentSpec(flip_prob=0.5, affine_prob=1.0, rotate_deg=10.0, scale=0.1, shift=0.05, intensity_prob=1.0)
    gen = torch.Generator().manual_seed(0)
    src, tgt = torch.rand(8, 3, 256, 256), torch.rand(8, 1, 256, 256)
    mask = (torch.rand(8, 1, 256, 256) > 0.5).float()

    def builtin() -> None:
        apply_augment({"source": src, "target": tgt}, {"mask": mask}, ("source",), spec, draw_augment(8, spec, gen))

    keys = ["source", "target", "mask"]
    monai = mt.Compose(
        [
            mt.RandFlipd(keys, prob=0.5, spatial_axis=1),
            mt.RandAffined(
                keys, prob=1.0, rotate_range=np.deg2rad(10.0), scale_range=0.1, translate_range=(12.8, 12.8),
                mode=("bilinear", "bilinear", "nearest"), padding_mode="zeros",
            ),
            mt.RandScaleIntensityd(["source"], factors=0.1, prob=1.0),
            mt.RandShiftIntensityd(["source"], offsets=0.1, prob=1.0),
            mt.RandAdjustContrastd(["source"], gamma=(0.82, 1.22), prob=1.0),
        ]
    )  # fmt: skip
    monai.set_random_state(0)

    def with_monai() -> None:
        for i in range(8):
            monai({"source": src[i], "target": tgt[i], "mask": mask[i]})

    out = {}
    for name, fn in (("builtin", builtin), ("monai", with_monai)):
        fn()
        start = time.perf_counter()
        for _ in range(10):
            fn()
        out[f"{name}_ms_per_batch"] = round((time.perf_counter() - start) / 10 * 1000, 1)
    out["monai_over_builtin"] = round(out["monai_ms_per_batch"] / out["builtin_ms_per_batch"], 2)
    return out


def main() -> None:
    """Run the chosen parts in a scratch folder (``--work`` keeps it) and print their figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {"machine": _machine()}
        for part in args.only:
            fig = part_rss(work, args.cases) if part == "rss" else globals()[f"part_{part}"](work)
            print(json.dumps({part: fig}), flush=True)
            results[part] = fig
        print(json.dumps(results, indent=2))


def _machine() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    name = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), "unknown CPU")
    return f"{name}, {os.cpu_count()} cores, {'AVX512_BF16' if 'avx512_bf16' in flags else 'no AVX512_BF16'}"


if __name__ == "__main__":
    main()
