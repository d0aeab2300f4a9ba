"""The run folder: what a run writes, refusing to clobber another run, and what resume reads back."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from medp2p.config import Config, config_from_dict, save_config
from medp2p.data.checks import ReadOptions
from medp2p.io.atomic import atomic_path, remove_outputs

#: Files and folders a run writes; ``--overwrite`` removes exactly these.
RUN_ARTIFACTS = (
    "config.yaml", "run.json", "versions.json", "splits.json", "last.pt", "best.pt", "metrics.csv", "tb", "previews", "ddp.json",
)  # fmt: skip


class RunExistsError(FileExistsError):
    """The run folder already holds a run and neither resume nor overwrite was asked for."""


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def versions() -> dict[str, str]:
    """The versions of Python and the packages a run depends on."""
    out = {"python": sys.version.split()[0]}
    for pkg in ("medp2p", "torch", "monai", "numpy", "nibabel", "SimpleITK", "pydicom", "scikit-image"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class RunSettings:
    """What a run was started with besides its config: the data and how it was read."""

    data: str
    val_data: str | None
    read_options: ReadOptions
    cache_dir: str = ""


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready: for resume it must hold ``last.pt``; otherwise it must be empty unless ``overwrite``.

    Raises:
        FileNotFoundError: resume without ``last.pt``.
        RunExistsError: ``out`` holds files and neither ``resume`` nor ``overwrite``.
    """
    if resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(f"{out / 'last.pt'}: nothing to resume; start the run without --resume")
        # A run killed mid-write leaves its temporary file (".last.pt.<random>.tmp.pt") behind.
        for name in RUN_ARTIFACTS:
            for stale in out.glob(f".{name}.*.tmp*"):
                stale.unlink()
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunExistsError(f"{out}: already holds files; pass --resume to continue the run or --overwrite to replace it")
        remove_outputs(out, RUN_ARTIFACTS)
    out.mkdir(parents=True, exist_ok=True)


def resumed_settings(
    out: Path,
    ckpt: dict[str, Any],
    data: str | Path | None,
    val_data: str | Path | None,
    read_options: ReadOptions | None,
    cache_dir: str | Path | None = None,
) -> tuple[Config, RunSettings]:
    """The run's own config and settings, for resume; arguments given now win over the recorded ones."""
    info = json.loads((out / "run.json").read_text())
    options = read_options if read_options is not None else ReadOptions(**info.get("read_options", {}))
    store = str(cache_dir) if cache_dir is not None else info.get("cache_dir") or str(Path(out).resolve().parent / "cache")
    return config_from_dict(ckpt["config"]), RunSettings(
        str(data if data is not None else info["data"]), str(val_data) if val_data is not None else info.get("val_data"), options, store
    )


def record_start(
    out: Path, cfg: Config, settings: RunSettings, resolved: dict[str, object], splits: list[dict[str, list[str]]] | None = None
) -> None:
    """Write ``config.yaml``, ``versions.json``, ``run.json`` (data, read options, what ``auto`` became) and ``splits.json`` (folds)."""
    save_config(cfg, out / "config.yaml")
    if splits is not None:  # nnU-Net's splits_final.json form: the same file in every fold's run
        write_json(out / "splits.json", splits)
    write_json(out / "versions.json", versions())
    write_json(
        out / "run.json",
        {
            "task": cfg.task,
            "data": str(Path(settings.data).resolve()),
            "val_data": str(Path(settings.val_data).resolve()) if settings.val_data else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "read_options": {"affine_from": settings.read_options.affine_from, "series_uid": settings.read_options.series_uid},
            "cache_dir": str(Path(settings.cache_dir).resolve()) if settings.cache_dir else None,
            "resolved": resolved,
        },
    )
