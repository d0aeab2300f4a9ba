"""Library warnings (pydicom's VR notices, highdicom's PatientName notice...) collected per case.

While a case is read (or predicted and written) inside :func:`collected_warnings`, the warnings
and log records libraries emit in that thread are gathered and logged once each, as medp2p's own
``case 'ID': ...`` lines, instead of as raw ``UserWarning`` text repeated for every slice.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("medp2p")


_local = threading.local()
_hook_lock = threading.Lock()
_original_showwarning = warnings.showwarning


def _route_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None
) -> None:
    sink = getattr(_local, "sink", None)
    if sink is None:
        _original_showwarning(message, category, filename, lineno, file, line)
    else:
        sink.append(str(message))


class _CollectLogRecords(logging.Filter):
    """On a library's logger: while a case is read or written in this thread, its records go to the case."""

    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(_local, "sink", None)
        if sink is None:
            return True  # logged as usual
        sink.append(record.getMessage())
        return False


_library_filter = _CollectLogRecords()
#: Libraries that log their notices instead of warning (pydicom's VR notices, highdicom's).
_LIBRARY_LOGGERS = ("pydicom", "highdicom")


@contextmanager
def collected_warnings(case_id: str) -> Iterator[list[str]]:
    """Collect library warnings raised in this thread while inside, and log each distinct one once.

    pydicom VR notices, nibabel header notes...: each becomes one ``case 'ID': ...`` line on the
    ``medp2p`` logger.

    Thread-safe: each thread collects its own (readers of a pipelined predict run in threads).
    """
    global _original_showwarning
    with _hook_lock:
        if warnings.showwarning is not _route_warning:
            _original_showwarning = warnings.showwarning
            warnings.showwarning = _route_warning
        # a logger's filter sees only its own records, so every module logger of the libraries
        # gets it (those imported later get it on the next case)
        names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _LIBRARY_LOGGERS]
        for name in {*_LIBRARY_LOGGERS, *names}:
            library_log = logging.getLogger(name)
            if _library_filter not in library_log.filters:
                library_log.addFilter(_library_filter)
    outer = getattr(_local, "sink", None)
    sink: list[str] = []
    _local.sink = sink
    try:
        with warnings.catch_warnings() if threading.current_thread() is threading.main_thread() else _nothing():
            warnings.simplefilter("always")
            yield sink
    finally:
        _local.sink = outer
        seen = []
        for msg in sink:
            first = msg.strip().splitlines()[0] if msg.strip() else msg
            if first not in seen:
                seen.append(first)
        for msg in seen:
            if outer is not None:
                outer.append(msg)
            else:
                log.warning("case %r: %s", case_id, msg)


@contextmanager
def _nothing() -> Iterator[None]:
    yield
