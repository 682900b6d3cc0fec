"""Overhead: `generate_image` end to end over streamable HTTP, against calling the same pipeline
directly in process with the same demo model and parameters. Goal: a ratio of 1.05 or less."""

from __future__ import annotations

import time

import anyio
import torch
from mcp import Client

from benchmarks.common import demo_settings, median, report, scaled, serve_asgi
from noisett_mcp.http import create_app
from noisett_mcp.service import Noisett

RUNS = scaled(12, 1)
ARGS = {"prompt": "a lighthouse at dusk, flat vector poster", "seed": 1}


async def main() -> None:
    service = Noisett(demo_settings())
    async with serve_asgi(create_app(service)) as base, Client(f"{base}/mcp") as client:
        engine = await service.runner.engine()
        steps, guidance = 16, 0.0  # the demo's (Fast) defaults

        def direct() -> float:
            started = time.perf_counter()
            engine.pipe(
                prompt=ARGS["prompt"],
                width=64,
                height=64,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(ARGS["seed"]),
                output_type="pil",
            )
            return time.perf_counter() - started

        async def over_http() -> float:
            started = time.perf_counter()
            result = await client.call_tool("generate_image", ARGS)
            assert not result.is_error, result.content
            return time.perf_counter() - started

        await over_http()
        direct()  # warm-up
        http_times, direct_times = [], []
        for _ in range(RUNS):
            http_times.append(await over_http())
            direct_times.append(await anyio.to_thread.run_sync(direct))
    h, d = median(http_times), median(direct_times)
    report(
        "overhead (generate_image over HTTP vs the pipeline in process; demo model, 16 steps, 64×64)",
        [
            ("generate_image over HTTP", f"{h * 1000:.0f} ms median of {RUNS}"),
            ("pipeline call in process", f"{d * 1000:.0f} ms median of {RUNS}"),
            ("ratio", f"{h / d:.3f}"),
        ],
        f"{'MET' if h / d <= 1.05 else 'MISSED'} (goal: ≤ 1.05)",
    )


if __name__ == "__main__":
    anyio.run(main)
