"""The review notebook on a tiny run of every task, run headless with papermill, and the pieces it draws with.

Each task: a 2-step tiny run, ``predict`` and ``evaluate`` through the CLI, then
``notebooks/review.ipynb`` with its papermill parameters; every cell ran, none failed, images and
the slice browser came out, and the metrics it printed are metrics.csv's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.config import load_config
from medp2p.eval.review import canonical_volumes, open_review, worst_first
from medp2p.tasks import MRI2CT, SEG, TASKS, Scored
from medp2p.train import train
from medp2p.viz.review import PLANES, ReviewSpec, ReviewVolumes, aspect, plane_views, slice_browser, strip_slices
from tests.conftest import ROOT

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "review.ipynb"
runner = CliRunner()


def _cli(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def reviewed(tiny_runs: dict, tiny_phantom: Path, contrasts: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per task: the prediction folder, its reference data and its report."""
    root = tmp_path_factory.mktemp("review")
    runs = dict(tiny_runs)
    cfg = load_config("mr2mr", ROOT / "configs" / "tiny.yaml", ["data.val_cases=1"])
    runs["mr2mr"] = train(cfg, contrasts / "list.json", root / "mr2mr_run", stop_step=2, progress=False).run_dir
    out = {}
    for task in TASKS:
        ref = contrasts / "list.json" if task == "mr2mr" else tiny_phantom
        pred, report = root / task / "pred", root / task / "report"
        _cli("predict", "--model", str(runs[task]), "-i", str(ref), "-o", str(pred))
        _cli("evaluate", "--task", task, "--pred", str(pred), "--ref", str(ref), "-o", str(report), "--no-montages")
        out[task] = {"PRED_DIR": pred, "REF_DIR": ref, "REPORT_DIR": report}
    return out


