"""What a run writes besides checkpoints: a long-format metrics CSV and TensorBoard events."""

from __future__ import annotations

import csv
from pathlib import Path

from medp2p.io.atomic import atomic_path

CSV_FIELDS = ("step", "phase", "metric", "value")


class MetricsLog:
    """Long-format ``metrics.csv`` (step, phase, metric, value) plus optional TensorBoard events.

    On resume, rows written after the checkpoint's step (by a run that was killed) are dropped,
    so the log matches the weights.
    """

    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        rows = []
        if resume_step and self.path.exists():
            with self.path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self._fh = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._fh, CSV_FIELDS)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step or None)

    def log(self, step: int, phase: str, values: dict[str, float]) -> None:
        """Append ``values`` at ``step`` (rows ``step, phase, metric, value``; TensorBoard scalars ``phase/metric``)."""
        if not self.enabled:
            return
        for name, value in values.items():
            self._writer.writerow({"step": step, "phase": phase, "metric": name, "value": f"{value:.6g}"})
            if self.tb is not None:
                self.tb.add_scalar(f"{phase}/{name}", value, step)
        self._fh.flush()

    def log_images(self, step: int, images: list[Path]) -> None:
        """Validation previews as TensorBoard images ``val_preview/<case>`` (the PNGs as written: fixed windows)."""
        if not self.enabled or self.tb is None:
            return
        import numpy as np
        from PIL import Image

        for path in images:
            case = path.stem.split("_", 1)[1] if "_" in path.stem else path.stem
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
            self.tb.add_image(f"val_preview/{case}", rgb, step, dataformats="HWC")
        self.tb.flush()

    def close(self) -> None:
        """Flush and close the CSV and TensorBoard files."""
        if not self.enabled:
            return
        self._fh.close()
        if self.tb is not None:
            self.tb.close()
