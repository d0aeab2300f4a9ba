"""The ``medp2p`` command line: each command parses its arguments and calls one library function.

Heavy modules (torch, MONAI, nibabel...) are imported inside the commands, so ``medp2p --help``
stays fast. Exit codes: 0 success, 1 the command ran and found problems (bad data, a failed
case), 2 usage error (bad option, unrecognised data layout, refused overwrite). Every error a
user can cause is one line naming the file (or case and key) and the problem; a traceback only
with ``medp2p --debug`` or ``MEDP2P_DEBUG=1``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from medp2p import __version__

app = typer.Typer(
    name="medp2p",
    help="Medical image-to-image translation: MRI->CT synthesis, tumour masks and inpainting with pix2pix.",
    rich_markup_mode=None,  # plain help, like nnU-Net's and TotalSegmentator's
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DEBUG_ENV = "MEDP2P_DEBUG"
_state = {"debug": os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")}
F = TypeVar("F", bound=Callable[..., Any])


def _plain_arguments() -> None:
    """Positionals show by name (``DATA``), not as ``{data}`` and ``data <path>``.

    Typer renders a required argument in the usage line in braces and appends its Python type in
    the list; both read as noise next to argparse-style tools. Patched once, here, for this CLI
    (tests/test_cli.py checks the rendered help).
    """
    from typer.core import TyperArgument

    TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]
    TyperArgument._usage_display_name = lambda self: self.display_name_raw if self.required else f"[{self.display_name_raw}]"  # type: ignore[method-assign]


_plain_arguments()


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.addLevelName(logging.WARNING, "warning")
    logging.addLevelName(logging.ERROR, "error")
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)


def _fail(message: str, code: int) -> typer.Exit:
    # soft_wrap: a message naming a path must not be broken over lines.
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def _usage_error(message: str) -> typer.Exit:
    return _fail(message, 2)


def _exit_code(exc: BaseException) -> int:
    """2 for usage errors (unknown key, layout, refused overwrite, missing run), 1 for bad data and failures."""
    from medp2p.infer.checkpoint import CheckpointError
    from medp2p.config import ConfigError
    from medp2p.data import DataLayoutError

    return 2 if isinstance(exc, (ConfigError, DataLayoutError, CheckpointError, FileExistsError, FileNotFoundError)) else 1


def _one_line_errors(fn: F) -> F:
    """Run a command; an exception becomes one ``error:`` line and exit code 1 or 2 (traceback with --debug)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: outputs being written were removed; finished ones are kept")
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            from medp2p.data.case_reader import USER_ERRORS, error_text

            text = error_text(exc)
            if not isinstance(exc, USER_ERRORS):
                text += " (an internal error: `medp2p --debug ...` shows the traceback)"
            raise _fail(text, _exit_code(exc)) from None

    return run  # type: ignore[return-value]


def command(fn: F) -> F:
    """``@app.command()`` with one-line errors."""
    app.command()(_one_line_errors(fn))
    return fn


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medp2p {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help=f"Show tracebacks instead of one-line errors (also {DEBUG_ENV}=1).")] = False,
) -> None:
    """Medical image-to-image translation: MRI->CT synthesis, tumour masks and inpainting with pix2pix."""
    _state["debug"] = _state["debug"] or debug
    _setup_logging()


# Options shared by the commands that read volumes.
AffineFrom = Annotated[
    str | None,
    typer.Option(
        "--affine-from",
        metavar="qform|sform",
        help="NIfTI files whose qform and sform disagree (or whose sform is sheared): use this one (refused otherwise).",
    ),
]
SeriesUid = Annotated[
    str | None, typer.Option("--series-uid", metavar="UID", help="DICOM folders holding several series: read this SeriesInstanceUID.")
]


def _read_options(affine_from: str | None, series_uid: str | None) -> Any:
    from medp2p.data.checks import AFFINE_SOURCES, ReadOptions

    if affine_from is not None and affine_from not in AFFINE_SOURCES:
        raise _usage_error(f"--affine-from must be qform or sform, got {affine_from!r}")
    return ReadOptions(affine_from=affine_from, series_uid=series_uid)


@command
def validate(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA", help="Dataset: per-case folders, BraTS, nnU-Net raw folder, datalist .json or one DICOM series folder."
        ),
    ],
    task: Annotated[
        str | None, typer.Option(metavar="TASK", help="Check the keys this task reads, as `train` reads them (`medp2p tasks` lists the tasks).")
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
            options=_read_options(affine_from, series_uid),
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
        raise _usage_error(str(exc)) from None
    with err.status(f"writing {cases} phantom case(s) to {escape(str(out))}..."):
        written = write_phantom(out, cases=cases, seed=seed, spec=spec, overwrite=overwrite)
    err.print(f"wrote {len(written)} case(s) to [bold]{escape(str(out))}[/]")


#: Above this many hours for the default model on a CPU, `train` without --config says so.
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
    device: Annotated[str | None, typer.Option(metavar="DEVICE", help="auto, cpu or cuda (train.device).")] = None,
    affine_from: AffineFrom = None,
    series_uid: SeriesUid = None,
) -> None:
    """Train pix2pix for a task: slices from volumes, validation on held-out cases, exact resume.

    Exit 0 when the run finished, 1 when it failed (bad input file, non-finite loss), 2 on usage errors (unknown config key, existing run without --resume/--overwrite).
    """
    from medp2p.config import load_config
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
        read_options=_read_options(affine_from, series_uid) if (affine_from or series_uid) else None,
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


