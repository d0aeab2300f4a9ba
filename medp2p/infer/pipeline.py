"""Cases through three stages at once: read + prepare (a thread), the generator (the calling thread), write (a thread).

The generator keeps the accelerator (or the cores) busy while the next case is read and the last
one written. At most three cases are in flight: the next one being read, this one on the
generator, the last one being written. The reader starts case k+1 only when case k goes to the
generator, and case k is handed to the writer only after case k-1 is written, so memory is
bounded by three cases' volumes and model-space stacks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol


class Stages(Protocol):
    """What :func:`run_pipeline` runs for each case: read -> prepared, generate -> output, write -> written."""

    def read(self, case: Any) -> Any: ...  # noqa: D102
    def generate(self, case: Any, prepared: Any) -> Any: ...  # noqa: D102
    def write(self, case: Any, prepared: Any, out: Any) -> Any: ...  # noqa: D102
    def done(self, case: Any, written: Any) -> None: ...  # noqa: D102
    def fail(self, case: Any, exc: BaseException) -> bool: ...  # noqa: D102


def run_pipeline(cases: Iterable[Any], stages: Stages, on_case: Callable[[Any], None] | None = None, pipelined: bool = True) -> None:
    """Every case through ``stages``; a failure at any stage is that case's (``stages.fail``), the rest go on.

    ``stages.fail`` returning True stops the run after the cases already in flight. Ctrl-C
    (KeyboardInterrupt) stops reading, lets the write in progress finish (writes are atomic and
    remove what they made when interrupted) and is raised again.

    Example:
        >>> run_pipeline(cases, stages)  # stages.done(case, paths) for each written case
    """
    if not pipelined:
        _serial(cases, stages, on_case)
        return
    with (
        ThreadPoolExecutor(1, thread_name_prefix="medp2p-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="medp2p-write") as writer,
    ):
        _Run(iter(cases), stages, on_case, reader, writer).go()


def _serial(cases: Iterable[Any], stages: Stages, on_case: Callable[[Any], None] | None) -> None:
    for case in cases:
        if on_case is not None:
            on_case(case)
        try:
            prepared = stages.read(case)
            out = stages.generate(case, prepared)
            stages.done(case, stages.write(case, prepared, out))
        except Exception as exc:  # one bad case must not stop the others
            if stages.fail(case, exc):
                return


class _Run:
    def __init__(
        self, queue: Any, stages: Stages, on_case: Callable[[Any], None] | None,
        reader: ThreadPoolExecutor, writer: ThreadPoolExecutor,
    ) -> None:  # fmt: skip
        self.queue, self.stages, self.on_case, self.reader, self.writer = queue, stages, on_case, reader, writer
        self.stopped = False
        self.ahead: tuple[Any, Future[Any]] | None = None
        self.writing: tuple[Any, Future[Any]] | None = None

    def _fail(self, case: Any, exc: BaseException) -> None:
        self.stopped = self.stages.fail(case, exc) or self.stopped

    def _read_next(self) -> None:
        case = next(self.queue, None)
        self.ahead = None if case is None or self.stopped else (case, self.reader.submit(self.stages.read, case))

    def _collect(self) -> None:
        if self.writing is None:
            return
        case, future = self.writing
        self.writing = None
        try:
            self.stages.done(case, future.result())
        except Exception as exc:
            self._fail(case, exc)

    def go(self) -> None:
        self._read_next()
        try:
            while self.ahead is not None and not self.stopped:
                case, reading = self.ahead
                if self.on_case is not None:
                    self.on_case(case)
                try:
                    prepared = reading.result()
                except Exception as exc:
                    self._fail(case, exc)
                    self._read_next()
                    continue
                self._read_next()  # case k+1 is read while case k is on the generator
                try:
                    out = self.stages.generate(case, prepared)
                except Exception as exc:
                    self._fail(case, exc)
                    continue
                self._collect()  # case k-1 written before case k is handed over
                if not self.stopped:
                    self.writing = (case, self.writer.submit(self.stages.write, case, prepared, out))
            self._collect()
        except KeyboardInterrupt:
            if self.ahead is not None:
                self.ahead[1].cancel()
            with contextlib.suppress(BaseException):
                self._collect()
            raise
