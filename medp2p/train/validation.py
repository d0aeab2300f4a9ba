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
    """A held-out case: where it is and how its inputs are made; read again at each validation.

    Holding only the datalist entry keeps a run's memory independent of its validation set; the
    case was read and checked once at the start (:func:`load_val_cases`).
    """

    raw: dict[str, Any]
    keys: CaseKeys
    datalist: dict[str, Any] | None
    options: ReadOptions
    region_task: bool
    eval_seed: int

    @property
    def id(self) -> str:
        """The case id."""
        return str(self.raw["id"])

    def load(self) -> tuple[CaseVolumes, list[Volume], Volume | None]:
        """The read case, the generator's inputs (the voided image first, for inpainting) and the region filled."""
        case = read_case(self.raw, self.keys, "validation", self.datalist, self.options)
        sources, region = case.sources, None
        if self.region_task:
            if case.region is not None:
                region = case.region
                sources = [case.voided or sources[0], *sources[1:]]
            else:  # a seeded BraTS-style box, the same every validation
                voided, region = seeded_corruption(sources[0], case.id, self.eval_seed)
                sources = [voided, *sources[1:]]
        return case, sources, region


def load_val_cases(
    cases: list[dict[str, Any]],
    prep: Prep,
    task: Task,
    eval_seed: int,
    keys: CaseKeys,
    datalist: dict[str, Any] | None = None,
    options: ReadOptions = ReadOptions(),
) -> list[ValCase]:
    """Validation cases, each read and checked now (a bad one stops the run before training), kept as entries."""
    out = []
    for raw in cases:
        read_case(raw, keys, "validation", datalist, options)
        out.append(ValCase(raw, keys, datalist, options, prep.region, eval_seed))
    return out


def score(
    task: Task, case: CaseVolumes, sources: list[Volume], region: Volume | None, prediction: Volume
) -> tuple[dict[str, float], Scored]:
    """The task's default metrics for one predicted case, and what they were computed from."""
    ctx = ScoreContext(region=region, voided=sources[0] if region is not None else None)
    scored = task.scoring(case, prediction, ctx)
    return task.validation_definition().compute(scored), scored


def validation_rows(
    generator: nn.Module,
    cases: list[ValCase],
    prep: Prep,
    task: Task,
    options: RunOptions,
    preview_dir: Path | None = None,
    preview_count: int = 0,
    step: int = 0,
) -> list[dict[str, float]]:
    """Each case predicted whole and scored; preview PNGs for the first ``preview_count``."""
    rows = []
    for i, entry in enumerate(cases):
        case, sources, region = entry.load()
        pred = predict_volume(generator, sources, prep, region, options)
        metrics, scored = score(task, case, sources, region, pred)
        rows.append(metrics)
        if preview_dir is not None and i < preview_count:
            _preview(preview_dir / f"step{step:07d}_{case.id}.png", task, case.id, scored, step)
    return rows


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the rows, NaNs skipped (NaN when all are)."""
    keys = rows[0].keys() if rows else []
    return {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows) else float("nan") for k in keys}


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
    return mean_metrics(validation_rows(generator, cases, prep, task, options, preview_dir, preview_count, step))


def _preview(path: Path, task: Task, case_id: str, scored: Scored, step: int) -> None:
    """Source | prediction | target at the slice with the most mask: the first three panels of the task's montage."""
    z = middle_slice(scored.mask, 2, scored.prediction.shape[2])
    arrays = {"source": scored.source, "prediction": scored.prediction, "reference": scored.reference}
    panels = draw_panels(task.panels[:3], arrays, z)
    save_preview(path, panels, title=f"{case_id}, step {step}, slice {z}")
