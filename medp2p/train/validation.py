"""Volume-level validation: predict held-out cases whole and score them with the task's metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medp2p.data.case_reader import CaseKeys, read_case
from medp2p.data.checks import ReadOptions
from medp2p.data.corruption import seeded_corruption
from medp2p.data.intensity import ct_body
from medp2p.data.prepare import Prep
from medp2p.metrics import inpainting_metrics, segmentation_metrics, synthrad_metrics
from medp2p.tasks import Task
from medp2p.tasks.predict import RunOptions, predict_volume
from medp2p.train.logs import HU_DISPLAY, display_window, middle_slice, save_preview
from medp2p.types import Volume


@dataclass
class ValCase:
    """A held-out case, decoded once: inputs, reference, and (inpainting) the voided input and region."""

    id: str
    sources: list[Volume]
    target: Volume
    mask: Volume | None = None
    region: Volume | None = None


def load_val_cases(
    cases: list[dict[str, Any]],
    prep: Prep,
    task: Task,
    eval_seed: int,
    keys: CaseKeys | None = None,
    datalist: dict[str, Any] | None = None,
    options: ReadOptions = ReadOptions(),
) -> list[ValCase]:
    """Read validation cases with the checks training applies; inpainting cases without a region get a seeded box (BraTS-style)."""
    keys = keys or task.case_keys(prep.source_keys, prep.target_key, prep.mask_key, prep.source_channels)
    out = []
    for raw in cases:
        case = read_case(raw, keys, "validation", datalist, options)
        assert case.target is not None
        sources, region = case.sources, None
        if prep.region:
            if case.region is not None:
                region = case.region
                sources = [case.voided or sources[0], *sources[1:]]
            else:
                voided, region = seeded_corruption(sources[0], case.id, eval_seed)
                sources = [voided, *sources[1:]]
        out.append(ValCase(case.id, sources, case.target, case.mask, region))
    return out


def score(task: Task, case: ValCase, prediction: Volume) -> dict[str, float]:
    """The task's metrics for one predicted case."""
    if task.target_kind == "hu":
        body = ct_body(case.target.array) if case.mask is None else case.mask.array
        return synthrad_metrics(case.target.array, prediction.array, body)
    if task.target_kind == "mask":
        return segmentation_metrics(case.target.array > 0, prediction.array > 0, case.target.spacing_mm)
    assert case.region is not None
    return inpainting_metrics(case.target.array, prediction.array, case.sources[0].array, case.region.array)


def validate(
    generator: nn.Module,
    cases: list[ValCase],
    prep: Prep,
    task: Task,
    options: RunOptions,
    preview_dir: Path | None = None,
    preview_count: int = 0,
    step: int = 0,
) -> dict[str, float]:
    """Mean of each metric over ``cases`` (NaNs skipped); writes preview PNGs for the first few."""
    rows = []
    for i, case in enumerate(cases):
        pred = predict_volume(generator, case.sources, prep, case.region, options)
        rows.append(score(task, case, pred))
        if preview_dir is not None and i < preview_count:
            _preview(preview_dir / f"step{step:07d}_{case.id}.png", task, case, pred, step)
    keys = rows[0].keys() if rows else []
    return {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows) else float("nan") for k in keys}


def _preview(path: Path, task: Task, case: ValCase, pred: Volume, step: int) -> None:
    focus = case.region if case.region is not None else (case.mask if case.mask is not None else case.target)
    z = middle_slice(focus.array, 2, pred.shape[2])
    src = case.sources[0].array[:, :, z]
    src_window = display_window(src)
    if task.target_kind == "hu":
        window = HU_DISPLAY
    elif task.target_kind == "mask":
        window = (0.0, 1.0)
    else:
        window = src_window
    panels = [
        ("source", src, src_window),
        ("prediction", pred.array[:, :, z], window),
        ("target", case.target.array[:, :, z] if task.target_kind != "mask" else (case.target.array[:, :, z] > 0), window),
    ]
    save_preview(path, panels, title=f"{case.id}, step {step}, slice {z}")
