"""``medp2p validate``, ``phantom`` and ``tasks``: checking data, making the phantom, listing the tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medp2p.cli.app import AffineFrom, SeriesUid, command, err, read_options_of, usage_error


@command
def validate(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA", help="Dataset: per-case folders, BraTS, nnU-Net raw folder, datalist .json or one DICOM series folder."
        ),
    ],
    task: Annotated[
        str | None,
        typer.Option(metavar="TASK", help="Check the keys this task reads, as `train` reads them (`medp2p tasks` lists the tasks)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(metavar="FILE", help="The training config: its task and data.source_keys/target_key/mask_key.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override a config value, as for train (repeatable).")
    ] = None,
    require: Annotated[
        list[str] | None, typer.Option("--require", metavar="KEY", help="Require this key in every case (repeatable).")
    ] = None,
    section: Annotated[
        list[str] | None, typer.Option("--section", metavar="NAME", help="Check only this datalist section (repeatable).")
    ] = None,
    origin_tol_mm: Annotated[float, typer.Option(metavar="MM", help="Largest origin difference between a case's images, mm.")] = 1e-2,
    affine_from: AffineFrom = None,
    series_uid: SeriesUid = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report instead of lines.")] = False,
) -> None:
    """Check every case of DATA: decodable files, finite voxels, sane geometry, shared grids, label values.

    The same checks train, predict and evaluate apply to every case they read. Prints one line
    per problem naming the file. Exit 0 when clean, 1 when problems were found, 2 on usage errors.
    """
    from medp2p.config import load_config
    from medp2p.data import GridTolerance, validate_data
    from medp2p.plan import build_plan

    keys = None
    if task is not None or config is not None or set_:
        keys = build_plan(load_config(task, config, list(set_ or []))).keys
    with err.status("validating...") as status:
        report = validate_data(
            data,
            required_keys=list(require or []),
            sections=section,
            tol=GridTolerance(origin_mm=origin_tol_mm),
            on_case=lambda cid: status.update(f"validating case {escape(cid)}"),
            keys=keys,
            options=read_options_of(affine_from, series_uid),
        )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            typer.echo(str(problem))
        summary = f"{report.cases} case(s), {report.files} file(s) checked: "
        err.print(summary + ("[green]no problems[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"))
    raise typer.Exit(0 if report.ok else 1)


@command
def phantom(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to create (SynthRAD layout: <case>/mr|ct|mask|tumor.nii.gz).")],
    cases: Annotated[int, typer.Option(min=1, metavar="N", help="Number of cases.")] = 4,
    seed: Annotated[int, typer.Option(metavar="S", help="Dataset seed; the same seed gives the same cases.")] = 0,
    shape: Annotated[tuple[int, int, int], typer.Option(metavar="X Y Z", help="Voxels.")] = (96, 112, 48),
    spacing: Annotated[tuple[float, float, float], typer.Option(metavar="X Y Z", help="Voxel size in mm.")] = (2.0, 2.0, 3.0),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Generate the deterministic synthetic head phantom: MR, CT (HU), body mask and tumour mask per case."""
    from medp2p.data import PhantomSpec, write_phantom

    try:
        spec = PhantomSpec(shape=shape, spacing_mm=spacing)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    with err.status(f"writing {cases} phantom case(s) to {escape(str(out))}..."):
        written = write_phantom(out, cases=cases, seed=seed, spec=spec, overwrite=overwrite)
    err.print(f"wrote {len(written)} case(s) to [bold]{escape(str(out))}[/]")


#: Above this many hours for the default model on a CPU, `train` without --config says so.
@command
def tasks() -> None:
    """List the tasks: what each reads and writes, and how it is scored."""
    from rich.table import Table

    from medp2p.tasks import TASKS

    table = Table(title="medp2p tasks")
    for col in ("task", "what", "sources", "target", "writes", "metrics"):
        table.add_column(col)
    for t in TASKS.values():
        writes = ", ".join([t.output_name, *(o.name for o in t.dicom_outputs)])
        table.add_row(t.name, t.description, ", ".join(t.source_keys), t.target_key, writes, ", ".join(d.name for d in t.metrics))
    Console().print(table)
