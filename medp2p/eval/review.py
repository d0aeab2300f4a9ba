"""One evaluated case, for the review notebook: the report's metrics and the arrays they were computed from.

:func:`open_review` reads a ``medp2p evaluate`` report (``metrics.csv``, ``summary.json``), rebuilds
the task's plan with what the report recorded (task, reference key, metric definition, scored slab,
inpainting seed) and scores the chosen case with :func:`~medp2p.eval.evaluate.evaluate_case`, the
code that wrote the report, so the pictures show exactly what was scored; the metrics shown are
the report's, and :meth:`Review.agreement` checks the recomputation against them.

Example:
    >>> review = open_review("pred/", "data/test/", "report/")  # the worst case by the task's metric
    >>> print(review.table())
    >>> fig = review.plane_views()
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medp2p.config import load_config
from medp2p.data import load_datalist, safe_case_id
from medp2p.data.geometry import canonical_orientation, to_canonical
from medp2p.eval.evaluate import evaluate_case
from medp2p.plan import build_plan
from medp2p.tasks import Scored, Task
from medp2p.viz import review as draw
from medp2p.viz.review import ReviewVolumes

#: Relative difference under which a recomputed metric agrees with the report's (printed to 6 digits).
AGREEMENT = 1e-5


def read_report(report_dir: str | Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The rows of ``metrics.csv`` and the ``summary.json`` of a report folder.

    Raises:
        FileNotFoundError: the folder lacks one of them (the message names it).
    """
    folder = Path(report_dir)
    for name in ("metrics.csv", "summary.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: not found; point REPORT_DIR at a `medp2p evaluate -o` folder")
    with (folder / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows, json.loads((folder / "summary.json").read_text())


def _value(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def worst_first(rows: list[dict[str, str]], task: Task, columns: tuple[str, ...]) -> tuple[str, list[dict[str, str]]]:
    """The metric cases are ranked by and the rows, worst first (a missing or non-finite value counts as worst).

    The task's ``best_metric`` when the report has it, else the definition's first column; both
    point the way ``task.higher_is_better`` says (every definition's first column does).

    Example:
        >>> worst_first([{"case": "a", "mae": "50"}, {"case": "b", "mae": "80"}], MRI2CT, ("mae",))[1][0]["case"]
        'b'
    """
    have = rows[0].keys() if rows else ()
    metric = task.best_metric if task.best_metric in have else columns[0]
    sign = 1.0 if task.higher_is_better else -1.0

    def badness(row: dict[str, str]) -> float:
        v = _value(row.get(metric))
        return -math.inf if not math.isfinite(v) else sign * v

    return metric, sorted(rows, key=badness)


def canonical_volumes(scored: Scored) -> ReviewVolumes:
    """What was scored, reoriented to RAS+ array order (no resampling) with its spacing along those axes."""
    if scored.affine is None:
        return ReviewVolumes(scored.source, scored.prediction, scored.reference, scored.mask, scored.spacing_mm)
    perm, _ = canonical_orientation(scored.affine)
    spacing = tuple(float(scored.spacing_mm[a]) for a in perm)
    mask = None if scored.mask is None else to_canonical(scored.mask, scored.affine)
    return ReviewVolumes(
        to_canonical(scored.source, scored.affine),
        to_canonical(scored.prediction, scored.affine),
        to_canonical(scored.reference, scored.affine),
        mask,
        spacing,  # type: ignore[arg-type]
    )


@dataclass
class Review:
    """One case of a report, ready to look at.

    Args:
        task: the report's task.
        case: the case id shown.
        rows: the report's per-case rows, worst first by ``sort_metric``.
        summary: the report's ``summary.json``.
        columns: the metric columns of the report's definition (and per-region extras), in order.
        sort_metric: the column ``rows`` are ranked by.
        volumes: the scored arrays, canonical.
        recomputed: the case's metrics as :func:`evaluate_case` gives them now.
    """

    task: Task
    case: str
    rows: list[dict[str, str]]
    summary: dict[str, Any]
    columns: tuple[str, ...]
    sort_metric: str
    volumes: ReviewVolumes
    recomputed: dict[str, float]

    @property
    def metrics(self) -> dict[str, float]:
        """The report's values for this case."""
        row = next(r for r in self.rows if r["case"] == self.case)
        return {c: _value(row.get(c)) for c in self.columns}

    def table(self) -> str:
        """The report's per-case metrics as text, worst first, the reviewed case marked ``>``."""
        width = max([len("case"), *(len(r["case"]) for r in self.rows)]) + 2
        lines = ["  " + "case".ljust(width) + "".join(c.rjust(16) for c in self.columns)]
        for r in self.rows:
            mark = "> " if r["case"] == self.case else "  "
            lines.append(mark + r["case"].ljust(width) + "".join(f"{_value(r.get(c)):16.6g}" for c in self.columns))
        return "\n".join(lines)

    def agreement(self) -> list[str]:
        """The columns whose recomputed value differs from the report's by more than :data:`AGREEMENT` (relative)."""
        bad = []
        for column, reported in self.metrics.items():
            now = self.recomputed.get(column, math.nan)
            same = (math.isnan(now) and math.isnan(reported)) or now == reported
            if not same and not abs(now - reported) <= AGREEMENT * max(abs(reported), 1e-12):
                bad.append(column)
        return bad

    def check_line(self) -> str:
        """One line saying whether the pictures' arrays score what the report says."""
        bad = self.agreement()
        if not bad:
            return f"recomputed from the report's definition ({self.summary['metric_definition']}) and slab: agrees with metrics.csv"
        detail = ", ".join(f"{c} report {self.metrics[c]:.6g} now {self.recomputed.get(c, math.nan):.6g}" for c in bad)
        return f"WARNING: the data changed since the report was written: {detail}"

    def _title(self) -> str:
        shown = ", ".join(f"{c} {v:.4g}" for c, v in list(self.metrics.items())[:4])
        return f"{self.case} ({self.task.name}): {shown}"

    def plane_views(self, at: tuple[int, int, int] | None = None) -> Any:
        """Axial, coronal and sagittal views of the task's panels (:func:`medp2p.viz.review.plane_views`)."""
        return draw.plane_views(
            self.volumes, self.task.panels, self.task.review, at, f"{self._title()}; yellow: {self.task.review.outline}"
        )

    def slice_strip(self, n: int = 5, plane: str = "axial") -> Any:
        """``n`` slices through the scored mask (:func:`medp2p.viz.review.slice_strip`)."""
        return draw.slice_strip(self.volumes, self.task.panels, self.task.review, n, plane, f"{self._title()}: {n} {plane} slices")

    def histograms(self) -> Any:
        """The task's histograms inside the scored mask (:func:`medp2p.viz.review.histograms`)."""
        return draw.histograms(self.volumes, self.task.review, self._title())

    def metric_bars(self) -> Any:
        """Every case's value of each metric column, this case in red."""
        return draw.metric_bars(self.rows, self.columns, self.case)

    def browser(self) -> Any:
        """The ipywidgets slice browser (:func:`medp2p.viz.review.slice_browser`)."""
        return draw.slice_browser(self.volumes, self.task.panels, self.task.review)


def open_review(pred_dir: str | Path, ref_dir: str | Path, report_dir: str | Path, task: str = "", case: str = "") -> Review:
    """The review of ``case`` (default: the report's worst) from a prediction folder, its reference data and its report.

    Args:
        pred_dir: ``medp2p predict``'s output folder.
        ref_dir: the reference data the report scored against (any layout ``validate`` reads).
        report_dir: ``medp2p evaluate``'s output folder.
        task: the task name; empty: the report's. One that differs from the report's is refused.
        case: a case id of the report; empty: the worst by the task's metric.

    Raises:
        FileNotFoundError: the report lacks metrics.csv or summary.json.
        ValueError: the task differs from the report's, or the case is not in the report or the data.
    """
    rows, summary = read_report(report_dir)
    name = task or str(summary["task"])
    if name != summary["task"]:
        raise ValueError(f"{report_dir}: the report is of task {summary['task']!r}, not {name!r}")
    target = summary.get("target_key")
    plan = build_plan(load_config(name, None, [f"data.target_key={target}"] if target else []))
    if not rows:
        raise ValueError(f"{Path(report_dir) / 'metrics.csv'}: the report scored no case")
    definition = plan.task.definition(summary.get("metric_definition"))
    columns = (*definition.columns, *(k for k in rows[0] if k != "case" and k not in definition.columns))
    metric, ranked = worst_first(rows, plan.task, columns)
    chosen = case or ranked[0]["case"]
    if chosen not in {r["case"] for r in rows}:
        raise ValueError(f"{report_dir}: case {chosen!r} is not in the report; it has {[r['case'] for r in rows]}")
    datalist = load_datalist(ref_dir)
    entries = [c for s in ("training", "validation", "test") for c in datalist.get(s, []) if str(c["id"]) == chosen]
    if not entries:
        raise ValueError(f"{ref_dir}: no case {chosen!r}; point REF_DIR at the data the report scored")
    slab = summary.get("slab")
    recomputed, scored = evaluate_case(
        plan, entries[0], Path(pred_dir) / safe_case_id(chosen), int(summary.get("seed", 1234)),
        None if slab is None else (slab["axis"], tuple(slab["slice_range"])), datalist, metrics=definition.name,
    )  # fmt: skip
    return Review(plan.task, chosen, ranked, summary, columns, metric, canonical_volumes(scored), recomputed)
