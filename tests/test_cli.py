"""The CLI's top level: version, help, and every volume under the real-data folder reads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from medp2p import __version__
from medp2p.cli import app
from medp2p.io import VOLUME_SUFFIXES, full_suffix, read_volume
from tests.conftest import shared

runner = CliRunner()


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"medp2p {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("validate", "phantom"):
        assert command in result.stdout


def test_help_does_not_import_torch() -> None:
    code = "import sys; from medp2p.cli import app; assert 'torch' not in sys.modules and 'nibabel' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.realdata
def test_every_real_volume_reads() -> None:
    root = shared()
    files = sorted(p for p in root.rglob("*") if p.is_file() and full_suffix(p) in VOLUME_SUFFIXES)
    dicom_folders = [root / "totalseg_examples/example_ct_dicom", root / "mridir_phantom/dicom_ct_subset", root / "vs_seg_mr_dicom"]
    assert len(files) >= 25
    for path in files + [d for d in dicom_folders if d.exists()]:
        vol = read_volume(path)
        assert vol.array.dtype == np.float32 and vol.array.ndim == 3 and vol.array.size > 0, path
        assert np.isfinite(vol.affine).all() and abs(np.linalg.det(vol.affine[:3, :3])) > 0, path


@pytest.mark.realdata
def test_real_layouts_load() -> None:
    from medp2p.data import find_cases

    cases = find_cases(shared("brats2015_deepmedic"))
    assert len(cases) == 4 and {"flair_subtrmeandivstd", "otmulticlass"} <= set(cases[0])
