"""``REPORT/index.html``: self-contained, offline, rendered by headless Chromium with its case ids and values."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medp2p.cli import app
from medp2p.eval.html import render_report

runner = CliRunner()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium (Debian package chromium) is not installed; .ci/run installs it")


def _run_chromium(*args: str) -> str:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def report(tiny_runs: dict, tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("html")
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(root / "pred")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["evaluate", "--task", "mri2ct", "--pred", str(root / "pred"), "--ref", str(tiny_phantom), "-o", str(root / "r")]
    )
    assert result.exit_code == 0, result.output
    return root / "r"


def _rows(report: Path) -> list[dict[str, str]]:
    with (report / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_the_page_is_self_contained_and_offline(report: Path) -> None:
    page = (report / "index.html").read_text()
    summary = json.loads((report / "summary.json").read_text())
    assert "synthrad2023" in page and "SynthRAD2023/metrics" in page  # the definition and its source
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from elsewhere
    images = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(images) == sorted(summary["montages"]) and all((report / i).is_file() for i in images)
    for row in _rows(report):
        assert f'id="case-{row["case"]}"' in page


def test_chromium_renders_the_cases_values_and_sorts_them(report: Path, tmp_path: Path) -> None:
    url = (report / "index.html").as_uri()
    rows = _rows(report)
    dom = _run_chromium("--virtual-time-budget=3000", "--dump-dom", url + "#sort=-mae")
    for row in rows:
        assert row["case"] in dom
        assert f"{float(row['mae']):.4g}" in dom and f"{float(row['ssim']):.4g}" in dom
    assert 'data-sorted="mae:desc"' in dom  # the inline script ran
    order = re.findall(r'<tr id="case-([^"]+)"', dom)
    by_mae = [r["case"] for r in sorted(rows, key=lambda r: -float(r["mae"]))]
    assert order == by_mae
    shot = tmp_path / "page.png"
    _run_chromium("--window-size=1280,1600", f"--screenshot={shot}", url)
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape == (1600, 1280)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # text, tables and a montage, not a blank page


def test_values_are_escaped_and_missing_or_failed_cases_listed() -> None:
    stats = {"mean": 0.5, "std": 0.0, "median": 0.5, "min": 0.5, "max": 0.5, "n": 1}
    summary = {
        "task": "seg", "cases": 1, "metric_definition": "dice-hd95", "definition_source": "medp2p",
        "definitions": "Dice <b>and</b> HD95", "metrics": {"dice": stats},
        "missing": ["c9"], "failures": [{"case": "c<2>", "error": "bad & broken"}],
    }  # fmt: skip
    page = render_report(summary, [{"case": "c1", "dice": 0.5, "hd95": float("nan")}], ["dice", "hd95"])
    assert "Dice &lt;b&gt;and&lt;/b&gt; HD95" in page and "c&lt;2&gt;: bad &amp; broken" in page and "c9: no prediction" in page
    assert 'data-value="nan">NaN<' in page