def _execute(tmp_path: Path, **parameters: str) -> nbformat.NotebookNode:
    import papermill

    out = tmp_path / "review_out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), parameters=parameters, cwd=str(NOTEBOOK.parent), kernel_name="python3", progress_bar=False,
        execution_timeout=300, start_timeout=120,  # a lost kernel reply fails the test instead of hanging the suite
    )  # fmt: skip
    return nbformat.read(out, as_version=4)


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_review_notebook_runs_headless_on_each_task(task: str, reviewed: dict, tmp_path: Path) -> None:
    paths = reviewed[task]
    nb = _execute(tmp_path, TASK=task, CASE="", **{k: str(v) for k, v in paths.items()})
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in code)  # papermill found the parameters cell
    assert all(c.execution_count is not None for c in code)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # metric bars, three planes, the strip, histograms
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)  # the slice browser
    text = "".join(o.get("text", "") for o in outputs)
    with (paths["REPORT_DIR"] / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:  # every value of the report, as metrics.csv has it
        assert row["case"] in text
        for name, value in row.items():
            if name != "case":
                assert f"{float(value):.6g}" in text, (name, value)
    assert "agrees with metrics.csv" in text and "WARNING" not in text
    summary = json.loads((paths["REPORT_DIR"] / "summary.json").read_text())
    assert f"task {task}:" in text and summary["metric_definition"] in text


def test_the_notebook_reviews_the_case_asked_for_and_warns_when_the_data_changed(reviewed: dict, tmp_path: Path) -> None:
    paths = {k: str(v) for k, v in reviewed["mri2ct"].items()}
    review = open_review(paths["PRED_DIR"], paths["REF_DIR"], paths["REPORT_DIR"])
    other = next(r["case"] for r in review.rows if r["case"] != review.case)
    nb = _execute(tmp_path, TASK="", CASE=other, **paths)
    text = "".join(o.get("text", "") for o in _outputs(nb))
    assert f"reviewing {other}:" in text
    report = tmp_path / "report"  # a report whose MAE no longer matches the data
    report.mkdir()
    (report / "summary.json").write_text((Path(paths["REPORT_DIR"]) / "summary.json").read_text())
    with (Path(paths["REPORT_DIR"]) / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["mae"] = "1.5"
    with (report / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stale = open_review(paths["PRED_DIR"], paths["REF_DIR"], report, case=rows[0]["case"])
    assert stale.agreement() == ["mae"] and stale.check_line().startswith("WARNING") and "mae report 1.5" in stale.check_line()


def test_open_review_refuses_another_task_and_an_unknown_case(reviewed: dict) -> None:
    paths = reviewed["seg"]
    with pytest.raises(ValueError, match="task 'seg', not 'mri2ct'"):
        open_review(paths["PRED_DIR"], paths["REF_DIR"], paths["REPORT_DIR"], task="mri2ct")
    with pytest.raises(ValueError, match="case 'nope' is not in the report"):
        open_review(paths["PRED_DIR"], paths["REF_DIR"], paths["REPORT_DIR"], case="nope")
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        open_review(paths["PRED_DIR"], paths["REF_DIR"], paths["PRED_DIR"])


def test_worst_first_follows_the_tasks_direction_and_puts_non_finite_values_first() -> None:
    rows = [
        {"case": "a", "mae": "50", "dice": "0.9"},
        {"case": "b", "mae": "80", "dice": "0.2"},
        {"case": "c", "mae": "nan", "dice": "0.5"},
    ]
    assert [r["case"] for r in worst_first(rows, MRI2CT, ("mae",))[1]] == ["c", "b", "a"]
    metric, ranked = worst_first(rows, SEG, ("dice",))
    assert metric == "dice" and [r["case"] for r in ranked] == ["b", "c", "a"]
    # a definition without the task's best metric ranks by its own first column
    assert (
        worst_first([{"case": "a", "lesion_dice": "0.3"}, {"case": "b", "lesion_dice": "0.1"}], SEG, ("lesion_dice",))[0] == "lesion_dice"
    )


def _asymmetric(shape: tuple[int, int, int]) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_volumes_are_shown_in_canonical_orientation_whatever_the_files_axes() -> None:
    ras = _asymmetric((6, 5, 4))
    spacing = (1.0, 2.0, 3.0)
    lps_affine = np.diag([-1.0, -2.0, 3.0, 1.0])
    lps = ras[::-1, ::-1, :]  # the same voxels stored left-to-right and anterior-to-posterior reversed
    swapped_affine = np.array([[0.0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    swapped = np.transpose(ras, (1, 0, 2))  # array axis 0 runs along A, axis 1 along R
    mask = ras > ras.mean()
    for array, affine, sp in (
        (ras, np.diag([1.0, 2.0, 3.0, 1.0]), spacing),
        (lps, lps_affine, spacing),
        (swapped, swapped_affine, (2.0, 1.0, 3.0)),
    ):
        m = np.transpose(mask, (1, 0, 2)) if array is swapped else (mask[::-1, ::-1, :] if array is lps else mask)
        vols = canonical_volumes(Scored(array, array, array, m, spacing_mm=sp, affine=affine))
        assert np.array_equal(vols.reference, ras) and np.array_equal(vols.mask, mask)
        assert vols.spacing_mm == spacing


def test_planes_are_drawn_at_the_voxels_true_aspect_with_anterior_and_superior_up() -> None:
    assert (
        aspect((0.5, 0.5, 3.0), "axial") == 1.0 and aspect((0.5, 0.5, 3.0), "coronal") == 6.0 and aspect((0.5, 1.0, 3.0), "sagittal") == 3.0
    )
    vol = _asymmetric((8, 6, 4))
    vols = ReviewVolumes(vol, vol, vol, vol > 20, spacing_mm=(0.5, 1.0, 3.0))
    fig = plane_views(vols, MRI2CT.panels, MRI2CT.review, at=(3, 2, 1))
    try:
        rows = np.asarray(fig.axes).reshape(3, len(MRI2CT.panels))
        for row, plane in zip(rows, PLANES, strict=True):
            axis, r, c = PLANES[plane]
            image = np.asarray(row[2].images[0].get_array())  # the reference panel
            expected = np.rot90(np.take(vol, (3, 2, 1)[axis], axis=axis))
            assert np.array_equal(image, expected) and image.shape == (vol.shape[r], vol.shape[c])
            assert row[2].get_aspect() == pytest.approx(vols.spacing_mm[r] / vols.spacing_mm[c])
        axial = np.asarray(rows[0][2].images[0].get_array())
        assert axial[0, 0] == vol[0, -1, 1]  # top-left: the patient's left, anterior
    finally:
        plt.close(fig)


def test_mask_reviews_draw_prediction_and_reference_contours_over_the_source() -> None:
    ref = np.zeros((12, 12, 5), np.float32)
    ref[3:8, 3:8, 1:4] = 1
    pred = np.roll(ref, 2, axis=0)
    vols = ReviewVolumes(np.random.default_rng(0).random(ref.shape).astype(np.float32), pred, ref, ref > 0, (1.0, 1.0, 2.0))
    fig = plane_views(vols, SEG.panels, SEG.review)
    try:
        contour_panel = np.asarray(fig.axes).reshape(3, len(SEG.panels) + 1)[0][-1]
        colours = {tuple(np.round(c.get_edgecolor()[0][:3], 2)) for c in contour_panel.collections if len(c.get_edgecolor())}
        assert {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)} <= colours  # red prediction, lime reference
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="histogram"):
        ReviewSpec("body", "violin")


def test_the_strip_spreads_its_slices_over_the_scored_mask() -> None:
    mask = np.zeros((4, 4, 30), bool)
    mask[..., 10:21] = True
    assert strip_slices(mask, 30, 5) == [10, 12, 15, 18, 20]
    assert strip_slices(None, 30, 3) == [0, 14, 29]
    assert strip_slices(mask, 30, 50) == list(range(10, 21))  # never more slices than the mask holds


def test_the_slice_browser_follows_the_plane_and_slider() -> None:
    pytest.importorskip("ipywidgets")
    vol = _asymmetric((8, 6, 4))
    vols = ReviewVolumes(vol, vol, vol, None, (1.0, 1.0, 2.0))
    browser = slice_browser(vols, MRI2CT.panels, MRI2CT.review)
    plane, slider, _ = browser.children
    assert (slider.max, slider.value) == (3, 2)
    plane.value = "sagittal"
    assert (slider.max, slider.value) == (7, 4)
    slider.value = 6  # redraws without error
    plt.close("all")
