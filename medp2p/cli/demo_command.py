"""``medp2p demo``: the whole mission on the built-in phantom."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medp2p.cli.app import command, err


@command
def demo(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for everything the demo writes.")] = Path("demo_out"),
    minutes: Annotated[
        float,
        typer.Option(
            min=0.05, metavar="M", help="Training time budget (train.minutes): the schedule is fitted to it after a few timed steps."
        ),
    ] = 4.0,
    quick: Annotated[bool, typer.Option("--quick", help="A tiny phantom and network, 30 steps: seconds, for smoke tests.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace DIR even if it is not a previous demo's.")] = False,
) -> None:
    """The whole mission on the built-in phantom: generate, train MRI->CT, predict NIfTI + DICOM, evaluate against a lookup baseline."""
    from rich.table import Table

    from medp2p.demo import lookup_vs_model_rows, run_demo

    result = run_demo(out, minutes, quick, overwrite, say=lambda m: err.print(f"[bold cyan]{escape(m)}[/]"))
    table = Table(title=f"validation cases: model after {result.steps} steps ({result.train_seconds / 60:.1f} min) vs lookup baseline")
    for col in ("metric", "model", "lookup"):
        table.add_column(col, justify="right")
    for row in lookup_vs_model_rows(result):
        table.add_row(*row)
    console = Console()
    console.print(table)
    verdict = "beats" if result.model["mae"] < result.baseline["mae"] else "does NOT beat"
    console.print(f"The model {verdict} the lookup on MAE ({result.model['mae']:.1f} vs {result.baseline['mae']:.1f} HU).")
    console.print(f"  run (checkpoints, metrics.csv, previews): {result.out / 'run'}")
    console.print(f"  synthetic CTs (NIfTI): {result.out / 'pred'}/<case>/sct.nii.gz")
    if result.dicom_series:
        console.print(f"  DICOM CT series: {result.dicom_series[0]} (and {len(result.dicom_series) - 1} more)")
    console.print(f"  metrics and montages: {result.out / 'report'} (baseline: {result.out / 'report_baseline'})")
    console.print(f"  review notebook: MEDP2P_DEMO={result.out} jupyter lab notebooks/review.ipynb")
