"""Memory: resident memory across 100 sequential generations through a real MCP session. Goal: growth of
5% or less from after the warm-up to the end."""

from __future__ import annotations

import resource

import anyio
from mcp import Client

from benchmarks.common import demo_settings, report, scaled
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett

GENERATIONS = scaled(100, 4)
WARMUP = scaled(10, 1)


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    async with Noisett(demo_settings()) as service, Client(build_server(service)) as client:
        samples = []
        for n in range(GENERATIONS):
            result = await client.call_tool("generate_image", {"prompt": f"image {n}", "steps": 4})
            image_id = result.structured_content["images"][0]["id"]
            await client.call_tool("get_image", {"image_id": image_id})
            if n + 1 == WARMUP:
                after_warmup, peak_warmup = rss_mib(), peak_mib()
            samples.append(rss_mib())
    end, peak_end = samples[-1], peak_mib()
    growth = (peak_end - peak_warmup) / peak_warmup
    report(
        f"memory ({GENERATIONS} sequential generate_image + get_image, demo model)",
        [
            (f"RSS after {WARMUP} (warm-up)", f"{after_warmup:.0f} MiB"),
            (f"RSS after {GENERATIONS}", f"{end:.0f} MiB"),
            ("peak RSS after warm-up → end", f"{peak_warmup:.0f} → {peak_end:.0f} MiB"),
            ("peak growth", f"{growth:+.1%}"),
        ],
        f"{'MET' if growth <= 0.05 else 'MISSED'} (goal: ≤ 5% growth)",
    )


if __name__ == "__main__":
    anyio.run(main)
