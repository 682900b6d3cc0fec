"""How long this process has been running: the clock of the cold-start metric, which counts from the
process's own start (the kernel's record of it), not from whenever Python got round to importing us."""

from __future__ import annotations

import os
import time
from pathlib import Path

# The fallback where /proc is missing (not Linux): the import of this module, early in every command.
_IMPORTED = time.monotonic()


def seconds_since_process_start() -> float:
    """Seconds since the kernel started this process (Linux: /proc/self/stat), else since this import."""
    started = _process_start_since_boot()
    if started is not None:
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    return time.monotonic() - _IMPORTED


def _process_start_since_boot() -> float | None:
    try:
        stat = Path("/proc/self/stat").read_text()
        # Field 22, `starttime`, in clock ticks after boot. Field 2 (the command) may hold spaces and
        # parentheses, so count from the last ')': the text after it starts at field 3.
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[22 - 3]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
