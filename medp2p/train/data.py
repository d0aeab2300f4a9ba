"""Training data: the cases of a run, split into training and validation, read, checked and prepared once.

What the data fixes in the run is fixed here too: the number of images per source key
(``data.source_channels``) and, for a codec that writes the target contrast's scale, the
training targets' window (``data.target_window``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medp2p.config import Config
from medp2p.data import load_datalist
from medp2p.data.case_reader import CaseKeys
from medp2p.data.checks import ReadOptions
from medp2p.data.codecs import fitted_window
from medp2p.data.prepare import Prep, PrepareCased, PreparedCase
from medp2p.plan import Plan, build_plan
from medp2p.train.validation import ValCase, load_val_cases

Case = dict[str, Any]


@dataclass
class TrainingData:
    """A run's prepared training cases and decoded validation cases, under the plan they fixed.

    ``profile``: what the sources looked like (``source_is_ct``), recorded so that ``predict``
    can refuse a CT given to an MR model.
    """

    plan: Plan
    cases: list[PreparedCase]
    val_cases: list[ValCase] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)


def split_cases(
    cfg: Config, data: str | Path, val_data: str | Path | None
) -> tuple[list[Case], list[Case], dict[str, Any], dict[str, Any]]:
    """Training and validation cases, and the datalists they come from (their declared label values).

    Validation: ``val_data``, else the datalist's ``validation`` section, else the last
    ``data.val_cases`` training cases, else none.
    """
    datalist = load_datalist(data)
    training = datalist.get("training", [])
    if val_data is not None:
        vl = load_datalist(val_data)
        return training, vl.get("validation") or vl.get("training", []), datalist, vl
    if datalist.get("validation"):
        return training, datalist["validation"], datalist, datalist
    n = cfg.data.val_cases
    if n and n >= len(training):
        raise ValueError(f"{data}: data.val_cases={n} leaves no training case out of {len(training)}")
    return (training[:-n], training[-n:], datalist, datalist) if n else (training, [], datalist, datalist)


def source_channels_of(cfg: Config, cases: list[Case]) -> Config:
    """Fix ``data.source_channels`` from the cases: a list-valued source key is that many images.

    Every case must hold the same number of images per source key; the first that differs is
    named. A config that already states the counts must agree with the data.
    """
    keys = cfg.data.source_keys or []
    counts: list[int] | None = None
    first = ""
    for case in cases:
        here = [len(case[k]) if isinstance(case.get(k), list) else 1 for k in keys]
        if counts is None:
            counts, first = here, str(case["id"])
        elif here != counts:
            raise ValueError(
                f"case {case['id']!r}: its source keys {keys} hold {here} image(s), case {first!r}'s hold {counts}; "
                "every case needs the same number of images per key"
            )
    stated = cfg.data.source_channels
    if stated is not None and counts is not None and list(stated) != counts:
        raise ValueError(f"data.source_channels={list(stated)}, but the cases' source keys {keys} hold {counts} image(s)")
    if counts is None or all(n == 1 for n in counts):
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"source_channels": counts})})


def prepare_training_cases(
    cases: list[Case], prep: Prep, keys: CaseKeys, datalist: dict[str, Any], options: ReadOptions, workers: int
) -> list[PreparedCase]:
    """Read, check and prepare every training case once (MONAI ``CacheDataset``, ``workers`` threads)."""
    from monai.data import CacheDataset

    try:
        transform = PrepareCased(prep, keys, datalist, options)
        ds = CacheDataset(data=cases, transform=transform, cache_rate=1.0, num_workers=workers or None, copy_cache=False, progress=False)
        return [ds[i]["case"] for i in range(len(ds))]
    except RuntimeError as exc:  # MONAI wraps a transform's error as "applying transform ...": show the cause
        cause: BaseException = exc
        while isinstance(cause, RuntimeError) and str(cause).startswith("applying transform") and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is exc:
            raise
        raise cause from None


def with_target_window(plan: Plan, cases: list[PreparedCase]) -> Plan:
    """For a codec that writes the target contrast's scale: the plan with the training targets' window."""
    if not plan.codec.fits_window or plan.prep.target_window is not None:
        return plan
    windows = [c.target_window for c in cases if c.target_window is not None]
    window = fitted_window(windows, plan.prep.mr_percentiles)
    cfg = plan.config
    return build_plan(cfg.model_copy(update={"data": cfg.data.model_copy(update={"target_window": (window.lo, window.hi)})}))


def load_training_data(cfg: Config, data: str | Path, val_data: str | Path | None, options: ReadOptions) -> TrainingData:
    """The run's cases, read with the checks every command applies, and the plan they fix.

    Raises:
        CaseError: a case cannot be used (the message names the file and the fix).
        ValueError: no training case, or cases that disagree on their number of images.
    """
    train_cases, val_raw, datalist, val_datalist = split_cases(cfg, data, val_data)
    if not train_cases:
        raise ValueError(f"{data}: no training cases (a folder of unrelated volumes has none: training needs cases with targets)")
    plan = build_plan(source_channels_of(cfg, train_cases + val_raw))
    cases = prepare_training_cases(train_cases, plan.prep, plan.keys, datalist, options, cfg.data.num_workers)
    plan = with_target_window(plan, cases)
    val_cases = load_val_cases(val_raw, plan.inference_prep, plan.task, cfg.inpaint.eval_seed, plan.keys, val_datalist, options)
    profile = {"source_is_ct": sum(c.source_is_ct for c in cases) * 2 >= len(cases)}
    return TrainingData(plan, cases, val_cases, profile)
