"""How long this process has been running: the clock of the cold-start metric, which counts from the
process's own start (the kernel's record of it), not from whenever Python got round to importing us.
The model load's stages (weights/stages.py) keep the same clock, so the metric's stages add up."""

from __future__ import annotations

from noisett_mcp.weights.stages import process_age


def seconds_since_process_start() -> float:
    """Seconds since the kernel started this process (Linux: /proc/self/stat), else since start-up."""
    return process_age()
