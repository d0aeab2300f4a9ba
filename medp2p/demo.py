"""``medp2p demo``: the whole mission on the built-in phantom, in minutes on a laptop CPU.

Phantom (train and validation cases) -> mri2ct training fitted to the time budget (``train.minutes``) -> prediction of
the validation cases to NIfTI and DICOM -> evaluation -> the same evaluation of a lookup baseline
(MR intensity -> median HU) beside the model, so one sees what a lookup cannot learn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medp2p.config import load_config
from medp2p.data import PhantomSpec, find_cases, write_phantom
from medp2p.eval import IntensityLookup, evaluate
from medp2p.infer import predict_cases
from medp2p.io import read_volume, write_nifti
from medp2p.io.atomic import remove_outputs
from medp2p.train import train

#: The demo's model and schedule: a 7-level U-Net (128x128 slices), 2.5D, batch 8.
DEMO_OVERRIDES = [
    "data.context_slices=1",
    "data.image_size=[128, 128]",
    "data.empty_slice_weight=0.02",
    "model.depth=7",
    "model.base_channels=32",
    "model.disc_channels=32",
    "train.batch_size=8",
    "train.lr=0.0005",
    "train.decay_start=0.3",
    "train.val_every=100000",
    "train.checkpoint_every=100",
    "train.log_every=10",
    "train.preview_count=3",
    "train.tensorboard=false",
]
#: ``--quick``: a tiny phantom and network, for tests and smoke checks (seconds).
QUICK_OVERRIDES = [
    "data.image_size=[32, 32]",
    "model.depth=4",
    "model.base_channels=8",
    "model.disc_channels=8",
    "model.disc_layers=2",
    "train.batch_size=2",
    "train.val_every=100000",
    "train.tensorboard=false",
]
DEMO_PHANTOM = PhantomSpec()
QUICK_PHANTOM = PhantomSpec((40, 44, 12), (5.0, 5.0, 10.0))
QUICK_STEPS = 30
MAX_STEPS = 100_000  # the demo is bounded by its minutes
MARKER = "demo.json"
SUBFOLDERS = ("phantom", "run", "pred", "report", "baseline", "report_baseline")


@dataclass
class DemoResult:
    """Where everything is, and the headline numbers."""

    out: Path
    steps: int
    train_seconds: float
    model: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    dicom_series: list[Path] = field(default_factory=list)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists() and not overwrite:
            raise FileExistsError(f"{out}: holds files that are not a medp2p demo; choose another --out or pass --overwrite")
        remove_outputs(out, (*SUBFOLDERS, MARKER))
    out.mkdir(parents=True, exist_ok=True)


def run_demo(
    out: str | Path = "demo_out",
    minutes: float = 5.0,
    quick: bool = False,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> DemoResult:
    """Run the demo into ``out``; training takes about ``minutes`` (the number of steps is sized to it).

    Example:
        >>> result = run_demo("demo_out", minutes=5)
        >>> result.model["mae"] < result.baseline["mae"]
        True
    """
    out = Path(out)
    _prepare_out(out, overwrite)
    (out / MARKER).write_text(json.dumps({"minutes": minutes, "quick": quick}) + "\n")
    spec = QUICK_PHANTOM if quick else DEMO_PHANTOM
    n_train, n_val = (3, 2) if quick else (8, 3)
    say(f"1/5 phantom: {n_train} training and {n_val} validation cases, {spec.shape} voxels of {spec.spacing_mm} mm -> {out / 'phantom'}")
    train_dir, val_dir = out / "phantom" / "train", out / "phantom" / "val"
    write_phantom(train_dir, cases=n_train, seed=0, spec=spec)
    write_phantom(val_dir, cases=n_val, seed=1, spec=spec)

    # train.minutes fits the schedule to the budget after timing a few steps (the quick demo stops at QUICK_STEPS)
    cap = QUICK_STEPS if quick else MAX_STEPS
    cfg = load_config("mri2ct", None, [*(QUICK_OVERRIDES if quick else DEMO_OVERRIDES), f"train.steps={cap}", f"train.minutes={minutes}"])
    if quick:
        say(
            f"2/5 training mri2ct: {QUICK_STEPS} steps of a tiny network (batch {cfg.train.batch_size}; seconds, a smoke test) "
            f"-> {out / 'run'}"
        )
    else:
        say(f"2/5 training mri2ct for {minutes:g} min (batch {cfg.train.batch_size}; the schedule is fitted to the time) -> {out / 'run'}")
    start = time.perf_counter()
    result = train(cfg, train_dir, out / "run", val_data=val_dir, progress=progress)
    train_seconds = time.perf_counter() - start

    say(f"3/5 predicting the validation cases to NIfTI and DICOM -> {out / 'pred'}")
    report = predict_cases(out / "run", [val_dir], out / "pred", fmt="both")
    if report.failures:
        raise RuntimeError(f"prediction failed: {report.failures}")

    say("4/5 lookup baseline: MR intensity -> median HU, fitted on the training cases")
    pairs = []
    for case in find_cases(train_dir):
        pairs.append((read_volume(case["mr"]), read_volume(case["ct"]), read_volume(case["mask"]).array))
    lookup = IntensityLookup.fit(pairs)
    for case in find_cases(val_dir):
        write_nifti(lookup.predict(read_volume(case["mr"])), out / "baseline" / case["id"] / "sct.nii.gz")

    say(f"5/5 evaluating both -> {out / 'report'}, {out / 'report_baseline'}")
    model = evaluate("mri2ct", out / "pred", val_dir, out / "report").summary["metrics"]
    baseline = evaluate("mri2ct", out / "baseline", val_dir, out / "report_baseline", montages=False).summary["metrics"]
    series = sorted(p for p in (out / "pred").glob("*/sct_dicom"))
    summary = {k: {"model": model[k]["mean"], "lookup": baseline[k]["mean"]} for k in model if k in baseline}
    (out / MARKER).write_text(
        json.dumps(
            {"minutes": minutes, "quick": quick, "steps": result.step, "train_seconds": round(train_seconds, 1), "metrics": summary},
            indent=2,
        )
        + "\n"
    )
    return DemoResult(
        out, result.step, train_seconds, {k: v["mean"] for k, v in model.items()}, {k: v["mean"] for k, v in baseline.items()}, series
    )


def lookup_vs_model_rows(result: DemoResult) -> list[tuple[str, str, str]]:
    """``(metric, model, lookup)`` rows for printing, MAE first."""
    rows: list[tuple[str, str, str]] = []
    for key in ("mae", "mae_bone", "mae_air", "mae_soft_tissue", "psnr", "ssim"):
        if key in result.model and key in result.baseline and np.isfinite(result.model[key]):
            rows.append((key, f"{result.model[key]:.4g}", f"{result.baseline[key]:.4g}"))
    return rows
