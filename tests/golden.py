"""A seeded tiny train -> predict -> evaluate of every task through the CLI, for before/after checks.

``python -m tests.golden record`` writes ``tests/data/golden_tiny.npz`` from the code as it is;
``tests/test_golden.py`` runs the same pipeline and compares. Everything runs in float32 on one
thread, so the figures depend only on the code and the CPU's kernels.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden_tiny.npz"
TASKS = ("mri2ct", "seg", "inpaint")
SETS = ["train.precision=fp32", "train.channels_last=false", "data.val_cases=1", "train.seed=3"]


def run_pipeline(root: Path) -> dict[str, np.ndarray]:
    """Run the pipeline under ``root``; returns named arrays (weights digest, predictions, metrics)."""
    import hashlib

    import torch
    from typer.testing import CliRunner

    from medp2p.cli import app
    from medp2p.io import read_volume

    def cli(*args: str) -> None:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, np.ndarray] = {}
        cli("phantom", str(root / "data"), "--cases", "3", "--seed", "5", "--shape", "32", "28", "8", "--spacing", "6", "7", "20")
        for task in TASKS:
            run = root / task / "run"
            sets = [x for s in SETS for x in ("--set", s)]
            cli(
                "train",
                "--task",
                task,
                "--config",
                str(ROOT / "configs" / "tiny.yaml"),
                "--data",
                str(root / "data"),
                "--out",
                str(run),
                "--steps",
                "3",
                *sets,
            )
            state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["generator"]
            h = hashlib.sha256()
            for name in sorted(state):
                h.update(name.encode() + state[name].contiguous().numpy().tobytes())
            out[f"{task}/weights_sha256"] = np.frombuffer(h.digest(), np.uint8)
            cli("predict", "--model", str(run), "-i", str(root / "data"), "-o", str(root / task / "pred"))
            cli(
                "evaluate",
                "--task",
                task,
                "--pred",
                str(root / task / "pred"),
                "--ref",
                str(root / "data"),
                "-o",
                str(root / task / "report"),
                "--metrics",  # the definitions the recording was made with (inpaint's default is now the 3D scorer)
                RECORDED_DEFINITIONS[task],
            )
            for case in sorted(p.name for p in (root / task / "pred").iterdir() if p.is_dir()):
                for f in sorted((root / task / "pred" / case).glob("*.nii.gz")):
                    out[f"{task}/{case}/{f.name}"] = read_volume(f).array
            summary = json.loads((root / task / "report" / "summary.json").read_text())
            names = sorted(summary["metrics"])
            out[f"{task}/metric_names"] = np.array(names)
            out[f"{task}/metric_means"] = np.array([summary["metrics"][n]["mean"] for n in names], np.float64)
        return out
    finally:
        torch.set_num_threads(threads)


#: The metric definition each task's recorded means were computed with.
RECORDED_DEFINITIONS = {"mri2ct": "synthrad2023", "seg": "dice-hd95", "inpaint": "brats-inpainting-2d", "mr2mr": "brasyn-brain"}


def cpu_kind() -> str:
    """torch, its CPU kernels and the bf16 units: CPUs alike in these give the same bits.

    The bf16 matrix units are named because torch's vector capability does not tell them apart:
    an AVX512_BF16 CPU and one with AMX both report AVX512, and their bf16 matmuls round apart.
    """
    import torch

    found = {"avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "amx_bf16": torch.cpu._is_amx_tile_supported()}
    units = " ".join(name for name, present in found.items() if present)
    return f"{torch.__version__} {torch.backends.cpu.get_cpu_capability()} {units}".strip()


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    with tempfile.TemporaryDirectory() as tmp:
        arrays = run_pipeline(Path(tmp))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN, cpu_kind=np.array(cpu_kind()), **arrays)
    print(f"wrote {GOLDEN} ({len(arrays)} arrays, {cpu_kind()})")
