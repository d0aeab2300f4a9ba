"""Training data: the cases of a run, split into training and validation, read, checked and prepared once.

Training cases go into the case store on disk (:mod:`medp2p.data.store`), built once per dataset
and preparation and reused by every start, resume and rank; validation cases are checked at the
start and read again at each validation. What the data fixes in the run is fixed here too: the
number of images per source key (``data.source_channels``) and, for a codec that writes the
target contrast's scale, the training targets' window (``data.target_window``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medp2p.config import Config
from medp2p.data import load_datalist
from medp2p.data.checks import ReadOptions
from medp2p.data.codecs import fitted_window
from medp2p.data.folds import kfold_splits
from medp2p.data.store import StoredCase, build_store
from medp2p.device import Dist
from medp2p.plan import Plan, build_plan
from medp2p.train.validation import ValCase, load_val_cases

Case = dict[str, Any]


@dataclass
class TrainingData:
    """A run's prepared training cases and decoded validation cases, under the plan they fixed.

    ``profile``: what the sources looked like (``source_is_ct``), recorded so that ``predict``
    can refuse a CT given to an MR model. ``splits``: with ``data.folds``, every fold of the
    datalist's training cases (``RUN/splits.json``).
    """

    plan: Plan
    cases: list[StoredCase]
    val_cases: list[ValCase] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    splits: list[dict[str, list[str]]] | None = None


def split_cases(
    cfg: Config, data: str | Path, val_data: str | Path | None
) -> tuple[list[Case], list[Case], dict[str, Any], dict[str, Any]]:
    """Training and validation cases, and the datalists they come from (their declared label values).

    Validation: ``val_data``, else (with ``data.folds``) the held-out fold of the training cases,
    else the datalist's ``validation`` section, else the last ``data.val_cases`` training cases,
    else none. With ``data.folds`` only fold ``data.fold``'s training cases train
    (:func:`fold_of`).
    """
    datalist = load_datalist(data)
    training = datalist.get("training", [])
    if cfg.data.folds is not None:
        training, held = fold_of(cfg, training)
        if val_data is None:
            return training, held, datalist, datalist
    if val_data is not None:
        vl = load_datalist(val_data)
        return training, vl.get("validation") or vl.get("training", []), datalist, vl
    if datalist.get("validation"):
        return training, datalist["validation"], datalist, datalist
    n = cfg.data.val_cases
    if n and n >= len(training):
        raise ValueError(f"{data}: data.val_cases={n} leaves no training case out of {len(training)}")
    return (training[:-n], training[-n:], datalist, datalist) if n else (training, [], datalist, datalist)


def fold_of(cfg: Config, training: list[Case]) -> tuple[list[Case], list[Case]]:
    """The training cases of fold ``data.fold`` of ``data.folds`` and its held-out cases (:func:`kfold_splits`)."""
    split = run_splits(cfg, training)[cfg.data.fold]
    by_id = {str(c["id"]): c for c in training}
    return [by_id[i] for i in split["train"]], [by_id[i] for i in split["val"]]


def run_splits(cfg: Config, training: list[Case]) -> list[dict[str, list[str]]]:
    """Every fold of the run's training cases, as ``RUN/splits.json`` lists them (nnU-Net's form)."""
    assert cfg.data.folds is not None
    return kfold_splits([str(c["id"]) for c in training], cfg.data.folds, cfg.data.fold_seed)


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


def _store_builder(
    cases: list[Case], plan: Plan, datalist: dict[str, Any], options: ReadOptions, cache_dir: str | Path, progress: bool
) -> Any:
    def build(workers: int) -> list[StoredCase]:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cases), desc="case store", unit="case", leave=False)

        def tick(done: int, todo: int) -> None:
            if bar is not None:
                bar.total = todo
                bar.n = done
                bar.refresh()

        try:
            return build_store(cases, plan.prep, plan.keys, cache_dir, datalist, options, workers, tick)
        finally:
            if bar is not None:
                bar.close()

    return build


def with_target_window(plan: Plan, cases: list[StoredCase]) -> Plan:
    """For a codec that writes the target contrast's scale: the plan with the training targets' window."""
    if not plan.codec.fits_window or plan.prep.target_window is not None:
        return plan
    windows = [c.target_window for c in cases if c.target_window is not None]
    window = fitted_window(windows, plan.prep.mr_percentiles)
    cfg = plan.config
    return build_plan(cfg.model_copy(update={"data": cfg.data.model_copy(update={"target_window": (window.lo, window.hi)})}))


def load_training_data(
    cfg: Config,
    data: str | Path,
    val_data: str | Path | None,
    options: ReadOptions,
    cache_dir: str | Path,
    ddp: Dist = Dist(),
    progress: bool = False,
) -> TrainingData:
    """The run's cases, read with the checks every command applies, stored once, and the plan they fix.

    The store under ``cache_dir`` is built by rank 0 (``data.num_workers`` processes) while the
    other ranks wait; then every rank reads the same files.

    Raises:
        CaseError: a case cannot be used (the message names the file and the fix).
        ValueError: no training case, or cases that disagree on their number of images.
    """
    train_cases, val_raw, datalist, val_datalist = split_cases(cfg, data, val_data)
    if not train_cases:
        raise ValueError(f"{data}: no training cases (a folder of unrelated volumes has none: training needs cases with targets)")
    plan = build_plan(source_channels_of(cfg, train_cases + val_raw))
    store = _store_builder(train_cases, plan, datalist, options, cache_dir, progress and ddp.main)
    if ddp.main:
        cases = store(cfg.data.num_workers)
    ddp.barrier()
    if not ddp.main:
        cases = store(0)  # built by rank 0: only read here
    plan = with_target_window(plan, cases)
    val_cases = load_val_cases(val_raw, plan.inference_prep, plan.task, cfg.inpaint.eval_seed, plan.keys, val_datalist, options)
    profile = {"source_is_ct": sum(c.source_is_ct for c in cases) * 2 >= len(cases)}
    splits = run_splits(cfg, datalist.get("training", [])) if cfg.data.folds is not None else None
    return TrainingData(plan, cases, val_cases, profile, splits)
