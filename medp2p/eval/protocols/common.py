"""What every real-data protocol shares: options, the CLI runner, datalists, baselines scored alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medp2p.eval.evaluate import evaluate
from medp2p.io import write_volume
from medp2p.tasks import TASKS
from medp2p.types import Volume

#: The repository root of an editable install (the protocols use its shipped configs).
ROOT = Path(__file__).resolve().parents[3]


def shared_data() -> Path:
    """The real-data folder: ``$MEDP2P_SHARED_DATA``, default ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MEDP2P_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()


@dataclass(frozen=True)
class ProtocolOptions:
    """How a protocol runs.

    Args:
        work: where datalists, runs, predictions and reports go (never the repository).
        quick: the short version the ``realdata`` tests run (minutes).
        reuse: keep runs that finished (``run/train_s.txt``): predict and evaluate again only.
        sets: config overrides added to every training (``--set KEY=VALUE``), for experiments.
        predict_options: options added to every ``medp2p predict`` (``--tta``, ``--uncertainty``).
        configs: the folder of shipped configs.
        members: train this many models per split (seeds ``train.seed`` + 0, 1, ...) and predict
            with their ensemble; each member is also scored alone (``row["members"]``).
        dims: 3: train each protocol's 3D config (``configs/<name>_3d.yaml``: patches, sliding
            windows) instead of its 2D one; the quick versions swap their crop for a patch of it
            and 16 slices.
    """

    work: Path
    quick: bool = False
    reuse: bool = False
    sets: tuple[str, ...] = ()
    predict_options: tuple[str, ...] = ()
    configs: Path = ROOT / "configs"
    members: int = 1
    dims: int = 2

    def config(self, name: str, sets: list[str]) -> tuple[Path, list[str]]:
        """The shipped config a protocol trains (its ``_3d`` variant with ``dims`` 3) and its overrides."""
        if self.dims == 2:
            return self.configs / name, sets
        crop = [s for s in sets if s.startswith("data.image_size=")]
        rest = [s for s in sets if not s.startswith("data.image_size=")]
        patch = [f"data.patch_size=[{c.split('=', 1)[1].strip(' []')}, 16]" for c in crop]  # quick: the crop and 16 slices
        return self.configs / name.replace(".yaml", "_3d.yaml"), [*rest, *patch]


@dataclass
class Result:
    """One protocol's figures: per split, the model's and the baselines' summary metrics."""

    task: str
    splits: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """``{"task", "splits"}`` as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task": self.task, "splits": self.splits}, indent=2) + "\n")


def medp2p(*args: str, log: Path) -> float:
    """Run the public CLI (``python -m medp2p``); returns its wall time in seconds. Output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write("$ medp2p " + " ".join(args) + "\n")
        fh.flush()
        done = subprocess.run([sys.executable, "-m", "medp2p", *args], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"medp2p {args[0]} exited {done.returncode}; log {log}:\n{tail}")
    return time.perf_counter() - start


def write_datalist(path: Path, training: list[dict[str, Any]], test: list[dict[str, Any]] | None = None) -> Path:
    """A datalist JSON with a training (and test) section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"training": training, **({"test": test} if test else {})}, indent=2) + "\n")
    return path


def summary(report: Path) -> dict[str, float]:
    """The mean of each metric in a ``medp2p evaluate`` report folder."""
    data = json.loads((report / "summary.json").read_text())
    if data["failures"] or data["missing"]:
        raise RuntimeError(f"{report}: failed or missing cases: {data['failures'] or data['missing']}")
    return {k: v["mean"] for k, v in data["metrics"].items()}


def train_predict_evaluate(
    opts: ProtocolOptions, task: str, config: str, train_list: Path, test_list: Path, out: Path, sets: list[str], eval_args: list[str]
) -> dict[str, Any]:
    """``medp2p train`` (``opts.members`` times) -> ``predict`` -> ``evaluate``; returns the report's means and the wall times.

    With several members the prediction is their ensemble, and each member is also predicted and
    scored alone (``row["members"]``: its means and times).
    """
    import torch

    log = out / "log.txt"
    runs = [out / "run", *(out / f"run_{i}" for i in range(1, opts.members))]
    train_s, commands = [], []
    config_path, sets = opts.config(config, sets)
    for i, run in enumerate(runs):
        cmd = ["train", "--task", task, "--config", str(config_path), "--data", str(train_list), "--out", str(run), "--overwrite"]
        for s in [*sets, *opts.sets, *([f"train.seed={i}"] if i else [])]:
            cmd += ["--set", s]
        if opts.reuse and (run / "train_s.txt").exists():
            train_s.append(float((run / "train_s.txt").read_text()))
        else:
            train_s.append(medp2p(*cmd, log=log))
            (run / "train_s.txt").write_text(f"{train_s[-1]:.1f}\n")
        commands.append("medp2p " + " ".join(cmd))
    models = [a for run in runs for a in ("--model", str(run))]
    predict_s = _predict_evaluate(opts, task, models, test_list, out / "pred", out / "report", eval_args, log)
    steps = int(torch.load(runs[0] / "last.pt", map_location="cpu", weights_only=True)["step"])  # train.minutes may fit fewer
    row: dict[str, Any] = {
        "metrics": summary(out / "report"), "train_s": round(sum(train_s), 1), "steps": steps, "predict_s": round(predict_s, 1),
        "command": commands[0],
    }  # fmt: skip
    if len(runs) > 1:
        row["members"] = []
        for i, run in enumerate(runs):
            alone = _predict_evaluate(
                opts, task, ["--model", str(run)], test_list, out / f"pred_member{i}", out / f"report_member{i}", eval_args, log
            )
            row["members"].append(
                {"metrics": summary(out / f"report_member{i}"), "train_s": round(train_s[i], 1), "predict_s": round(alone, 1)}
            )
    return row


def _predict_evaluate(
    opts: ProtocolOptions, task: str, models: list[str], test_list: Path, pred: Path, report: Path, eval_args: list[str], log: Path
) -> float:
    """``medp2p predict`` with ``models`` into ``pred``, then ``evaluate`` into ``report``; returns the prediction's wall time."""
    seconds = medp2p("predict", *models, "-i", str(test_list), "-o", str(pred), "--overwrite", *opts.predict_options, log=log)
    medp2p("evaluate", "--task", task, "--pred", str(pred), "--ref", str(test_list), "-o", str(report), "--overwrite", *eval_args, log=log)
    return seconds


