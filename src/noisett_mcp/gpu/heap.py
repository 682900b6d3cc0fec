"""Giving freed heap memory back to the operating system, after jobs.

glibc's malloc keeps what a process frees inside its arenas (one per thread that allocates, up to eight
per core) and returns only the free space at the top of each. A render frees hundreds of megabytes of
tensors, and the requests around it allocate from anyio's worker threads, so without this a server's
RSS keeps whatever its arenas' fragments add up to (`python -m benchmarks.bench_faults`, the abandoned
calls). `malloc_trim(0)` hands every whole free page of every arena back (madvise), in milliseconds.

Where malloc is not glibc's (macOS, Windows, musl), there is nothing to call and this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # this process's own symbols: glibc's, when it is glibc
    except (OSError, AttributeError):
        return None  # musl has no malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


class HeapTrimmer:
    """Calls `malloc_trim(0)` at most once per `min_interval` seconds. Blocking (it locks each arena in
    turn): the runner calls `trim` on its engine thread, between jobs."""

    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self.available = _MALLOC_TRIM is not None
        self._last = -min_interval

    def trim(self) -> bool:
        """True if it trimmed now (not skipped for the interval, and supported here)."""
        now = time.monotonic()
        if _MALLOC_TRIM is None or now - self._last < self.min_interval:
            return False
        self._last = now
        _MALLOC_TRIM(0)
        log.debug("returned free heap pages to the OS in %.1f ms", (time.monotonic() - now) * 1000)
        return True
