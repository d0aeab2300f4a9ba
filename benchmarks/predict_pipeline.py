"""Pipelined ``medp2p predict`` against one case after another, measured in one run (docs/results.md).

24 phantom volumes of 256x256x64 (6 generated, the rest hard links under their own paths):

1. two small generators standing in for a fast GPU: ``configs/tiny.yaml`` (a 4-level 8-channel
   U-Net: a quarter of a case's time one case after another, here) and a 2-level 1-channel
   U-Net whose forward is nearly free: ``predict_cases`` one case after another against
   pipelined with 1 and 2 workers, alternating, ``--rounds`` times (volumes/s over all volumes
   and at steady state), and the peak RSS of ``medp2p predict --no-pipeline`` against
   ``--workers 2``, each in its own process;
2. the shipped mri2ct generator (``configs/mri2ct.yaml``, one training step): in one process,
   the bare generator over the same slices (``run_slices`` on prepared stacks) against
   end-to-end ``predict_cases`` with its defaults (read, prepare, generator, decode, write; on the
   CPU pipelined or one case after another as the first case's times choose, recorded per round);
3. ``issue_base``: the issue's own baseline, "the serial rate of today's code": ``predict_cases``
   of the code on main when issue 22 was filed (:data:`ISSUE_BASE`, unpacked with ``git archive``;
   its own near-free checkpoint) against this tree's pipelined ``predict_cases`` (default
   workers), each in a process of its own with the model loaded outside the timing, alternating.
   Needs the git history (a clone, not an archive).

    python benchmarks/predict_pipeline.py [--rounds 3] [--work DIR] [--only tiny|near_free|shipped|issue_base]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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


def _train(work: Path, name: str, config: str, datalist: Path, sets: list[str], tree: Path = ROOT) -> Path:
    """One training step of ``config`` (``tree``'s medp2p and configs): a checkpoint to predict with."""
    run = work / name
    if not (run / "last.pt").is_file():
        cmd = [sys.executable, "-m", "medp2p.cli", "train", "--task", "mri2ct", "--data", str(datalist), "--out", str(run)]
        cmd += ["--config", str(tree / "configs" / config), "--steps", "1", "--overwrite"]
        cmd += ["--cache-dir", str(work / "cache")] if tree == ROOT else []  # the issue's code had no --cache-dir
        for s in sets:
            cmd += ["--set", s]
        watch(cmd, env={"PYTHONPATH": str(tree)}, cwd=tree)
    return run


#: What each run of part 1 compares: one case after another, and the pipeline with 1 and 2 workers.
MODES = {"serial": (False, 1), "pipelined_w1": (True, 1), "pipelined_w2": (True, 2)}
#: Part 1's generators: configs/tiny.yaml (a 4-level 8-channel U-Net: a quarter of a case's time
#: one case after another, on 2 cores), and a 2-level 1-channel U-Net whose forward is nearly free.
GENERATORS = {
    "tiny": ["train.val_every=100000", "train.preview_count=0"],
    "near_free": ["train.val_every=100000", "train.preview_count=0", "model.depth=2", "model.base_channels=1"],
}


def serial_vs_pipelined(work: Path, datalist: Path, rounds: int, name: str) -> dict[str, Any]:
    """Volumes/s of ``predict_cases`` one case after another and pipelined (1 and 2 workers), alternating, and peak RSS.

    The rates are over all 24 volumes and, at steady state, from the 4th written volume to the
    last; the model is loaded once, outside the timing. Peak RSS is that of ``medp2p predict``
    (``--no-pipeline`` / ``--workers 2``) in its own process.
    """
    from medp2p.infer import load_model, predict_cases

    run = _train(work, name, "tiny.yaml", datalist, GENERATORS[name])
    model = load_model(run, "cpu")
    rates: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode, (pipelined, workers) in MODES.items():
            stamps: list[float] = []
            start = time.perf_counter()
            report = predict_cases(
                model, [datalist], work / f"in_{mode}", overwrite=True, pipelined=pipelined, workers=workers,
                on_written=lambda case, n, stamps=stamps: stamps.append(time.perf_counter()),
            )  # fmt: skip
            total = time.perf_counter() - start
            if len(report.written) != VOLUMES:
                raise RuntimeError(f"{mode}: wrote {len(report.written)} of {VOLUMES}: {report.failures}")
            rates[mode].append((VOLUMES / total, (VOLUMES - 4) / (stamps[-1] - stamps[3])))
    peaks = {}
    for mode, flag in (("serial", "--no-pipeline"), ("pipelined_w2", "--workers=2")):
        cmd = [sys.executable, "-m", "medp2p.cli", "predict", "--model", str(run), "-i", str(datalist), "-o", str(work / mode)]
        seen = watch([*cmd, "--overwrite", "--device", "cpu", flag])
        peaks[mode] = seen["peaks"][seen["pid"]][1]
    best = {m: max(r for r, _ in v) for m, v in rates.items()}
    steady = {m: max(r for _, r in v) for m, v in rates.items()}
    return {
        "volumes_per_s_all": {m: [round(r, 2) for r, _ in v] for m, v in rates.items()},
        "volumes_per_s_steady": {m: [round(r, 2) for _, r in v] for m, v in rates.items()},
        "speedup_all_best": {m: round(best[m] / best["serial"], 2) for m in MODES if m != "serial"},
        "speedup_steady_best": {m: round(steady[m] / steady["serial"], 2) for m in MODES if m != "serial"},
        "peak_rss_mb": {m: _mb(p) for m, p in peaks.items()},
        "rss_ratio": round(peaks["pipelined_w2"] / peaks["serial"], 2),
    }


def shipped_end_to_end(work: Path, datalist: Path, rounds: int) -> dict[str, Any]:
    """End-to-end predict against the bare generator over the same slices, shipped mri2ct model, alternating.

    Each round times the bare generator over every prepared stack (``run_slices``) and
    ``predict_cases`` over the same volumes from their files (its defaults), bare first in
    even rounds and end to end first in odd ones; the figures are the best end-to-end rate over
    the best bare rate and the median of the rounds' paired ratios.
    """
    import torch

    from medp2p.infer import load_model, predict_cases
    from medp2p.infer.batch import prepare_case
    from medp2p.infer.volume import run_slices

    run = _train(work, "shipped", "mri2ct.yaml", datalist, ["train.val_every=100000", "train.preview_count=0", "train.batch_size=1"])
    model = load_model(run, "cpu")
    cases = json.loads(datalist.read_text())["training"]
    prepared = [prepare_case(model, {"id": c["id"], "mr": c["mr"]}, work / "unused") for c in cases]
    slices = sum(p.inp.stack.shape[1] for p in prepared)
    run_slices(model.generator, prepared[0].inp.stack[:, :8], None, model.prep, model.options)  # warm-up
    inputs = [work / "mr_only.json"]
    inputs[0].write_text(json.dumps({"training": [{"id": c["id"], "mr": c["mr"]} for c in cases]}))

    def time_bare() -> None:
        start = time.perf_counter()
        for p in prepared:
            run_slices(model.generator, p.inp.stack, p.inp.extra, model.prep, model.options)
        bare.append(slices / (time.perf_counter() - start))

    def time_end_to_end() -> None:
        start = time.perf_counter()
        report = predict_cases(model, inputs, work / "shipped_out", overwrite=True)
        end_to_end.append(slices / (time.perf_counter() - start))
        chosen.append(report.pipeline)
        if len(report.written) != VOLUMES:
            raise RuntimeError(f"predict wrote {len(report.written)} of {VOLUMES} volumes: {report.failures}")

    bare: list[float] = []
    end_to_end: list[float] = []
    chosen: list[dict[str, Any]] = []  # predict's own choice on the CPU (pipelined=None), per round
    for i in range(rounds):  # the order swaps every round, so a drift in the machine's speed cancels in pairs
        for timed in (time_bare, time_end_to_end) if i % 2 == 0 else (time_end_to_end, time_bare):
            timed()
    per_round = [e / b for e, b in zip(end_to_end, bare, strict=True)]
    return {
        "threads": torch.get_num_threads(),
        "slices": slices,
        "bare_generator_slices_per_s": [round(r, 2) for r in bare],
        "end_to_end_slices_per_s": [round(r, 2) for r in end_to_end],
        "end_to_end_over_bare_best": round(max(end_to_end) / max(bare), 3),
        "end_to_end_over_bare_per_round": [round(r, 3) for r in per_round],
        "end_to_end_over_bare_median_of_rounds": round(statistics.median(per_round), 3),
        "end_to_end_pipeline": chosen,
    }


#: main when issue 22 ("Inference and evaluation over thousands of volumes") was filed: the
#: parent of its first commit, 3c7bf25 (pipelined predict). Its predict runs one case after another.
ISSUE_BASE = "708cb6d"

#: Run in a process of its own: load a model, time ``predict_cases`` over a datalist, print one JSON line.
_TIMED_PREDICT = """
import json, sys, time
from medp2p.infer import load_model, predict_cases
model = load_model(sys.argv[1], "cpu")
start = time.perf_counter()
report = predict_cases(model, [sys.argv[2]], sys.argv[3], overwrite=True)
seconds = time.perf_counter() - start
print(json.dumps({"written": len(report.written), "seconds": seconds}))
"""


def _timed_predict(tree: Path, run: Path, datalist: Path, out: Path) -> float:
    """Volumes/s of ``predict_cases`` (``tree``'s medp2p, its defaults) in a fresh process, the model loaded outside the timing."""
    seen = watch([sys.executable, "-c", _TIMED_PREDICT, str(run), str(datalist), str(out)], env={"PYTHONPATH": str(tree)}, cwd=tree)
    result = json.loads(seen["output"].strip().splitlines()[-1])
    if result["written"] != VOLUMES:
        raise RuntimeError(f"{tree}: predict wrote {result['written']} of {VOLUMES} volumes")
    return float(VOLUMES / result["seconds"])


def against_issue_base(work: Path, datalist: Path, rounds: int) -> dict[str, Any]:
    """This tree's pipelined predict against the serial predict of :data:`ISSUE_BASE`, near-free generators, alternating."""
    old = work / f"issue_base_{ISSUE_BASE}"
    if not (old / "medp2p").is_dir():
        old.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ISSUE_BASE], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    sets = GENERATORS["near_free"]
    runs = {"issue_base_serial": (old, _train(work, "near_free_issue_base", "tiny.yaml", datalist, sets, tree=old))}
    runs["pipelined"] = (ROOT, _train(work, "near_free", "tiny.yaml", datalist, sets))
    rates: dict[str, list[float]] = {mode: [] for mode in runs}
    for _ in range(rounds):
        for mode, (tree, run) in runs.items():
            rates[mode].append(_timed_predict(tree, run, datalist, work / f"out_{mode}"))
    return {
        "issue_base": ISSUE_BASE,
        "volumes_per_s_all": {m: [round(r, 2) for r in v] for m, v in rates.items()},
        "speedup_all_best": round(max(rates["pipelined"]) / max(rates["issue_base_serial"]), 2),
    }


def main() -> None:
    """Build the data, run both parts, print one JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--only", choices=(*GENERATORS, "shipped", "issue_base"), default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        datalist = make_cases(work / "data", VOLUMES, SPEC)
        result: dict[str, Any] = {"machine": _machine(), "volumes": VOLUMES, "shape": list(SPEC.shape)}
        for name in GENERATORS:
            if args.only in (None, name):
                result[f"{name}_generator"] = serial_vs_pipelined(work, datalist, args.rounds, name)
                print(json.dumps({f"{name}_generator": result[f"{name}_generator"]}), flush=True)
        if args.only in (None, "issue_base"):
            result["issue_base"] = against_issue_base(work, datalist, args.rounds)
            print(json.dumps({"issue_base": result["issue_base"]}), flush=True)
        if args.only in (None, "shipped"):
            result["shipped_generator"] = shipped_end_to_end(work, datalist, args.rounds)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
