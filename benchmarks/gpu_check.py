"""The GPU figures of training and prediction, in one prepared run that prints one JSON (docs/results.md).

On a machine with CUDA it runs, on phantom cases of 256x256x128 (6 generated, hard-linked to more):

1. a short single-GPU ``medp2p train`` of ``configs/mri2ct.yaml`` (batch 8, 256x256 crops,
   ``data.num_workers`` workers): images/s over the timed steps, GPU utilisation sampled every
   0.1 s with NVML (``torch.cuda.utilization``, else ``nvidia-smi``), the loop's data-wait fraction
   and the peak CUDA memory from the run's own metrics log;
2. a 2-rank ``torchrun`` smoke run (NCCL) when two or more GPUs are present: both ranks finish and
   hold the same weights (``RUN/ddp.json``);
3. ``medp2p predict`` of the trained model over ``--volumes`` volumes: volumes/s, slices/s and GPU utilisation.

Without CUDA it prints ``{"cuda": false, ...}`` and exits 0: CI never needs a GPU.

    python benchmarks/gpu_check.py                 # everything, 50 volumes for predict
    python benchmarks/gpu_check.py --steps 300 --volumes 20 --workers 8

On the tool library's H200 machine (no registry there: medp2p's own dependencies travel as wheels
fetched here first; the machine's image has torch, numpy, scipy, scikit-image, typer, rich, tqdm,
psutil, matplotlib, pyyaml, tensorboard):

    pip download --no-deps -d wheels monai==1.6.1 nibabel SimpleITK pydicom highdicom pydantic pydantic-core \\
        annotated-types typing-inspection pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pyjpegls isal
    # device run, carry ["wheels"]:
    python3 -m pip install --no-index --find-links wheels --no-deps wheels/*.whl && \\
        PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import CONFIG, SPEC, make_cases  # noqa: E402

from medp2p.data.phantom import PhantomSpec  # noqa: E402  (after the path)


class Utilisation:
    """GPU utilisation (%) sampled every ``every`` s in a thread: NVML through torch, else ``nvidia-smi``."""

    def __init__(self, device: int = 0, every: float = 0.1) -> None:
        self.device, self.every, self.samples = device, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.source = "torch.cuda.utilization"

    def _read(self) -> float | None:
        if self.source == "torch.cuda.utilization":
            try:
                return float(torch.cuda.utilization(self.device))
            except Exception:  # no pynvml / amdsmi: fall back to the command line
                self.source = "nvidia-smi"
        try:
            out = subprocess.run(
                ["nvidia-smi", f"--id={self.device}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            )  # fmt: skip
            return float(out.stdout.strip().splitlines()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            self.source = "none"
            return None

    def _run(self) -> None:
        while not self._stop.is_set() and self.source != "none":
            value = self._read()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.every)

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self, skip_first: float = 0.3) -> dict[str, Any]:
        """Mean and median over the samples after the first ``skip_first`` of them (start-up)."""
        kept = sorted(self.samples[int(len(self.samples) * skip_first) :])
        if not kept:
            return {"source": self.source, "samples": 0}
        mean = round(sum(kept) / len(kept), 1)
        return {"source": self.source, "samples": len(kept), "mean_pct": mean, "median_pct": kept[len(kept) // 2]}


def _metrics(run: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    with (run / "metrics.csv").open() as f:
        for r in csv.DictReader(f):
            series.setdefault(r["metric"], []).append((int(r["step"]), float(r["value"])))
    return series


def _run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


@dataclass(frozen=True)
class Check:
    """What the check runs on: ``device`` (``cuda``; ``cpu`` for the test), crop, phantom grid, extra config."""

    device: str = "cuda"
    crop: int = 256
    spec: PhantomSpec = SPEC
    sets: tuple[str, ...] = ()


def train_args(check: Check, datalist: Path, out: Path, cache: Path, steps: int, workers: int) -> list[str]:
    """``medp2p train`` arguments of the single-GPU and torchrun runs."""
    sets = [f"train.steps={steps}", "train.batch_size=8", f"data.image_size=[{check.crop}, {check.crop}]", f"data.num_workers={workers}"]
    sets += ["train.val_every=100000", f"train.checkpoint_every={steps}", "train.log_every=25", "train.preview_count=0"]
    args = ["train", "--task", "mri2ct", "--data", str(datalist), "--out", str(out), "--config", str(CONFIG), "--overwrite"]
    args += ["--cache-dir", str(cache), "--device", check.device]
    for s in [*sets, *check.sets]:
        args += ["--set", s]
    return args


def single_gpu(check: Check, work: Path, datalist: Path, steps: int, workers: int) -> dict[str, Any]:
    """Train on one GPU; images/s from the log's step times after the first quarter (compile, cudnn autotune)."""
    out = work / "train"
    _run([sys.executable, "-m", "medp2p.cli", *train_args(check, datalist, out, work / "cache", 2, workers)])  # builds the store
    with Utilisation() as util:
        wall = _run([sys.executable, "-m", "medp2p.cli", *train_args(check, datalist, out, work / "cache", steps, workers)])
    m = _metrics(out)
    step_s = [v for s, v in m.get("step_s", []) if s > steps // 4]
    waits = [v for s, v in m.get("data_wait", []) if s > steps // 4]
    peak = max((v for _, v in m.get("cuda_peak_gib", [])), default=None)
    return {
        "steps": steps,
        "wall_s": round(wall, 1),
        "images_per_s": round(8 / (sum(step_s) / len(step_s)), 1) if step_s else None,
        "data_wait": round(sum(waits) / len(waits), 3) if waits else None,
        "cuda_peak_gib": round(peak, 2) if peak is not None else None,
        "utilisation": util.summary(),
        "precision": json.loads((out / "run.json").read_text()).get("resolved", {}).get("precision"),
    }


def two_ranks(check: Check, work: Path, datalist: Path, workers: int, steps: int = 40) -> dict[str, Any]:
    """A 2-rank torchrun run on NCCL: it must finish with both replicas equal."""
    out = work / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medp2p.cli"]
    wall = _run([*cmd, *train_args(check, datalist, out, work / "cache", steps, workers)], env={"OMP_NUM_THREADS": "4"})
    ddp = json.loads((out / "ddp.json").read_text())
    return {"wall_s": round(wall, 1), "world_size": ddp["world_size"], "in_sync": ddp["in_sync"]}


def predict(check: Check, work: Path, volumes: int) -> dict[str, Any]:
    """``medp2p predict`` of the trained model over ``volumes`` volumes (256x256x128)."""
    datalist = make_cases(work / "data", volumes, check.spec)
    out = work / "pred"
    with Utilisation() as util:
        wall = _run([sys.executable, "-m", "medp2p.cli", "predict", "--model", str(work / "train"), "--input", str(datalist),
                     "--out", str(out), "--device", check.device, "--overwrite"])  # fmt: skip
    written = sorted(out.glob("*/sct.nii.gz"))
    if len(written) != volumes:
        raise RuntimeError(f"predict wrote {len(written)} of {volumes} volumes")
    slices = volumes * check.spec.shape[2]
    rates = {"volumes_per_s": round(volumes / wall, 2), "slices_per_s": round(slices / wall)}
    return {"volumes": volumes, "wall_s": round(wall, 1), **rates, "utilisation": util.summary()}


def run_checks(check: Check, steps: int, workers: int, volumes: int, ranks: bool, ddp_steps: int = 40) -> dict[str, Any]:
    """Each check in turn; a failing one is recorded as its error (one JSON whatever happens)."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        datalist = make_cases(work / "data", 24, check.spec)
        for name, run in (
            ("train_1gpu", lambda: single_gpu(check, work, datalist, steps, workers)),
            ("torchrun_2gpu", lambda: two_ranks(check, work, datalist, workers, ddp_steps) if ranks else "skipped: fewer than 2 GPUs"),
            ("predict", lambda: predict(check, work, volumes)),
        ):
            try:
                result[name] = run()
            except Exception as exc:  # the failure is a figure too
                result[name] = {"error": str(exc)[-3000:]}
            print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the checks this machine allows and print (and with ``--out``, write) one JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--volumes", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="also write gpu_check.json here")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"cuda": torch.cuda.is_available(), "torch": torch.__version__}
    if result["cuda"]:
        result["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        result.update(run_checks(Check(), args.steps, args.workers, args.volumes, torch.cuda.device_count() >= 2))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
