"""``medp2p predict`` and ``evaluate``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medp2p.cli.app import AffineFrom, SeriesUid, command, err, read_options_of, usage_error


@command
def predict(
    model: Annotated[
        list[Path],
        typer.Option(
            "--model",
            metavar="RUN_DIR",
            help="A run folder (uses best.pt, else last.pt), a checkpoint or an exported .onnx file; repeat for an ensemble "
            "(outputs averaged after each member's own decoding; members must share task, target and input rules).",
        ),
    ],
    inputs: Annotated[
        list[Path], typer.Option("--input", "-i", metavar="INPUT", help="A volume file, a DICOM series folder, or a dataset (repeatable).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUT_DIR", help="Output folder: one <case>/ folder per case.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="nifti, dicom (mri2ct: CT series; seg: DICOM SEG), rtstruct (seg), both (nifti + dicom) or all.",
        ),
    ] = "nifti",
    num_parts: Annotated[int, typer.Option(min=1, metavar="N", help="Split the cases into this many parts...")] = 1,
    part_id: Annotated[int, typer.Option(min=0, metavar="K", help="...and predict this one (0-based).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (refused otherwise).")] = False,
    device: Annotated[
        str, typer.Option(metavar="DEVICE", help="auto, cpu, cuda or cuda:N (several processes on one node: one GPU each).")
    ] = "auto",
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, metavar="B", help="Slices per forward pass (default: 16 of 256x256; fewer, larger slices: 4 of 512x512)."),
    ] = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile", help="Compile the generator with frozen weights first (a minute or more; pays over many volumes)."
        ),
    ] = False,
    tta: Annotated[
        bool, typer.Option("--tta/--no-tta", help="Also predict each slice mirrored left-right and average the two (twice the time).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Predict inputs that do not look like the model's training sources (a CT given to an MR model).")
    ] = False,
    affine_from: AffineFrom = None,
    series_uid: SeriesUid = None,
    pipeline: Annotated[
        bool | None,
        typer.Option(
            "--pipeline/--no-pipeline",
            help="Read the next cases and write the last ones while the model runs on this one. Default: on a GPU; on the CPU "
            "unless the model takes 85% or more of the first case's time.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Cases read and prepared at once, and written at once, beside the model (threads; at most 2N+1 cases in memory). "
            "Default 2; on a GPU a quarter of the cores, at most 4.",
        ),
    ] = None,
    uncertainty: Annotated[
        bool,
        typer.Option(
            "--uncertainty",
            help="Also write voxelwise uncertainty beside each output (<output>_std.nii.gz; seg: mask_prob, mask_entropy) and "
            "uncertainty.json: the spread across ensemble members x test-time passes (mirror, 4 shifts, MC dropout).",
        ),
    ] = False,
    tta_shift: Annotated[
        int | None,
        typer.Option(
            min=0, metavar="V", help="In-plane shift of the shifted passes, whole voxels (default 2 with --uncertainty; 0: none)."
        ),
    ] = None,
    mc_samples: Annotated[
        int, typer.Option(min=0, metavar="N", help="MC-dropout passes per member (the generator needs dropout layers).")
    ] = 0,
    precision: Annotated[
        str | None,
        typer.Option(
            metavar="P",
            help="auto, fp32, tf32, bf16 or fp16 (CUDA); default the run's train.precision (auto: bf16 where the hardware has it). "
            "Recorded in OUT_DIR/predict.json.",
        ),
    ] = None,
) -> None:
    """Predict whole volumes with a trained model; outputs sit on each input's own grid.

    Exit 0 when every case was written, 1 when a case failed (listed in OUT_DIR/failures.csv; the others go on, unless a
    write failed: a full disk stops the run and OUT_DIR/finished.txt lists the cases written), 2 on usage errors,
    130 when interrupted (OUT_DIR/finished.txt lists the cases written).
    """
    from medp2p.infer import FORMATS, predict_cases

    if fmt not in FORMATS:
        raise usage_error(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if part_id >= num_parts:
        raise usage_error(f"--part-id must be below --num-parts ({num_parts}), got {part_id}")
    from medp2p.device.precision import PRECISIONS

    if precision is not None and precision not in PRECISIONS:
        raise usage_error(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("predicting [bold]{task.fields[case]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, transient=True,
    )  # fmt: skip
    started, slices = time.perf_counter(), [0]

    def written(case: str, n: int) -> None:
        slices[0] += n
        rate = f"{slices[0] / max(time.perf_counter() - started, 1e-9):.1f} slices/s"
        progress.update(bar, advance=1, rate=rate)

    with progress:
        bar = progress.add_task("predict", total=None, case="...", rate="")
        try:
            report = predict_cases(
                model,
                inputs,
                out,
                fmt,
                num_parts,
                part_id,
                overwrite,
                device,
                batch_size,
                on_case=lambda cid: progress.update(bar, case=escape(cid)),
                compile=compile,
                tta=tta,
                precision=precision,
                read_options=read_options_of(affine_from, series_uid),
                force=force,
                pipelined=pipeline,
                workers=workers,
                uncertainty=uncertainty,
                tta_shift=tta_shift,
                mc_samples=mc_samples,
                on_written=written,
                on_cases=lambda n: progress.update(bar, total=n),
            )
        except (ValueError, RuntimeError) as exc:  # bad model, options or inputs: before any case ran
            raise usage_error(str(exc)) from None
    for case, paths in report.written.items():
        typer.echo(f"{case}: " + ", ".join(str(p) for p in paths))
    for failure in report.failures:
        err.print(f"[bold red]failed:[/] {escape(failure['case'])}: {escape(failure['error'])}")
    done = f"{len(report.written)} case(s) written to {out}"
    if num_parts > 1:
        done += f" (part {part_id} of {num_parts}; {report.total_cases} case(s) in all)"
    err.print(escape(done))
    if report.failures:
        where = f"; see {report.failures_csv}" if report.failures_csv else ""
        err.print(escape(f"{len(report.failures)} case(s) failed{where}"))
    finished = f"{len(report.written)} case(s) finished" + (f", listed in {report.finished_txt}" if report.finished_txt else "")
    if report.interrupted:
        err.print(escape(f"interrupted: {finished}; no partial output"))
        raise typer.Exit(130)
    if report.stopped:
        err.print(escape(f"stopped: {report.stopped}; {finished}; the others were not predicted: free space and run again"))
    if report.failures:
        raise typer.Exit(1)


@command
def evaluate(
    task: Annotated[str, typer.Option(metavar="TASK", help="The task the predictions are for (`medp2p tasks` lists them).")],
    pred: Annotated[Path, typer.Option(metavar="OUT_DIR", help="The prediction folder written by `medp2p predict`.")],
    ref: Annotated[Path, typer.Option(metavar="DATA", help="Reference data: any layout `medp2p validate` reads.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="REPORT_DIR", help="Report folder: metrics.csv, summary.json, index.html, PNGs."),
    ],
    target_key: Annotated[str | None, typer.Option(metavar="KEY", help="Reference image key (default the task's: ct, tumor, mr).")] = None,
    seed: Annotated[int, typer.Option(metavar="S", help="inpaint: seed of the generated regions (inpaint.eval_seed).")] = 1234,
    montages: Annotated[bool, typer.Option(help="Write one montage PNG per case.")] = True,
    slice_range: Annotated[
        tuple[float, float] | None,
        typer.Option(
            metavar="START END",
            help="Score only this fraction [START, END) of the slices along --axis, as data.slice_range trains on them (slab splits).",
        ),
    ] = None,
    axis: Annotated[str, typer.Option(metavar="AXIS", help="Slicing axis of --slice-range: axial, coronal, sagittal.")] = "axial",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the report in REPORT_DIR (refused otherwise; only its own files are removed).")
    ] = False,
    affine_from: AffineFrom = None,
    series_uid: SeriesUid = None,
    workers: Annotated[
        int, typer.Option(min=1, metavar="N", help="Score N cases at once in worker processes (memory: one case each).")
    ] = 1,
    metrics: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Metric definition (default the task's first): mri2ct synthrad2023 | synthrad2025; seg dice-hd95 | "
            "brats2023-lesionwise; inpaint brats-inpainting | brats-inpainting-2d; mr2mr brasyn | brasyn-brain.",
        ),
    ] = None,
) -> None:
    """Score predictions against references with the challenges' metric definitions.

    Exit 0 when every reference case was scored, 1 when a case was missing or failed, 2 on usage errors.
    """
    from medp2p.config import load_config
    from medp2p.data.geometry import SLICE_AXES, check_slice_range
    from medp2p.eval import evaluate as run_evaluation
    from medp2p.plan import build_plan

    plan = build_plan(load_config(task, None, [f"data.target_key={target_key}"] if target_key else []))
    if axis not in SLICE_AXES:
        raise usage_error(f"unknown --axis {axis!r}; choose from {sorted(SLICE_AXES)}")
    if slice_range is not None:
        try:
            check_slice_range(slice_range)
        except ValueError as exc:
            raise usage_error(f"--slice-range START END: {exc}") from None
    slab = None if slice_range is None else (axis, (float(slice_range[0]), float(slice_range[1])))
    try:
        definition = plan.task.definition(metrics)
    except KeyError as exc:
        raise usage_error(str(exc.args[0])) from None
    with err.status("evaluating...") as status:
        report = run_evaluation(
            plan,
            pred,
            ref,
            out,
            None,
            seed,
            montages,
            on_case=lambda c: status.update(f"evaluating {escape(c)}"),
            slab=slab,
            overwrite=overwrite,
            read_options=read_options_of(affine_from, series_uid),
            workers=workers,
            metrics=definition.name,
        )
    from rich.table import Table

    table = Table(title=f"{task}: {report.summary['cases']} case(s), {definition.name}")
    for col in ("metric", "mean", "std", "median"):
        table.add_column(col, justify="right")
    for name, stats in report.summary["metrics"].items():
        table.add_row(name, f"{stats['mean']:.4g}", f"{stats['std']:.3g}", f"{stats['median']:.4g}")
    Console().print(table)
    err.print(f"report in [bold]{escape(str(out))}[/] (metrics.csv, summary.json, index.html)")
    for cid in report.missing:
        err.print(f"[yellow]missing:[/] no prediction for {escape(cid)}")
    for failure in report.failures:
        err.print(f"[bold red]failed:[/] {escape(failure['case'])}: {escape(failure['error'])}")
    raise typer.Exit(0 if report.ok else 1)


@command
def export(
    model: Annotated[Path, typer.Option(metavar="RUN", help="A run folder (its best.pt, else last.pt) or a checkpoint file.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE.onnx", help="The ONNX file to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing FILE.onnx.")] = False,
) -> None:
    """Export a run's generator to ONNX (float32, batch norms folded, dynamic batch and slice sizes).

    The preprocessing contract (task, channels, slice axis, spacing, windows, size multiple) and the
    run's config go into the ONNX metadata; `medp2p predict --model FILE.onnx` runs it with
    onnxruntime (`pip install 'medp2p[onnx]'`) through the same pipeline.
    """
    if out.suffix != ".onnx":
        raise usage_error(f"{out}: the output must be a .onnx file")
    if out.exists() and not overwrite:
        raise usage_error(f"{out}: already exists; pass --overwrite to replace it")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise usage_error("export needs the onnx package: pip install 'medp2p[onnx]'") from None
    from medp2p.infer.onnx import export_onnx

    path = export_onnx(model, out)
    err.print(f"wrote [bold]{escape(str(path))}[/]")
