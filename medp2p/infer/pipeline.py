"""Cases through three stages at once: read + prepare (threads), the generator (the calling thread), write (threads).

The generator keeps the accelerator (or the cores) busy while the next cases are read and the
last ones written. With ``workers`` = W, W reader threads read the next W cases while the
generator runs on this one, and W writer threads write the last W; at most ``2W + 1`` cases are
in flight, so memory is bounded by that many cases' volumes and model-space stacks (3 with
W = 1, 5 with ``medp2p predict``'s usual 2). A read starts only while fewer than W cases are
being read or wait for the generator, and a case goes to the writers only when fewer than W
writes are pending, the oldest collected first.

Overlap pays where the stages would otherwise leave a device or cores idle. A generator that runs
on the CPU's cores and takes nearly all of a case's time leaves nothing to fill: the overlap could
hide at most the small rest, and on 2 cores it cost more than that (docs/results.md). With
``pipelined=None`` the first case therefore runs alone and timed, and the rest go through the
pipeline only when the generator took less than :data:`GENERATOR_BOUND` of that case's time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

#: With ``pipelined=None``: the cases after the first run one after another when the generator took
#: at least this share of the first case's time (read + prepare, generator, decode + write). On 2
#: cores (docs/results.md) the pipeline gained 5-7% at a share of 0.63-0.68, ran even at 0.86-0.87
#: (one case after another then holds one case in memory instead of five), and lost 4-7% at 0.90-0.93.
GENERATOR_BOUND = 0.85


class Stages(Protocol):
    """What :func:`run_pipeline` runs for each case: read -> prepared, generate -> output, write -> written."""

    def read(self, case: Any) -> Any: ...  # noqa: D102
    def generate(self, case: Any, prepared: Any) -> Any: ...  # noqa: D102
    def write(self, case: Any, prepared: Any, out: Any) -> Any: ...  # noqa: D102
    def done(self, case: Any, written: Any) -> None: ...  # noqa: D102
    def fail(self, case: Any, exc: BaseException) -> bool: ...  # noqa: D102


def default_workers(accelerated: bool, cores: int | None = None) -> int:
    """Cases read and written at once when ``--workers`` is not given: 2, and on a GPU a quarter of the cores, at most 4.

    Reading and preparing a case costs more host time than a fast generator spends on it, so
    one reader leaves the generator waiting; two keep up on 2 CPU cores (docs/results.md) and
    cost an idle thread and two cases' memory when the generator is the slower stage. A GPU
    finishes a volume in tens of milliseconds, so its host runs more readers.

    Example:
        >>> default_workers(accelerated=True, cores=16)
        4
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(2, min(4, cores // 4)) if accelerated else 2


def in_flight_bound(workers: int) -> int:
    """The most cases :func:`run_pipeline` holds at once with ``workers`` readers and writers: ``2 * workers + 1``.

    Example:
        >>> in_flight_bound(1)
        3
    """
    return 2 * workers + 1


def pipeline_settings(pipelined: bool | None, workers: int, generator_share: float | None = None) -> dict[str, Any]:
    """What ``predict.json`` records of the pipeline: on, off or ``"auto"``, workers, the most cases in memory at once.

    ``generator_share`` (the generator's share of the first case's time, when ``pipelined`` was
    None) records the choice :func:`run_pipeline` made from it.

    Example:
        >>> pipeline_settings(True, 2)
        {'pipelined': True, 'workers': 2, 'cases_in_flight': 5}
        >>> pipeline_settings(None, 2, generator_share=0.96)["pipelined"]
        False
    """
    if generator_share is not None:
        chosen = pipeline_settings(generator_share < GENERATOR_BOUND, workers)
        return {**chosen, "auto": {"first_case_generator_share": round(generator_share, 3), "bound": GENERATOR_BOUND}}
    if pipelined is None:
        return {"pipelined": "auto", "workers": workers, "cases_in_flight": in_flight_bound(workers)}
    if not pipelined:
        return {"pipelined": False, "workers": 0, "cases_in_flight": 1}
    return {"pipelined": True, "workers": workers, "cases_in_flight": in_flight_bound(workers)}


def run_pipeline(
    cases: Iterable[Any], stages: Stages, on_case: Callable[[Any], None] | None = None, pipelined: bool | None = True, workers: int = 1,
    on_choice: Callable[[float], None] | None = None,
) -> None:  # fmt: skip
    """Every case through ``stages``; a failure at any stage is that case's (``stages.fail``), the rest go on.

    ``stages.fail`` returning True stops the run after the cases already in flight. Ctrl-C
    (KeyboardInterrupt) stops reading, lets the writes in progress finish (writes are atomic and
    remove what they made when interrupted) and is raised again. Cases reach the generator and
    ``stages.done`` in their input order, whatever ``workers``.

    Args:
        cases: the cases, in order.
        stages: what to run on each.
        on_case: called with each case as it goes to the generator.
        pipelined: False: one case after the other, in this thread. None: the first case (the
            first that goes through) alone, timed; the rest pipelined only when the generator
            took less than :data:`GENERATOR_BOUND` of its time, else one after the other.
        workers: cases read at once, and cases written at once (threads; at most
            :func:`in_flight_bound` cases in flight).
        on_choice: with ``pipelined=None``, called with the generator's share of the first case's
            time as soon as the choice is made from it (not when no case went through), so that a
            Ctrl-C during the later cases still finds it recorded.

    Example:
        >>> run_pipeline(cases, stages, workers=2)  # stages.done(case, paths) for each written case
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    queue = iter(cases)
    if pipelined is None:
        share = _serial(queue, stages, on_case, first_only=True)
        if share is None:
            return
        if on_choice is not None:
            on_choice(share)
        pipelined = share < GENERATOR_BOUND
    if not pipelined:
        _serial(queue, stages, on_case)
        return
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="medp2p-read") as reader,
        ThreadPoolExecutor(workers, thread_name_prefix="medp2p-write") as writer,
    ):
        _Run(queue, stages, on_case, reader, writer, workers).go()


def _serial(queue: Iterable[Any], stages: Stages, on_case: Callable[[Any], None] | None, first_only: bool = False) -> float | None:
    """Cases one after the other, in this thread; ``first_only``: up to the first that goes through.

    Returns the generator's share of that first case's time with ``first_only``; None otherwise,
    when no case went through, or when a failure stopped the run.
    """
    for case in queue:
        if on_case is not None:
            on_case(case)
        start = time.perf_counter()
        try:
            prepared = stages.read(case)
            generating = time.perf_counter()
            out = stages.generate(case, prepared)
            generated = time.perf_counter()
            stages.done(case, stages.write(case, prepared, out))
        except Exception as exc:  # one bad case must not stop the others
            if stages.fail(case, exc):
                return None
            continue
        if first_only:
            return (generated - generating) / max(time.perf_counter() - start, 1e-9)
    return None


class _Run:
    def __init__(
        self, queue: Iterator[Any], stages: Stages, on_case: Callable[[Any], None] | None,
        reader: ThreadPoolExecutor, writer: ThreadPoolExecutor, workers: int,
    ) -> None:  # fmt: skip
        self.queue, self.stages, self.on_case, self.reader, self.writer = queue, stages, on_case, reader, writer
        self.workers = workers
        self.stopped = False
        self.ahead: deque[tuple[Any, Future[Any]]] = deque()  # reads, oldest first
        self.writing: deque[tuple[Any, Future[Any]]] = deque()  # writes, oldest first

    def _fail(self, case: Any, exc: BaseException) -> None:
        self.stopped = self.stages.fail(case, exc) or self.stopped

    def _read_ahead(self) -> None:
        """Start reads until ``workers`` cases are being read or wait, read, for the generator; none once the run stopped."""
        while len(self.ahead) < self.workers and not self.stopped:
            case = next(self.queue, None)
            if case is None:
                return
            self.ahead.append((case, self.reader.submit(self.stages.read, case)))

    def _collect_oldest(self) -> None:
        case, future = self.writing.popleft()
        try:
            self.stages.done(case, future.result())
        except Exception as exc:
            self._fail(case, exc)

    def go(self) -> None:
        self._read_ahead()
        try:
            while self.ahead and not self.stopped:
                case, reading = self.ahead.popleft()
                if self.on_case is not None:
                    self.on_case(case)
                try:
                    prepared = reading.result()
                except Exception as exc:
                    self._fail(case, exc)
                    self._read_ahead()
                    continue
                self._read_ahead()  # the next cases are read while this one is on the generator
                try:
                    out = self.stages.generate(case, prepared)
                except Exception as exc:
                    self._fail(case, exc)
                    continue
                while len(self.writing) >= self.workers:
                    self._collect_oldest()  # the oldest write finished before this case is handed over
                if not self.stopped:
                    self.writing.append((case, self.writer.submit(self.stages.write, case, prepared, out)))
            while self.writing:
                self._collect_oldest()
        except KeyboardInterrupt:
            for _, reading in self.ahead:
                reading.cancel()
            with contextlib.suppress(BaseException):
                while self.writing:
                    self._collect_oldest()
            raise
