"""The ``medp2p`` command line: each command parses its arguments and calls one library function.

Heavy modules (torch, MONAI, nibabel...) are imported inside the commands, so ``medp2p --help``
stays fast. Exit codes: 0 success, 1 the command ran and found problems (or a case failed),
2 usage error (bad option, unrecognised data layout, refused overwrite).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from medp2p import __version__

app = typer.Typer(
    name="medp2p",
    help="Medical image-to-image translation: MRI->CT synthesis, tumour masks and inpainting with pix2pix.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
TASK_NAMES = ("mri2ct", "seg", "inpaint")


def _setup_logging() -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err, show_time=False, show_path=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])


def _usage_error(message: str) -> typer.Exit:
    # soft_wrap: a message naming a path must not be broken over lines.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medp2p {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Medical image-to-image translation: MRI->CT synthesis, tumour masks and inpainting with pix2pix."""
    _setup_logging()


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help="Dataset: per-case folders, BraTS, nnU-Net raw folder or datalist .json.")],
    task: Annotated[
        Optional[str], typer.Option(help=f"Require the keys this task reads: {', '.join(TASK_NAMES)}.")
    ] = None,
    require: Annotated[
        Optional[list[str]], typer.Option("--require", help="Require this key in every case (repeatable).")
    ] = None,
    section: Annotated[
        Optional[list[str]], typer.Option("--section", help="Check only this datalist section (repeatable).")
    ] = None,
    origin_tol_mm: Annotated[float, typer.Option(help="Largest origin difference between a case's images, mm.")] = 1e-2,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report instead of lines.")] = False,
) -> None:
    """Check every case of DATA: decodable files, finite voxels, sane geometry, shared grids, label values.

    Prints one line per problem naming the file. Exit 0 when clean, 1 when problems were found, 2 on usage errors.
    """
    from medp2p.data import DataLayoutError, GridTolerance, validate_data

    keys: list[str] = []
    if task is not None:
        from medp2p.tasks import TASKS

        if task not in TASKS:
            raise _usage_error(f"unknown task {task!r}; choose from {sorted(TASKS)}")
        keys += TASKS[task].required_keys
    keys += [k for k in (require or []) if k not in keys]
    try:
        with err.status("validating...") as status:
            report = validate_data(
                data,
                required_keys=keys,
                sections=section,
                tol=GridTolerance(origin_mm=origin_tol_mm),
                on_case=lambda cid: status.update(f"validating case {cid}"),
            )
    except DataLayoutError as exc:
        raise _usage_error(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            typer.echo(str(problem))
        summary = f"{report.cases} case(s), {report.files} file(s) checked: "
        err.print(summary + ("[green]no problems[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"))
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Folder to create (SynthRAD layout: <case>/mr|ct|mask|tumor.nii.gz).")],
    cases: Annotated[int, typer.Option(min=1, help="Number of cases.")] = 4,
    seed: Annotated[int, typer.Option(help="Dataset seed; the same seed gives the same cases.")] = 0,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Voxels X Y Z.")] = (96, 112, 48),
    spacing: Annotated[tuple[float, float, float], typer.Option(help="Voxel size X Y Z in mm.")] = (2.0, 2.0, 3.0),
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Generate the deterministic synthetic head phantom: MR, CT (HU), body mask and tumour mask per case."""
    from medp2p.data import PhantomSpec, write_phantom

    try:
        spec = PhantomSpec(shape=shape, spacing_mm=spacing)
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    try:
        with err.status(f"writing {cases} phantom case(s) to {out}..."):
            written = write_phantom(out, cases=cases, seed=seed, spec=spec, overwrite=overwrite)
    except FileExistsError as exc:
        raise _usage_error(str(exc)) from None
    err.print(f"wrote {len(written)} case(s) to [bold]{out}[/]")


@app.command()
def train(
    task: Annotated[Optional[str], typer.Option(help=f"What to learn: {', '.join(TASK_NAMES)} (default: the config's).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Training data: any layout `medp2p validate` reads (optional with --resume).")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: config, checkpoints, metrics, previews.")] = Path("runs/run"),
    val_data: Annotated[Optional[Path], typer.Option(help="Validation data (else the datalist's 'validation' section, else data.val_cases).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML config (configs/mri2ct.yaml...); defaults when absent.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: --set train.lr=1e-4 (repeatable).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after this global step (default train.steps, the schedule length).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of weights, sampling and augmentation (train.seed).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue OUT/last.pt exactly where it stopped, with the run's own config.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a run already in OUT.")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda (train.device).")] = None,
) -> None:
    """Train pix2pix for a task: slices from volumes, validation on held-out cases, exact resume.

    Exit 0 when the run finished, 1 when it failed (bad input file, non-finite loss), 2 on usage errors (unknown config key, existing run without --resume/--overwrite).
    """
    from medp2p.config import ConfigError, load_config
    from medp2p.data import DataLayoutError
    from medp2p.io import VolumeReadError
    from medp2p.train import NonFiniteLossError, RunExistsError
    from medp2p.train import train as run_training

    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise _usage_error(f"--device must be auto, cpu or cuda, got {device!r}")
    cfg = None
    if resume:
        if config is not None or set_ or task is not None or seed is not None:
            raise _usage_error("--resume continues with the run's own config; drop --config, --set, --task and --seed")
    else:
        if data is None:
            raise _usage_error("--data is required (unless --resume)")
        overrides = list(set_ or []) + ([f"train.seed={seed}"] if seed is not None else [])
        try:
            cfg = load_config(task, config, overrides)
        except (ConfigError, KeyError) as exc:
            raise _usage_error(str(exc).strip("'\"")) from None
    try:
        result = run_training(cfg, data, out, val_data, stop_step=steps, resume=resume, overwrite=overwrite, device=device)
    except (RunExistsError, DataLayoutError, FileNotFoundError) as exc:
        raise _usage_error(str(exc)) from None
    except (NonFiniteLossError, VolumeReadError, ValueError, KeyError, RuntimeError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.val_metrics.items())
    err.print(f"trained to step {result.step}; run in [bold]{escape(str(result.run_dir))}[/]" + (f"; validation: {escape(summary)}" if summary else ""), soft_wrap=True)
    if result.best:
        err.print(f"best {result.best['metric']} {result.best['value']:.4g} at step {result.best['step']} -> best.pt", soft_wrap=True)


@app.command()
def predict(
    model: Annotated[Path, typer.Option("--model", help="A run folder (uses best.pt, else last.pt) or a checkpoint file.")],
    inputs: Annotated[list[Path], typer.Option("--input", "-i", help="A volume file, a DICOM series folder, or a dataset (repeatable).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one <case>/ folder per case.")],
    fmt: Annotated[str, typer.Option("--format", help="nifti, dicom (mri2ct: CT series; seg: DICOM SEG) or both.")] = "nifti",
    num_parts: Annotated[int, typer.Option(min=1, help="Split the cases into this many parts...")] = 1,
    part_id: Annotated[int, typer.Option(min=0, help="...and predict this one (0-based).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs (refused otherwise).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[
        Optional[int], typer.Option(min=1, help="Slices per forward pass [default: 16 of 256x256; fewer, larger slices: 4 of 512x512].")
    ] = None,
    compile: Annotated[bool, typer.Option(help="Compile the generator with frozen weights first (a minute or more; pays over many volumes).")] = False,
    tta: Annotated[bool, typer.Option(help="Also predict each slice mirrored left-right and average the two (twice the time).")] = False,
) -> None:
    """Predict whole volumes with a trained model; outputs sit on each input's own grid.

    Exit 0 when every case was written, 1 when a case failed (listed in OUT/failures.csv; the others go on), 2 on usage errors.
    """
    from medp2p.checkpoint import CheckpointError
    from medp2p.data import DataLayoutError
    from medp2p.infer import FORMATS, predict_cases

    if fmt not in FORMATS:
        raise _usage_error(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if part_id >= num_parts:
        raise _usage_error(f"--part-id must be below --num-parts ({num_parts}), got {part_id}")
    try:
        with err.status("predicting...") as status:
            report = predict_cases(
                model, inputs, out, fmt, num_parts, part_id, overwrite, device, batch_size,
                on_case=lambda cid: status.update(f"predicting {escape(cid)}"), compile=compile, tta=tta,
            )
    except (CheckpointError, DataLayoutError, ValueError, RuntimeError) as exc:
        raise _usage_error(str(exc)) from None
    for case, paths in report.written.items():
        typer.echo(f"{case}: " + ", ".join(str(p) for p in paths))
    for failure in report.failures:
        err.print(f"[bold red]failed:[/] {escape(failure['case'])}: {escape(failure['error'])}", highlight=False, soft_wrap=True)
    done = f"{len(report.written)} case(s) written to {out}"
    if num_parts > 1:
        done += f" (part {part_id} of {num_parts}; {report.total_cases} case(s) in all)"
    err.print(escape(done), soft_wrap=True)
    if report.failures:
        err.print(f"{len(report.failures)} case(s) failed; see {escape(str(report.failures_csv))}", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def evaluate(
    task: Annotated[str, typer.Option(help=f"{', '.join(TASK_NAMES)}.")],
    pred: Annotated[Path, typer.Option(help="The prediction folder written by `medp2p predict`.")],
    ref: Annotated[Path, typer.Option(help="Reference data: any layout `medp2p validate` reads.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder: metrics.csv, summary.json, one PNG per case.")],
    target_key: Annotated[Optional[str], typer.Option(help="Reference image key (default the task's: ct, tumor, mr).")] = None,
    seed: Annotated[int, typer.Option(help="inpaint: seed of the generated regions (inpaint.eval_seed).")] = 1234,
    montages: Annotated[bool, typer.Option(help="Write one montage PNG per case.")] = True,
    slice_range: Annotated[
        Optional[tuple[float, float]],
        typer.Option(help="Score only this fraction [START, END) of the slices along --axis, as data.slice_range trains on them (slab splits)."),
    ] = None,
    axis: Annotated[str, typer.Option(help="Slicing axis of --slice-range: axial, coronal, sagittal.")] = "axial",
) -> None:
    """Score predictions against references with the challenges' metric definitions.

    Exit 0 when every reference case was scored, 1 when a case was missing or failed, 2 on usage errors.
    """
    from medp2p.data import DataLayoutError
    from medp2p.data.geometry import SLICE_AXES, check_slice_range
    from medp2p.eval import evaluate as run_evaluation
    from medp2p.tasks import TASKS

    if task not in TASKS:
        raise _usage_error(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    if axis not in SLICE_AXES:
        raise _usage_error(f"unknown --axis {axis!r}; choose from {sorted(SLICE_AXES)}")
    if slice_range is not None:
        try:
            check_slice_range(slice_range)
        except ValueError as exc:
            raise _usage_error(f"--slice-range START END: {exc}") from None
    slab = None if slice_range is None else (axis, (float(slice_range[0]), float(slice_range[1])))
    try:
        with err.status("evaluating...") as status:
            report = run_evaluation(
                task, pred, ref, out, target_key, seed, montages, on_case=lambda c: status.update(f"evaluating {escape(c)}"), slab=slab
            )
    except DataLayoutError as exc:
        raise _usage_error(str(exc)) from None
    from rich.table import Table

    table = Table(title=f"{task}: {report.summary['cases']} case(s)")
    for col in ("metric", "mean", "std", "median"):
        table.add_column(col, justify="right")
    for name, stats in report.summary["metrics"].items():
        table.add_row(name, f"{stats['mean']:.4g}", f"{stats['std']:.3g}", f"{stats['median']:.4g}")
    Console().print(table)
    err.print(f"report in [bold]{escape(str(out))}[/] (metrics.csv, summary.json)", soft_wrap=True)
    for cid in report.missing:
        err.print(f"[yellow]missing:[/] no prediction for {escape(cid)}", soft_wrap=True)
    for failure in report.failures:
        err.print(f"[bold red]failed:[/] {escape(failure['case'])}: {escape(failure['error'])}", soft_wrap=True)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo writes.")] = Path("demo_out"),
    minutes: Annotated[float, typer.Option(min=0.05, help="Training time budget (train.minutes): the schedule is fitted to it after a few timed steps.")] = 4.0,
    quick: Annotated[bool, typer.Option(help="A tiny phantom and network: seconds, for smoke tests.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT even if it is not a previous demo's.")] = False,
) -> None:
    """The whole mission on the built-in phantom: generate, train MRI->CT, predict NIfTI + DICOM, evaluate against a lookup baseline."""
    from rich.table import Table

    from medp2p.demo import lookup_vs_model_rows, run_demo

    try:
        result = run_demo(out, minutes, quick, overwrite, say=lambda m: err.print(f"[bold cyan]{escape(m)}[/]", soft_wrap=True))
    except FileExistsError as exc:
        raise _usage_error(str(exc)) from None
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
