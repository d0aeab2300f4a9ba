"""reuse_freed_memory: inside it glibc serves large blocks from its heap and reuses them (no
fresh page faults per batch); outside it and with MEDP2P_MALLOC=system, the defaults hold."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from medp2p.device import allocator as runtime

# A child process: allocate, touch and free 64 MiB; print the minor page faults of a second such
# round in each situation. Outside, the 64 MiB is a fresh mapping every time: at least one fault
# per 2 MiB page where transparent huge pages are on (32), 16384 of 4 KiB pages where they are
# off. Inside, the second round reuses the pages the first one faulted in.
_PROBE = textwrap.dedent(
    """
    import resource
    import numpy as np
    from medp2p.device.allocator import reuse_freed_memory

    def faults():
        def round_():
            a = np.ones(16 * 2**20, dtype=np.float32)  # 64 MiB, every page written
            del a
        round_()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        round_()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with reuse_freed_memory() as took:
        inside = faults()
        with reuse_freed_memory():
            pass
        after_inner = faults()  # leaving a nested use keeps the outer one's settings
    print(took, inside, after_inner, faults())
    """
)


def _probe(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != runtime.MALLOC_ENV}
    if env_value is not None:
        env[runtime.MALLOC_ENV] = env_value
    return subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_memory_is_reused_inside_and_given_back_after() -> None:
    took, inside, after_inner, outside = _probe(None)
    assert took == "True"
    assert int(inside) < 16 and int(after_inner) < 16
    assert int(outside) >= 32  # large blocks are mapped afresh again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_system_malloc_is_left_alone() -> None:
    took, inside, after_inner, outside = _probe("system")
    assert took == "False"
    assert min(int(inside), int(after_inner), int(outside)) >= 32


class _Spy:
    """Stands in for reuse_freed_memory and records whether code ran inside it."""

    def __init__(self) -> None:
        self.inside = False
        self.seen: list[bool] = []

    def __call__(self):
        import contextlib

        @contextlib.contextmanager
        def scope():
            self.inside = True
            try:
                yield True
            finally:
                self.inside = False

        return scope()


def test_prediction_runs_its_generator_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import torch

    from medp2p.data.codecs import HU
    from medp2p.data.prepare import Prep
    from medp2p.infer import volume as predict
    from medp2p.types import Volume

    spy = _Spy()
    monkeypatch.setattr(predict, "reuse_freed_memory", spy)

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            spy.seen.append(spy.inside)
            return x[:, :1]

    vol = Volume(np.random.default_rng(0).normal(100, 20, (16, 16, 5)).astype(np.float32), np.eye(4))
    prep = Prep(("mr",), "ct", HU, context_slices=0, size_multiple=8)
    predict.predict_volume(Recorder(), vol, prep, options=predict.RunOptions(batch_size=2))
    assert spy.seen == [True, True, True] and not spy.inside  # 5 slices in batches of 2


def test_training_runs_its_steps_inside_it(tiny_phantom, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from medp2p.config import load_config
    from medp2p.train import Trainer, loop, train

    spy = _Spy()
    monkeypatch.setattr(loop, "reuse_freed_memory", spy)
    advance = Trainer.advance
    monkeypatch.setattr(Trainer, "advance", lambda self, b: spy.seen.append(spy.inside) or advance(self, b))
    cfg = load_config("mri2ct", Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", [])
    train(cfg, tiny_phantom, tmp_path / "run", stop_step=2, progress=False)
    assert spy.seen == [True, True] and not spy.inside
