"""Shared fixtures: tiny volumes built in tmp_path, the phantom, and the real-data folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from medp2p.data import PhantomSpec, write_phantom
from medp2p.io import read_volume, write_nifti

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDP2P_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
#: The grid tests use: tiny, anisotropic, so a transposed axis cannot hide.
TINY = PhantomSpec(shape=(32, 28, 8), spacing_mm=(6.0, 7.0, 20.0))


def shared(*parts: str) -> Path:
    """A path under the real-data folder; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (set MEDP2P_SHARED_DATA)")
    return path


def benchmark_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny phantom cases in the SynthRAD layout (read-only by convention)."""
    out = tmp_path_factory.mktemp("phantom") / "data"
    write_phantom(out, cases=3, seed=7, spec=TINY)
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_runs(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-step tiny run per task (``configs/tiny.yaml``), for prediction and evaluation tests."""
    from medp2p.config import load_config
    from medp2p.train import train

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for task in ("mri2ct", "seg", "inpaint"):
        cfg = load_config(task, ROOT / "configs" / "tiny.yaml", ["data.val_cases=1"])
        runs[task] = train(cfg, tiny_phantom, root / task, stop_step=2, progress=False).run_dir
    return runs


@pytest.fixture(scope="session")
def contrasts(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mr2mr data: the phantom's MR as the source and an inverted, rescaled contrast of it as the target (a T2 to its T1)."""
    root = tmp_path_factory.mktemp("mr2mr")
    cases = []
    for cid in ("case_000", "case_001", "case_002"):
        mr = read_volume(tiny_phantom / cid / "mr.nii.gz")
        body = read_volume(tiny_phantom / cid / "mask.nii.gz").array > 0
        target = np.where(body, 3000.0 - 2.5 * mr.array, 0.0).astype(np.float32)
        write_nifti(mr.with_array(target), root / cid / "t2.nii.gz")
        cases.append(
            {
                "id": cid,
                "mr": str(tiny_phantom / cid / "mr.nii.gz"),
                "target": str(root / cid / "t2.nii.gz"),
                "mask": str(tiny_phantom / cid / "mask.nii.gz"),
            }
        )
    (root / "list.json").write_text(json.dumps({"training": cases[:2], "validation": cases[2:]}))
    return root


def torchrun(*args: str, cwd: Path, entry: str | Path | None = None) -> subprocess.CompletedProcess:
    """``medp2p train ARGS`` in 2 CPU processes under torchrun; ``entry``: a script to launch instead of ``-m medp2p.cli``."""
    target = [str(entry)] if entry is not None else ["-m", "medp2p.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
