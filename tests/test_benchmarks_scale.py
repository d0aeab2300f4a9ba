"""The scale and GPU benchmark scripts run end to end (on the CPU, at toy sizes): their figures are real."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import pytest

from medp2p.data.phantom import PhantomSpec
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import scale  # noqa: E402

SMALL = PhantomSpec((40, 40, 12), (4.0, 4.0, 8.0))
TINY = ("model.depth=4", "model.base_channels=8", "model.disc_channels=8", "model.disc_layers=2")


def test_make_cases_links_six_phantoms_under_their_own_paths(tmp_path: Path) -> None:
    datalist = scale.make_cases(tmp_path, 8, SMALL)
    cases = json.loads(datalist.read_text())["training"]
    assert len(cases) == 8 and len({c["mr"] for c in cases}) == 8
    assert Path(cases[6]["mr"]).stat().st_ino == Path(cases[0]["mr"]).stat().st_ino  # a hard link, not a copy


def test_watch_records_peak_rss_and_the_step_reached(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    write = f"pathlib.Path({str(metrics)!r}).write_text('step\\n3\\n')"
    code = f"import time, pathlib; b = bytearray(80 * 2**20); time.sleep(0.3); {write}; time.sleep(0.3)"
    seen = scale.watch([sys.executable, "-c", code], until=metrics, until_step=3)
    assert seen["peaks"][seen["pid"]][1] > 80 * 2**20 and seen["reached_s"] is not None and seen["reached_s"] < seen["wall_s"]
    with pytest.raises(RuntimeError, match="failed"):
        scale.watch([sys.executable, "-c", "raise SystemExit(3)"])


def test_utilisation_samples_nvml_and_falls_back_to_nothing() -> None:
    with mock.patch("torch.cuda.utilization", side_effect=[40, 90, 95, 97]), gpu_check.Utilisation(every=0.01) as util:
        while len(util.samples) < 4:
            pass
    assert util.samples == [40.0, 90.0, 95.0, 97.0] and util.summary(skip_first=0.25)["mean_pct"] == 94.0
    no_nvml = mock.patch("torch.cuda.utilization", side_effect=RuntimeError("no NVML"))
    with no_nvml, mock.patch("subprocess.run", side_effect=OSError), gpu_check.Utilisation(every=0.01) as util:
        pass
    assert util.summary() == {"source": "none", "samples": 0}


def test_gpu_check_without_cuda_prints_that_and_nothing_else(capsys: pytest.CaptureFixture[str]) -> None:
    with mock.patch("torch.cuda.is_available", return_value=False):
        result = gpu_check.main([])
    assert result["cuda"] is False and "train_1gpu" not in result
    assert json.loads(capsys.readouterr().out)["cuda"] is False


@pytest.mark.slow
def test_gpu_check_runs_every_check_with_the_cpu_standing_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check, "make_cases", lambda work, n, spec=SMALL: scale.make_cases(work, n, SMALL))
    check = gpu_check.Check(device="cpu", crop=32, spec=SMALL, sets=TINY)
    result = gpu_check.run_checks(check, steps=8, workers=1, volumes=3, ranks=True, ddp_steps=2)
    train, ddp, pred = result["train_1gpu"], result["torchrun_2gpu"], result["predict"]
    assert "error" not in train and train["images_per_s"] > 0 and 0 <= train["data_wait"] <= 1
    assert ddp == {"wall_s": ddp["wall_s"], "world_size": 2, "in_sync": True}
    assert pred["volumes"] == 3 and pred["volumes_per_s"] > 0


def test_the_augmentation_part_compares_the_same_work() -> None:
    fig = scale.part_augment(Path("."))
    assert fig["builtin_ms_per_batch"] > 0 and fig["monai_ms_per_batch"] > 0