@command
def predict(
    model: Annotated[
        Path, typer.Option("--model", metavar="RUN_DIR", help="A run folder (uses best.pt, else last.pt) or a checkpoint file.")
    ],
    inputs: Annotated[
        list[Path], typer.Option("--input", "-i", metavar="INPUT", help="A volume file, a DICOM series folder, or a dataset (repeatable).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUT_DIR", help="Output folder: one <case>/ folder per case.")],
    fmt: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="nifti, dicom (mri2ct: CT series; seg: DICOM SEG) or both.")
    ] = "nifti",
    num_parts: Annotated[int, typer.Option(min=1, metavar="N", help="Split the cases into this many parts...")] = 1,
    part_id: Annotated[int, typer.Option(min=0, metavar="K", help="...and predict this one (0-based).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (refused otherwise).")] = False,
    device: Annotated[str, typer.Option(metavar="DEVICE", help="auto, cpu or cuda.")] = "auto",
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
) -> None:
    """Predict whole volumes with a trained model; outputs sit on each input's own grid.

    Exit 0 when every case was written, 1 when a case failed (listed in OUT_DIR/failures.csv; the others go on), 2 on usage errors.
    """
    from medp2p.infer import FORMATS, predict_cases

    if fmt not in FORMATS:
        raise _usage_error(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if part_id >= num_parts:
        raise _usage_error(f"--part-id must be below --num-parts ({num_parts}), got {part_id}")
    with err.status("predicting...") as status:
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
                on_case=lambda cid: status.update(f"predicting {escape(cid)}"),
                compile=compile,
                tta=tta,
                read_options=_read_options(affine_from, series_uid),
                force=force,
            )
        except (ValueError, RuntimeError) as exc:  # bad model, options or inputs: before any case ran
            raise _usage_error(str(exc)) from None
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
        raise typer.Exit(1)


@command
def evaluate(
    task: Annotated[str, typer.Option(metavar="TASK", help="The task the predictions are for (`medp2p tasks` lists them).")],
    pred: Annotated[Path, typer.Option(metavar="OUT_DIR", help="The prediction folder written by `medp2p predict`.")],
    ref: Annotated[Path, typer.Option(metavar="DATA", help="Reference data: any layout `medp2p validate` reads.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="REPORT_DIR", help="Report folder: metrics.csv, summary.json, one PNG per case.")
    ],
    target_key: Annotated[
        str | None, typer.Option(metavar="KEY", help="Reference image key (default the task's: ct, tumor, mr).")
    ] = None,
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
        raise _usage_error(f"unknown --axis {axis!r}; choose from {sorted(SLICE_AXES)}")
    if slice_range is not None:
        try:
            check_slice_range(slice_range)
        except ValueError as exc:
            raise _usage_error(f"--slice-range START END: {exc}") from None
    slab = None if slice_range is None else (axis, (float(slice_range[0]), float(slice_range[1])))
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
            read_options=_read_options(affine_from, series_uid),
        )
    from rich.table import Table

    table = Table(title=f"{task}: {report.summary['cases']} case(s)")
    for col in ("metric", "mean", "std", "median"):
        table.add_column(col, justify="right")
    for name, stats in report.summary["metrics"].items():
        table.add_row(name, f"{stats['mean']:.4g}", f"{stats['std']:.3g}", f"{stats['median']:.4g}")
    Console().print(table)
    err.print(f"report in [bold]{escape(str(out))}[/] (metrics.csv, summary.json)")
    for cid in report.missing:
        err.print(f"[yellow]missing:[/] no prediction for {escape(cid)}")
    for failure in report.failures:
        err.print(f"[bold red]failed:[/] {escape(failure['case'])}: {escape(failure['error'])}")
    raise typer.Exit(0 if report.ok else 1)


@command
def tasks() -> None:
    """List the tasks: what each reads and writes, and how it is scored."""
    from rich.table import Table

    from medp2p.tasks import TASKS

    table = Table(title="medp2p tasks")
    for col in ("task", "what", "sources", "target", "writes", "metrics"):
        table.add_column(col)
    for t in TASKS.values():
        writes = t.output_name + (f", {t.dicom.name}" if t.dicom is not None else "")
        table.add_row(t.name, t.description, ", ".join(t.source_keys), t.target_key, writes, ", ".join(d.name for d in t.metrics))
    Console().print(table)


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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
