"""The newcomer's path: `medp2p demo --quick` end to end, and the review notebook run headless on its output."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from typer.testing import CliRunner

from medp2p.cli import app

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "review.ipynb"


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    return out


def test_demo_writes_everything_and_says_where(demo_out: Path) -> None:
    for path in (
        "run/last.pt",
        "run/config.yaml",
        "report/metrics.csv",
        "report/summary.json",
        "report_baseline/summary.json",
        "demo.json",
    ):
        assert (demo_out / path).is_file(), path
    assert sorted(p.name for p in (demo_out / "pred").iterdir()) == ["case_000", "case_001", "predict.json"]
    assert list((demo_out / "pred" / "case_000" / "sct_dicom").glob("*.dcm"))
    assert list((demo_out / "report").glob("case_*.png"))
    info = json.loads((demo_out / "demo.json").read_text())
    assert info["steps"] == 30 and set(info["metrics"]["mae"]) == {"model", "lookup"}


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--quick"])
    assert result.exit_code == 2 and (tmp_path / "mine.txt").read_text() == "keep"


def test_notebook_outputs_are_stripped() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs_headless_on_the_demo_output(demo_out: Path, monkeypatch) -> None:
    from nbclient import NotebookClient

    monkeypatch.setenv("MEDP2P_DEMO", str(demo_out))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "case_0" in text and "mae" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # three-plane views, histograms, tissue MAE
