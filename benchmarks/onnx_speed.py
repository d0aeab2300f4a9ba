"""onnxruntime's CPU speed next to torch's for an exported generator, measured in one run.

The generator of a shipped config (default ``configs/mri2ct_mridir.yaml``, random weights: speed
does not depend on them) is exported with ``medp2p.infer.onnx.export_generator`` and run on the
same batches of slices: torch float32 (as ``medp2p predict --precision fp32`` runs it: batch
norms folded, matmul transposed convolutions), torch with the run's ``auto`` precision (bf16
autocast where the CPU has bf16 units), and onnxruntime float32 (CPU provider, the same threads).
Printed: slices/s of each, the ratios, and the largest ONNX - torch float32 difference.

    python benchmarks/onnx_speed.py [--config configs/mri2ct_mridir.yaml] [--size 256] [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import _machine  # noqa: E402

from medp2p.config import load_config  # noqa: E402
from medp2p.device.precision import autocast, resolve_precision  # noqa: E402
from medp2p.infer.onnx import OnnxGenerator, export_generator  # noqa: E402
from medp2p.models.inference import optimize_for_inference  # noqa: E402
from medp2p.plan import build_plan  # noqa: E402


def _rate(fn, x: torch.Tensor, repeats: int) -> float:  # noqa: ANN001
    fn(x)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return repeats * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "mri2ct_mridir.yaml")
    ap.add_argument("--task", default="mri2ct")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    plan = build_plan(load_config(args.task, args.config))
    generator = plan.build_generator().eval()
    channels = int(plan.generator.kwargs["in_channels"])
    x = torch.rand(args.batch, channels, args.size, args.size) * 2 - 1
    with tempfile.TemporaryDirectory() as tmp:
        path = export_generator(generator, plan, {"config": plan.config.to_dict()}, Path(tmp) / "g.onnx")
        ort = OnnxGenerator(path)
        fast = optimize_for_inference(generator)
        dtype = resolve_precision(torch.device("cpu"), "auto")

        def torch_fp32(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return fast(batch)

        def torch_auto(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
                return fast(batch)

        rates = {
            "torch_fp32": _rate(torch_fp32, x, args.repeats),
            "torch_auto": _rate(torch_auto, x, args.repeats),
            "onnxruntime_fp32": _rate(ort, x, args.repeats),
        }
        diff = float(np.abs(ort(x).numpy() - torch_fp32(x).numpy()).max())
    print(
        json.dumps(
            {
                "machine": _machine(),
                "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
                "slices": [args.batch, channels, args.size, args.size],
                "threads": torch.get_num_threads(),
                "auto_precision": "bf16" if dtype == torch.bfloat16 else "fp32",
                "slices_per_s": {k: round(v, 2) for k, v in rates.items()},
                "onnxruntime_over_torch_fp32": round(rates["onnxruntime_fp32"] / rates["torch_fp32"], 3),
                "onnxruntime_over_torch_auto": round(rates["onnxruntime_fp32"] / rates["torch_auto"], 3),
                "max_abs_difference_fp32": diff,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
