"""What a ``medp2p predict`` run leaves beside its cases: its report, ``predict.json``, ``failures.csv``, ``finished.txt``.

Each is per part when the cases are split (``--num-parts N --part-id K``): ``<stem>_part-K-of-N<suffix>``,
so that parts running at once into one folder never write the same file.
"""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medp2p.io import VolumeWriteError
from medp2p.io.atomic import atomic_path

if TYPE_CHECKING:
    from medp2p.infer.ensemble import Pass
    from medp2p.infer.model import Model


@dataclass
class PredictReport:
    """What :func:`~medp2p.infer.batch.predict_cases` did: outputs per case, failures, and this part's share."""

    written: dict[str, list[Path]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    failures_csv: Path | None = None
    total_cases: int = 0
    interrupted: bool = False
    #: Why the run stopped before its last case (a write failed: a full disk fails every later case too).
    stopped: str | None = None
    #: After Ctrl-C or a stop: the list of the cases written in full (None when it could not be written).
    finished_txt: Path | None = None
    #: How the cases went through the stages (``predict.json``'s ``pipeline``; with ``pipelined=None``, the choice made).
    pipeline: dict[str, Any] = field(default_factory=dict)


def part_file(out_dir: Path, stem: str, suffix: str, num_parts: int, part_id: int) -> Path:
    """``out_dir/<stem><suffix>``, or ``out_dir/<stem>_part-K-of-N<suffix>`` when the cases are split.

    >>> part_file(Path("out"), "failures", ".csv", 4, 1).name
    'failures_part-1-of-4.csv'
    """
    return out_dir / (stem + ("" if num_parts == 1 else f"_part-{part_id}-of-{num_parts}") + suffix)


def record_settings(path: Path, members: list[Model], passes: list[Pass] | None, pipeline: dict[str, Any]) -> None:
    """What this prediction ran with (``Model.settings``, members, passes, pipeline), written before the first case, atomically."""
    settings = {**members[0].settings(), "pipeline": pipeline}
    if passes is not None:
        settings["ensemble"] = [m.settings() for m in members]
        settings["passes"] = [p.to_dict() for p in passes]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")


def write_lists(report: PredictReport, out_dir: Path, num_parts: int = 1, part_id: int = 0) -> None:
    """After the run: ``failures.csv`` (case, input, error) when a case failed, and ``finished.txt`` after Ctrl-C or a stop.

    Either list left by an earlier run of the same part is removed when it no longer holds. Sets
    ``report.failures_csv`` and ``report.finished_txt`` to the files written (None when a write failed:
    the disk may be full, and the report still says what happened).
    """
    failures_csv = part_file(out_dir, "failures", ".csv", num_parts, part_id)
    if not report.failures:
        failures_csv.unlink(missing_ok=True)
    else:
        with contextlib.suppress(VolumeWriteError), atomic_path(failures_csv) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, ["case", "input", "error"])
            writer.writeheader()
            writer.writerows(report.failures)
        report.failures_csv = failures_csv if failures_csv.exists() else None
    finished = part_file(out_dir, "finished", ".txt", num_parts, part_id)
    if report.interrupted or report.stopped:
        with contextlib.suppress(VolumeWriteError, OSError), atomic_path(finished) as tmp:
            tmp.write_text("".join(f"{case}\n" for case in report.written))
        report.finished_txt = finished if finished.exists() else None
    else:
        finished.unlink(missing_ok=True)
