"""``medp2p train``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medp2p.cli.app import AffineFrom, SeriesUid, command, err, read_options_of, usage_error

SLOW_DEFAULT_HOURS = 0.5


@command
def train(
    task: Annotated[
        str | None, typer.Option(metavar="TASK", help="What to learn (`medp2p tasks` lists the tasks; default: the config's).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(metavar="DATA", help="Training data: any layout `medp2p validate` reads (optional with --resume).")
    ] = None,
    out: Annotated[Path, typer.Option(metavar="RUN_DIR", help="Run folder: config, checkpoints, metrics, previews.")] = Path("runs/run"),
    val_data: Annotated[
        Path | None,
        typer.Option(metavar="DATA", help="Validation data (else the datalist's 'validation' section, else data.val_cases)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(metavar="FILE", help="YAML config (configs/quick.yaml, configs/mri2ct.yaml...); defaults when absent.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a config value: --set train.lr=1e-4 (repeatable).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Stop after this global step (default train.steps, the schedule length).")
    ] = None,
    seed: Annotated[int | None, typer.Option(metavar="S", help="Seed of weights, sampling and augmentation (train.seed).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue RUN_DIR/last.pt exactly where it stopped, with the run's own config.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in RUN_DIR.")] = False,
    device: Annotated[
        str | None, typer.Option(metavar="DEVICE", help="auto, cpu, cuda or cuda:N (train.device; a resumed run keeps its own).")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Where the case store goes (default $MEDP2P_CACHE, else RUN_DIR/../cache).")
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(min=2, metavar="K", help="K-fold cross-validation by case (nnU-Net's splits, RUN/splits.json): train one fold..."),
    ] = None,
    fold: Annotated[
        int | None, typer.Option(min=0, metavar="I", help="...this one (0-based; default 0); --val-data defaults to its held-out cases.")
    ] = None,
    affine_from: AffineFrom = None,
    series_uid: SeriesUid = None,
) -> None:
    """Train pix2pix for a task: slices from volumes, validation on held-out cases, exact resume.

    Exit 0 when the run finished, 1 when it failed (bad input file, non-finite loss), 2 on usage
    errors (unknown config key, existing run without --resume/--overwrite).
    """
    from medp2p.config import load_config
    from medp2p.train import train as run_training

    if device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise usage_error(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    cfg = None
    if resume:
        if config is not None or set_ or task is not None or seed is not None or folds is not None or fold is not None:
            raise usage_error("--resume continues with the run's own config; drop --config, --set, --task, --seed, --folds and --fold")
    else:
        if data is None:
            raise usage_error("--data is required (unless --resume)")
        if fold is not None and folds is None:
            raise usage_error("--fold needs --folds K")
        if folds is not None and fold is not None and fold >= folds:
            raise usage_error(f"--fold must be below --folds ({folds}), got {fold}")
        overrides = list(set_ or []) + ([f"train.seed={seed}"] if seed is not None else [])
        overrides += [f"data.folds={folds}", f"data.fold={fold or 0}"] if folds is not None else []
        cfg = load_config(task, config, overrides)

    def on_timing(step_s: float, total: int) -> None:
        hours = step_s * total / 3600
        if config is None and not resume and hours > SLOW_DEFAULT_HOURS and cfg is not None and cfg.train.minutes is None:
            err.print(
                f"[yellow]warning:[/] the default {cfg.task} model takes {step_s:.2f} s per step here: {total} steps are about "
                f"{hours:.1f} h on this machine. For a first run: --config configs/quick.yaml (minutes), or --set train.minutes=M"
            )

    result = run_training(
        cfg,
        data,
        out,
        val_data,
        stop_step=steps,
        resume=resume,
        overwrite=overwrite,
        device=device,
        cache_dir=cache_dir,
        read_options=read_options_of(affine_from, series_uid) if (affine_from or series_uid) else None,
        on_timing=on_timing,
    )
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.val_metrics.items())
    err.print(
        f"trained to step {result.step}; run in [bold]{escape(str(result.run_dir))}[/]"
        + (f"; validation: {escape(summary)}" if summary else "")
    )
    if result.best:
        err.print(f"best {result.best['metric']} {result.best['value']:.4g} at step {result.best['step']} -> best.pt")
    elif not result.val_metrics:
        err.print(
            "[yellow]note:[/] no validation data, so no best.pt and no previews (predict uses last.pt); "
            "add --val-data DATA, a 'validation' section in the datalist, or --set data.val_cases=N"
        )
