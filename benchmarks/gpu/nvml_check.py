"""One line per GPU: what Noisett reports as `noisett.gpu.*` (its NVML sampler, `telemetry.gpu.GpuSampler`)
beside what `nvidia-smi` reads at the same moment, while a matmul loop keeps the GPU busy.

    python benchmarks/gpu/nvml_check.py      # a GPU machine: torch with CUDA, nvidia-ml-py and nvidia-smi

Without a GPU (or without nvidia-ml-py) the sampler does not start, and the line says so: that is the CPU
behaviour the metrics promise (no GPU figures at all, never zeros).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "src")]  # the repo's src travels; no install needed

from noisett_mcp.telemetry.gpu import MIN_INTERVAL, GpuSampler  # noqa: E402

BUSY_SECONDS = 8.0


def nvidia_smi() -> list[tuple[int, int, int]]:
    """(utilization %, memory used MiB, memory total MiB) of each GPU, as nvidia-smi reads them now."""
    query = "--query-gpu=utilization.gpu,memory.used,memory.total"
    out = subprocess.run(
        ["nvidia-smi", query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    rows = [tuple(int(value) for value in line.split(",")) for line in out.strip().splitlines()]
    return [(row[0], row[1], row[2]) for row in rows]


def keep_busy(seconds: float) -> None:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def main() -> int:
    sampler = GpuSampler.start(MIN_INTERVAL)
    if sampler is None:
        print("nvml check: no GPU or no nvidia-ml-py here: the sampler does not start, no GPU metric is sent")
        return 0
    try:
        worker = threading.Thread(target=keep_busy, args=(BUSY_SECONDS,), daemon=True)
        worker.start()
        time.sleep(BUSY_SECONDS / 2)  # a few samples into the busy spell
        ours, theirs = sampler.samples, nvidia_smi()
        worker.join()
    finally:
        sampler.close()
    for index, (sample, (utilization, used, total)) in enumerate(zip(ours, theirs, strict=True)):
        print(
            f"nvml check, GPU {index} {sample.name}: utilization {sample.utilization_percent} % (sampler) / "
            f"{utilization} % (nvidia-smi); memory used {sample.memory_used >> 20} / {used} MiB; "
            f"total {sample.memory_total >> 20} / {total} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