def evaluate_baseline(task: str, name: str, predictions: dict[str, Volume], test_list: Path, out: Path, **kwargs: Any) -> dict[str, float]:
    """Write a baseline's volumes as a prediction folder and score it with the same ``evaluate``."""
    folder = out / "baselines" / name
    for cid, volume in predictions.items():
        write_volume(volume, folder / cid / TASKS[task].output_name)
    evaluate(task, folder, test_list, out / "baselines" / f"{name}_report", montages=False, overwrite=True, **kwargs)
    return summary(out / "baselines" / f"{name}_report")


def rescore(task: str, row: dict[str, Any], out: Path, test_list: Path, primary: str | None = None, **kwargs: Any) -> None:
    """Score the split's predictions, baselines and oracles again with each of the task's other metric definitions.

    ``row["definition"]`` names the definition ``row["metrics"]`` used (``primary``, default the
    task's first); ``row["by_definition"][name]`` holds ``{"medp2p": means, <baseline>: means, ...}``
    for every other one. ``kwargs`` go to :func:`evaluate` as for the primary scoring (``slab``).
    """
    spec = TASKS[task]
    row["definition"] = spec.definition(primary).name
    folders = {"medp2p": out / "pred", **{n: out / "baselines" / n for n in [*row.get("baselines", {}), *row.get("oracles", {})]}}
    row["by_definition"] = {}
    for definition in spec.metrics:
        if definition.name == row["definition"]:
            continue
        entry = {}
        for label, folder in folders.items():
            report = out / "rescore" / definition.name / label
            evaluate(task, folder, test_list, report, montages=False, overwrite=True, metrics=definition.name, **kwargs)
            entry[label] = summary(report)
        row["by_definition"][definition.name] = entry


def table(result: Result) -> str:
    """A markdown table of the model's and baselines' means per split."""
    lines = []
    for row in result.splits:
        name = row.get("split") or (f"fold {row['fold']} (test {row['test_case']})" if "fold" in row else "test volumes")
        lines.append(f"\n### {result.task}: {name}  (train {row['train_s'] / 60:.1f} min, predict {row['predict_s']:.0f} s)")
        models = {
            "medp2p": row["metrics"],
            **row["baselines"],
            **({"pyradiomics (OOD)": row["pyradiomics"]} if "pyradiomics" in row else {}),
        }
        models.update({f"{n} (oracle: sees the truth)": metrics for n, metrics in row.get("oracles", {}).items()})
        keys = list(row["metrics"])
        lines.append("| | " + " | ".join(keys) + " |")
        lines.append("|---" * (len(keys) + 1) + "|")
        for label, metrics in models.items():
            lines.append(f"| {label} | " + " | ".join(f"{metrics.get(k, float('nan')):.4g}" for k in keys) + " |")
        for i, member in enumerate(row.get("members", [])):
            lines.append(f"- member {i} alone: " + ", ".join(f"{k} {member['metrics'].get(k, float('nan')):.4g}" for k in keys))
        if "ratios" in row:
            lines.append("ratios to the baseline: " + ", ".join(f"{k} {v:.2f}" for k, v in row["ratios"].items()))
        if "per_case" in row and isinstance(row["per_case"], dict):
            for cid, metrics in row["per_case"].items():
                lines.append(f"- {cid}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if "definition" in row:
            lines.append(f"(metric definition: {row['definition']})")
        for definition, entry in row.get("by_definition", {}).items():
            keys = list(entry["medp2p"])
            lines.append(f"\nthe same predictions scored with {definition}:")
            lines.append("| | " + " | ".join(keys) + " |")
            lines.append("|---" * (len(keys) + 1) + "|")
            for label, metrics in entry.items():
                lines.append(f"| {label} | " + " | ".join(f"{metrics.get(k, float('nan')):.4g}" for k in keys) + " |")
    return "\n".join(lines)
