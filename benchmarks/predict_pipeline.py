"""Pipelined ``medp2p predict`` against one case after another, measured in one run (docs/results.md).

24 phantom volumes of 256x256x64 (6 generated, the rest hard links under their own paths):

1. a tiny generator (``configs/tiny.yaml``: its forward is nearly free, standing in for a fast
   GPU): ``predict_cases`` one case after another against pipelined, alternating, ``--rounds``
   times (volumes/s over all volumes and at steady state), and the peak RSS of ``medp2p predict
   --no-pipeline`` against ``medp2p predict``, each in its own process;
2. the shipped mri2ct generator (``configs/mri2ct.yaml``, one training step): in one process,
   the bare generator over the same slices (``run_slices`` on prepared stacks) against
   end-to-end pipelined ``predict_cases`` (read, prepare, generator, decode, write).

    python benchmarks/predict_pipeline.py [--rounds 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import _machine, _mb, make_cases, watch  # noqa: E402

from medp2p.data.phantom import PhantomSpec  # noqa: E402

SPEC = PhantomSpec((256, 256, 64), (1.0, 1.0, 2.5))
VOLUMES = 24


def _train(work: Path, name: str, config: str, datalist: Path, sets: list[str]) -> Path:
    run = work / name
    if not (run / "last.pt").is_file():
        cmd = [sys.executable, "-m", "medp2p.cli", "train", "--task", "mri2ct", "--data", str(datalist), "--out", str(run)]
        cmd += ["--config", str(ROOT / "configs" / config), "--steps", "1", "--overwrite", "--cache-dir", str(work / "cache")]
        for s in sets:
            cmd += ["--set", s]
        watch(cmd)
    return run


def tiny_serial_vs_pipelined(work: Path, datalist: Path, rounds: int) -> dict[str, Any]:
    """Volumes/s of ``predict_cases`` with and without the pipeline (in this process, alternating), and each one's peak RSS.

    The rates are over all 24 volumes and, at steady state, from the 4th written volume to the
    last; the model is loaded once, outside the timing. Peak RSS is that of ``medp2p predict``
    (``--pipeline`` / ``--no-pipeline``) in its own process.
    """
    from medp2p.infer import load_model, predict_cases

    run = _train(work, "tiny", "tiny.yaml", datalist, ["train.val_every=100000", "train.preview_count=0"])
    model = load_model(run, "cpu")
    rates: dict[str, list[tuple[float, float]]] = {"serial": [], "pipelined": []}
    for _ in range(rounds):
        for mode in ("serial", "pipelined"):
            stamps: list[float] = []
            start = time.perf_counter()
            report = predict_cases(
                model, [datalist], work / f"in_{mode}", overwrite=True, pipelined=mode == "pipelined",
                on_written=lambda case, n, stamps=stamps: stamps.append(time.perf_counter()),
            )  # fmt: skip
            total = time.perf_counter() - start
            if len(report.written) != VOLUMES:
                raise RuntimeError(f"{mode}: wrote {len(report.written)} of {VOLUMES}: {report.failures}")
            rates[mode].append((VOLUMES / total, (VOLUMES - 4) / (stamps[-1] - stamps[3])))
    peaks = {}
    for mode in ("serial", "pipelined"):
        cmd = [sys.executable, "-m", "medp2p.cli", "predict", "--model", str(run), "-i", str(datalist), "-o", str(work / mode)]
        seen = watch([*cmd, "--overwrite", "--device", "cpu", "--no-pipeline" if mode == "serial" else "--pipeline"])
        peaks[mode] = seen["peaks"][seen["pid"]][1]
    best = {m: max(r for r, _ in v) for m, v in rates.items()}
    steady = {m: max(r for _, r in v) for m, v in rates.items()}
    return {
        "volumes_per_s_all": {m: [round(r, 2) for r, _ in v] for m, v in rates.items()},
        "volumes_per_s_steady": {m: [round(r, 2) for _, r in v] for m, v in rates.items()},
        "speedup_all_best": round(best["pipelined"] / best["serial"], 2),
        "speedup_steady_best": round(steady["pipelined"] / steady["serial"], 2),
        "peak_rss_mb": {m: _mb(p) for m, p in peaks.items()},
        "rss_ratio": round(peaks["pipelined"] / peaks["serial"], 2),
    }


def shipped_end_to_end(work: Path, datalist: Path) -> dict[str, Any]:
    """End-to-end pipelined predict against the bare generator over the same slices, shipped mri2ct model."""
    import torch

    from medp2p.infer import load_model, predict_cases
    from medp2p.infer.batch import prepare_case
    from medp2p.infer.volume import run_slices

    run = _train(work, "shipped", "mri2ct.yaml", datalist, ["train.val_every=100000", "train.preview_count=0", "train.batch_size=1"])
    model = load_model(run, "cpu")
    cases = json.loads(datalist.read_text())["training"]
    prepared = [prepare_case(model, {"id": c["id"], "mr": c["mr"]}, work / "unused") for c in cases]
    run_slices(model.generator, prepared[0].inp.stack[:, :8], None, model.prep, model.options)  # warm-up
    start = time.perf_counter()
    for p in prepared:
        run_slices(model.generator, p.inp.stack, p.inp.extra, model.prep, model.options)
    bare = time.perf_counter() - start
    slices = sum(p.inp.stack.shape[1] for p in prepared)
    del prepared
    inputs = [work / "mr_only.json"]
    inputs[0].write_text(json.dumps({"training": [{"id": c["id"], "mr": c["mr"]} for c in cases]}))
    start = time.perf_counter()
    report = predict_cases(model, inputs, work / "shipped_out", overwrite=True)
    total = time.perf_counter() - start
    if len(report.written) != VOLUMES:
        raise RuntimeError(f"predict wrote {len(report.written)} of {VOLUMES} volumes: {report.failures}")
    return {
        "threads": torch.get_num_threads(),
        "slices": slices,
        "bare_generator_slices_per_s": round(slices / bare, 2),
        "end_to_end_slices_per_s": round(slices / total, 2),
        "end_to_end_over_bare": round(bare / total, 3),
    }


def main() -> None:
    """Build the data, run both parts, print one JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--only", choices=("tiny", "shipped"), default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        datalist = make_cases(work / "data", VOLUMES, SPEC)
        result: dict[str, Any] = {"machine": _machine(), "volumes": VOLUMES, "shape": list(SPEC.shape)}
        if args.only in (None, "tiny"):
            result["tiny_generator"] = tiny_serial_vs_pipelined(work, datalist, args.rounds)
            print(json.dumps({"tiny_generator": result["tiny_generator"]}), flush=True)
        if args.only in (None, "shipped"):
            result["shipped_generator"] = shipped_end_to_end(work, datalist)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
