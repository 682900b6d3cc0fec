"""Start-up: spawn → `tools/list` answered over stdio, against importing torch + diffusers in a fresh
process. Goal: at most 2 s, and at least 4 times faster."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import anyio
from mcp import Client, StdioServerParameters

from benchmarks.common import demo_settings, median, report, scaled

RUNS = scaled(5, 1)


async def time_tools_list() -> float:
    settings = demo_settings()
    env = {**os.environ, "NOISETT_MODEL": "demo", "NOISETT_DATA_DIR": str(settings.data_dir)}
    params = StdioServerParameters(command=sys.executable, args=["-m", "noisett_mcp", "serve"], env=env)
    started = time.perf_counter()
    async with Client(params) as client:
        await client.list_tools()
        return time.perf_counter() - started


def time_torch_import() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, diffusers, transformers"], check=True)
    return time.perf_counter() - started


async def main() -> None:
    server, imports = [], []
    for _ in range(RUNS):  # interleaved, so drift on a noisy machine hits both alike
        server.append(await time_tools_list())
        imports.append(time_torch_import())
    s, i = median(server), median(imports)
    ok = s <= 2.0 and i / s >= 4
    report(
        "start-up (stdio spawn → tools/list)",
        [
            ("noisett-mcp serve → tools/list", f"{s:.2f} s median of {RUNS}"),
            ("import torch+diffusers+transformers", f"{i:.2f} s median of {RUNS}"),
            ("ratio import / start-up", f"{i / s:.1f}x"),
        ],
        f"{'MET' if ok else 'MISSED'} (goal: ≤ 2 s and ≥ 4x)",
    )


if __name__ == "__main__":
    anyio.run(main)
