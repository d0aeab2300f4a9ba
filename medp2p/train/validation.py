"""Volume-level validation: predict held-out cases whole and score them as ``medp2p evaluate`` does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medp2p.data.case_reader import CaseKeys, CaseVolumes, read_case
from medp2p.data.checks import ReadOptions
from medp2p.data.corruption import seeded_corruption
from medp2p.data.prepare import Prep
from medp2p.infer.volume import RunOptions, predict_volume
from medp2p.tasks import ScoreContext, Scored, Task
from medp2p.types import Volume
from medp2p.viz import draw_panels, middle_slice, save_preview


@dataclass
class ValCase:
    """A held-out case, decoded once: the read case and, for inpainting, the input and region predicted with.

    Args:
        case: the case as the reader returned it.
        sources: the generator's inputs (the voided image first, for inpainting).
        region: inpainting: the region filled (the case's, or a seeded BraTS-style box).
    """

    case: CaseVolumes
    sources: list[Volume]
    region: Volume | None = None

    @property
    def id(self) -> str:
        """The case id."""
        return self.case.id


def load_val_cases(
    cases: list[dict[str, Any]],
    prep: Prep,
    task: Task,
    eval_seed: int,
    keys: CaseKeys,
    datalist: dict[str, Any] | None = None,
    options: ReadOptions = ReadOptions(),
) -> list[ValCase]:
    """Read validation cases with the checks training applies; inpainting cases without a region get a seeded box."""
    out = []
    for raw in cases:
        case = read_case(raw, keys, "validation", datalist, options)
        sources, region = case.sources, None
        if prep.region:
            if case.region is not None:
                region = case.region
                sources = [case.voided or sources[0], *sources[1:]]
            else:
                voided, region = seeded_corruption(sources[0], case.id, eval_seed)
                sources = [voided, *sources[1:]]
        out.append(ValCase(case, sources, region))
    return out


def score(task: Task, case: ValCase, prediction: Volume) -> tuple[dict[str, float], Scored]:
    """The task's default metrics for one predicted case, and what they were computed from."""
    ctx = ScoreContext(region=case.region, voided=case.sources[0] if case.region is not None else None)
    scored = task.scoring(case.case, prediction, ctx)
    return task.definition().compute(scored), scored


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
        metrics, scored = score(task, case, pred)
        rows.append(metrics)
        if preview_dir is not None and i < preview_count:
            _preview(preview_dir / f"step{step:07d}_{case.id}.png", task, case.id, scored, step)
    keys = rows[0].keys() if rows else []
    return {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows) else float("nan") for k in keys}


def _preview(path: Path, task: Task, case_id: str, scored: Scored, step: int) -> None:
    """Source | prediction | target at the slice with the most mask: the first three panels of the task's montage."""
    z = middle_slice(scored.mask, 2, scored.prediction.shape[2])
    arrays = {"source": scored.source, "prediction": scored.prediction, "reference": scored.reference}
    panels = draw_panels(task.panels[:3], arrays, z)
    save_preview(path, panels, title=f"{case_id}, step {step}, slice {z}")
