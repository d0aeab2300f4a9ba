"""Pipelined predict (medp2p.infer.pipeline): the same outputs as one case after another, failures kept
to their case, Ctrl-C leaving whole cases only, at most 2W+1 cases in flight with W workers; the CUDA batch logic."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import medp2p.infer.batch as batch
from medp2p.cli import app
from medp2p.infer import load_model, predict_cases
from medp2p.infer.pipeline import GENERATOR_BOUND, default_workers, in_flight_bound, pipeline_settings, run_pipeline
from medp2p.infer.volume import RunOptions, cuda_batch, run_slices
from medp2p.io import VolumeWriteError, read_volume

runner = CliRunner()


def _outputs(folder: Path) -> dict[str, np.ndarray]:
    return {p.parent.name: read_volume(p).array for p in sorted(folder.glob("*/sct.nii.gz"))}


def test_pipelined_outputs_are_the_serial_ones_to_the_bit(tiny_runs: dict, tiny_phantom: Path, tmp_path: Path) -> None:
    model = load_model(tiny_runs["mri2ct"])
    serial = predict_cases(model, [tiny_phantom], tmp_path / "serial", pipelined=False)
    a = _outputs(tmp_path / "serial")
    for workers in (1, 2):
        piped = predict_cases(model, [tiny_phantom], tmp_path / f"piped{workers}", pipelined=True, workers=workers)
        assert sorted(serial.written) == sorted(piped.written) == ["case_000", "case_001", "case_002"]
        b = _outputs(tmp_path / f"piped{workers}")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        recorded = json.loads((tmp_path / f"piped{workers}" / "predict.json").read_text())["pipeline"]
        assert recorded == {"pipelined": True, "workers": workers, "cases_in_flight": 2 * workers + 1}
    assert json.loads((tmp_path / "serial" / "predict.json").read_text())["pipeline"]["pipelined"] is False
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        predict_cases(model, [tiny_phantom], tmp_path / "none", workers=0)
    assert not (tmp_path / "none").exists()


def test_a_case_failing_in_a_reader_or_a_writer_is_reported_and_the_rest_finish(
    tiny_runs: dict, tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_phantom, data)
    (data / "case_000" / "mr.nii.gz").write_bytes(b"broken")  # fails in the reader thread
    real = batch.write_nifti

    def write(vol, path, **kw):  # noqa: ANN001, ANN003, ANN202
        if "case_001" in str(path):
            raise OSError(f"{path}: simulated write error")
        return real(vol, path, **kw)

    monkeypatch.setattr(batch, "write_nifti", write)  # fails in the writer thread
    report = predict_cases(load_model(tiny_runs["mri2ct"]), [data], tmp_path / "out", pipelined=True, workers=2)
    assert list(report.written) == ["case_002"]
    assert [f["case"] for f in report.failures] == ["case_000", "case_001"]
    assert "case_000" in report.failures[0]["input"] or "mr.nii.gz" in report.failures[0]["error"]
    assert not (tmp_path / "out" / "case_001").exists()  # nothing half-written
    assert (tmp_path / "out" / "failures.csv").is_file()


def test_ctrl_c_leaves_whole_cases_only_and_lists_them(
    tiny_runs: dict, tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = batch.run_slices

    def generate(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "run_slices", generate)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(out)])
    assert result.exit_code == 130, result.output
    assert (out / "finished.txt").read_text().split() == ["case_000"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["case_000"]  # case_001 never half-written
    assert "interrupted: 1 case(s) finished" in result.output
    recorded = json.loads((out / "predict.json").read_text())["pipeline"]  # the choice from case_000, not "auto"
    assert isinstance(recorded["pipelined"], bool) and "first_case_generator_share" in recorded["auto"], recorded
    monkeypatch.setattr(batch, "run_slices", real)
    again = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(out), "--overwrite"])
    assert again.exit_code == 0 and not (out / "finished.txt").exists()  # the complete run's outputs need no list


class _Counting:
    """Stages that record how many cases are in flight (read started, not yet written)."""

    def __init__(self) -> None:
        self.lock, self.in_flight, self.most, self.order = threading.Lock(), 0, 0, []

    def read(self, case: int) -> int:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        return case

    def generate(self, case: int, prepared: int) -> int:
        if case == 3:
            raise ValueError("generator failed")
        return prepared * 10

    def write(self, case: int, prepared: int, out: int) -> int:
        with self.lock:
            self.in_flight -= 1
        return out

    def done(self, case: int, written: int) -> None:
        self.order.append(written)

    def fail(self, case: int, exc: BaseException) -> bool:
        with self.lock:
            self.in_flight -= 1
        self.order.append(-case)
        return False


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_at_most_2w_plus_1_cases_are_in_flight_and_results_keep_their_order(workers: int) -> None:
    stages = _Counting()
    run_pipeline(range(10), stages, workers=workers)
    assert stages.most <= in_flight_bound(workers) == 2 * workers + 1
    assert [o for o in stages.order if o >= 0] == [0, 10, 20, 40, 50, 60, 70, 80, 90] and -3 in stages.order


def test_two_workers_read_two_cases_at_once() -> None:
    class Paired(_Counting):
        barrier = threading.Barrier(2, timeout=10)

        def read(self, case: int) -> int:
            if case < 2:
                self.barrier.wait()  # passes only when cases 0 and 1 are being read at the same time
            return super().read(case)

    stages = Paired()
    run_pipeline(range(4), stages, workers=2)
    assert [o for o in stages.order if o >= 0] == [0, 10, 20] and -3 in stages.order
    with pytest.raises(ValueError, match="workers must be at least 1"):
        run_pipeline(range(4), _Counting(), workers=0)


def test_default_workers_two_and_more_on_a_gpu_host() -> None:
    assert default_workers(accelerated=False, cores=2) == default_workers(accelerated=False, cores=64) == 2
    assert default_workers(accelerated=True, cores=2) == 2 and default_workers(accelerated=True, cores=12) == 3
    assert default_workers(accelerated=True, cores=64) == 4
    assert pipeline_settings(True, 2) == {"pipelined": True, "workers": 2, "cases_in_flight": 5}
    assert pipeline_settings(False, 2)["cases_in_flight"] == 1


class _Timed(_Counting):
    """Stages whose reads and generator sleep for given times, recording the thread each case was read in."""

    def __init__(self, read_s: float, generate_s: float, bad: int | None = None) -> None:
        super().__init__()
        self.read_s, self.generate_s, self.bad, self.readers = read_s, generate_s, bad, {}

    def read(self, case: int) -> int:
        if case == self.bad:
            raise OSError(f"case {case} unreadable")
        self.readers[case] = threading.current_thread().name
        time.sleep(self.read_s)
        return super().read(case)

    def generate(self, case: int, prepared: int) -> int:
        time.sleep(self.generate_s)
        return prepared * 10


def test_auto_runs_one_case_after_another_when_the_generator_takes_nearly_all_the_time() -> None:
    def first_share(cases: range | list[int], stages: _Timed, pipelined: bool | None) -> float | None:
        """The share ``run_pipeline`` hands to ``on_choice``; None when it made no choice."""
        shares: list[float] = []
        run_pipeline(cases, stages, pipelined=pipelined, workers=2, on_choice=shares.append)
        assert len(shares) <= 1
        return shares[0] if shares else None

    slow = _Timed(read_s=0.002, generate_s=0.1)
    share = first_share(range(5), slow, pipelined=None)
    assert share is not None and share >= GENERATOR_BOUND
    assert set(slow.readers.values()) == {threading.current_thread().name}  # no reader thread: one case after another
    assert slow.order == [0, 10, 20, 30, 40]
    assert pipeline_settings(None, 2, share)["pipelined"] is False
    fast = _Timed(read_s=0.05, generate_s=0.001, bad=1)  # the first case fails: the next one is timed instead
    share = first_share(range(1, 6), fast, pipelined=None)
    assert share is not None and share < 0.5
    assert fast.readers[2] == threading.current_thread().name and fast.readers[3].startswith("medp2p-read")
    assert fast.order == [-1, 20, 30, 40, 50]
    settings = pipeline_settings(None, 2, share)
    assert settings["pipelined"] is True and settings["cases_in_flight"] == 5 and settings["auto"]["bound"] == GENERATOR_BOUND
    assert pipeline_settings(None, 2) == {"pipelined": "auto", "workers": 2, "cases_in_flight": 5}
    assert first_share(range(5), _Timed(0, 0), pipelined=True) is None  # nothing timed when the choice is given
    assert first_share([0], _Timed(0, 0, bad=0), pipelined=None) is None  # no case went through


def test_predict_on_the_cpu_chooses_from_the_first_case_and_records_the_choice(
    tiny_runs: dict, tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(tiny_runs["mri2ct"])
    predict_cases(model, [tiny_phantom], tmp_path / "serial", pipelined=False)
    serial = _outputs(tmp_path / "serial")

    def slowly(real, seconds: float):  # noqa: ANN001, ANN202
        return lambda *a, **kw: time.sleep(seconds) or real(*a, **kw)

    for stage, pipelined in (("run_slices", False), ("prepare_case", True)):  # a slow generator; slow reading
        monkeypatch.setattr(batch, stage, slowly(getattr(batch, stage), 0.6))
        out = tmp_path / stage
        report = predict_cases(model, [tiny_phantom], out)
        recorded = json.loads((out / "predict.json").read_text())["pipeline"]
        assert recorded == report.pipeline and recorded["pipelined"] is pipelined, recorded
        assert (recorded["auto"]["first_case_generator_share"] >= GENERATOR_BOUND) is not pipelined
        got = _outputs(out)
        assert got.keys() == serial.keys() and all(np.array_equal(got[k], serial[k]) for k in got)
        monkeypatch.undo()


def test_a_full_disk_stops_the_run_after_the_cases_in_flight() -> None:
    class Full(_Counting):
        def write(self, case: int, prepared: int, out: int) -> int:
            if case == 2:
                raise OSError("No space left on device")
            return super().write(case, prepared, out)

        def fail(self, case: int, exc: BaseException) -> bool:
            self.order.append(-case)
            return isinstance(exc, OSError)

    stages = Full()
    run_pipeline(range(10), stages)
    written = [o for o in stages.order if o >= 0]
    assert written == [0, 10] and -2 in stages.order and len(stages.order) <= 4  # nothing started after the full disk


def test_a_full_disk_in_predict_exits_1_and_lists_the_finished_cases(
    tiny_runs: dict, tiny_phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = batch.write_nifti

    def write(vol, path, **kw):  # noqa: ANN001, ANN003, ANN202
        if "case_001" in str(path):
            raise VolumeWriteError(f"{path}: the disk is full while writing it; nothing was left there")
        return real(vol, path, **kw)

    monkeypatch.setattr(batch, "write_nifti", write)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert (out / "finished.txt").read_text().split() == ["case_000"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["case_000"]  # case_001 not half-written, case_002 not started
    assert "stopped: writing case case_001 failed" in " ".join(result.output.split())
    assert [row.split(",")[0] for row in (out / "failures.csv").read_text().splitlines()[1:]] == ["case_001"]
    monkeypatch.setattr(batch, "write_nifti", real)
    again = runner.invoke(app, ["predict", "--model", str(tiny_runs["mri2ct"]), "-i", str(tiny_phantom), "-o", str(out), "--overwrite"])
    assert again.exit_code == 0 and not (out / "finished.txt").exists() and not (out / "failures.csv").exists()


def test_cuda_batches_are_sized_from_free_memory() -> None:
    dev = torch.device("cuda:0")
    with mock.patch("torch.cuda.mem_get_info", return_value=(80 * 2**30, 140 * 2**30)):
        assert cuda_batch(dev, 256, 256) == 256  # capped
        assert RunOptions(dev).batch_for(512, 512) == cuda_batch(dev, 512, 512) < 256
        assert RunOptions(dev, batch_size=7).batch_for(512, 512) == 7
    with mock.patch("torch.cuda.mem_get_info", return_value=(2 * 2**30, 140 * 2**30)):
        assert 1 <= cuda_batch(dev, 512, 512, flip_tta=True) < cuda_batch(dev, 512, 512)
    assert RunOptions().batch_for(512, 512) == 4  # the CPU's own rule


def test_a_compiled_generator_sees_one_batch_shape_and_the_output_is_unchanged(tiny_runs: dict, tiny_phantom: Path) -> None:
    model = load_model(tiny_runs["mri2ct"])
    p = batch.prepare_case(model, {"id": "c", "mr": str(tiny_phantom / "case_000" / "mr.nii.gz")}, Path("/tmp/unused"))
    shapes = []
    hook = model.generator.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    depth = p.inp.stack.shape[1]
    batch_size = 5 if depth % 5 else 7
    plain = run_slices(model.generator, p.inp.stack, p.inp.extra, model.prep, RunOptions(batch_size=batch_size))
    n_plain = len(shapes)
    fixed = run_slices(model.generator, p.inp.stack, p.inp.extra, model.prep, RunOptions(batch_size=batch_size, fixed_batch=True))
    hook.remove()
    assert {s[0] for s in shapes[n_plain:]} == {batch_size} and shapes[n_plain - 1][0] < batch_size
    torch.testing.assert_close(plain, fixed, rtol=0, atol=1e-6)
