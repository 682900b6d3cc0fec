"""Responsiveness and load (long-jobs issue), over streamable HTTP on loopback with the demo model.

1. Latency while busy: p99 of `list_styles` and `get_image` while 4 generations run. Goal: ≤ 50 ms.
2. Load: 20 concurrent clients × 5 requests. Every request ends in an image or a busy error, every
   image is retrievable afterwards, and throughput is compared with the same requests made one after
   another. Goal: ≥ 0.95.
"""

from __future__ import annotations

import time

import anyio
from mcp import Client

from benchmarks.common import demo_settings, median, p99, report, scaled, serve_asgi
from noisett_mcp.http import create_app
from noisett_mcp.service import Noisett

STEPS = scaled(8, 2)
PROBES = scaled(200, 10)


async def latency_while_busy() -> None:
    service = Noisett(demo_settings())
    async with serve_asgi(create_app(service)) as base, Client(f"{base}/mcp") as client:
        await service.runner.engine()
        done = await client.call_tool("generate_image", {"prompt": "reference", "steps": 2})
        image_id = done.structured_content["images"][0]["id"]

        async def timed(tool: str, args: dict) -> float:
            started = time.perf_counter()
            result = await client.call_tool(tool, args)
            assert not result.is_error
            return time.perf_counter() - started

        idle = [await timed("list_styles", {}) for _ in range(scaled(50, 5))]
        for _ in range(4):
            made = await client.call_tool(
                "generate_image", {"prompt": "busy", "steps": 100, "count": 4, "wait": False}
            )
            assert not made.is_error, made.content
        styles, images = [], []
        for _ in range(PROBES // 2):
            styles.append(await timed("list_styles", {}))
            images.append(await timed("get_image", {"image_id": image_id}))
        busy_while_measuring = service.queue.running is not None
        for job in (service.queue.running, *service.queue.waiting):
            if job:
                await service.queue.cancel(job)
    worst = max(p99(styles), p99(images))
    report(
        "latency while 4 generations run (HTTP, demo model)",
        [
            ("list_styles idle p99", f"{p99(idle) * 1000:.1f} ms"),
            ("list_styles busy median / p99", f"{median(styles) * 1000:.1f} / {p99(styles) * 1000:.1f} ms"),
            ("get_image busy median / p99", f"{median(images) * 1000:.1f} / {p99(images) * 1000:.1f} ms"),
            ("GPU worker busy throughout", str(busy_while_measuring)),
        ],
        f"{'MET' if worst <= 0.05 else 'MISSED'} (goal: p99 ≤ 50 ms)",
    )


async def load() -> None:
    clients, per_client = scaled(20, 3), scaled(5, 1)
    settings = demo_settings(max_queue=clients, max_queue_per_user=clients)  # all callers are `local`
    service = Noisett(settings)
    async with serve_asgi(create_app(service)) as base:
        await service.runner.engine()

        async def one(client: Client, n: int) -> tuple[str, str | None]:
            result = await client.call_tool("generate_image", {"prompt": f"load {n}", "steps": STEPS})
            if result.is_error:
                assert "busy" in result.content[0].text, result.content[0].text
                return "busy", None
            (image,) = result.structured_content["images"]
            assert image["status"] == "done", image
            return "image", image["id"]

        async with Client(f"{base}/mcp") as client:
            started = time.perf_counter()
            sequential = [await one(client, n) for n in range(clients * per_client)]
            sequential_s = time.perf_counter() - started

        outcomes: list[tuple[str, str | None]] = []

        async def caller(c: int) -> None:
            async with Client(f"{base}/mcp") as client:
                for r in range(per_client):
                    outcomes.append(await one(client, c * per_client + r))

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for c in range(clients):
                tg.start_soon(caller, c)
        concurrent_s = time.perf_counter() - started

        made = [image_id for kind, image_id in outcomes if kind == "image"]
        async with Client(f"{base}/mcp") as client:
            for image_id in made:
                got = await client.call_tool("get_image", {"image_id": image_id})
                assert not got.is_error and got.structured_content["image"]["status"] == "done"
    busy = sum(kind == "busy" for kind, _ in outcomes)
    ratio = (len(made) / concurrent_s) / (len(sequential) / sequential_s)
    report(
        f"load ({clients} concurrent HTTP clients × {per_client} requests, demo model, {STEPS} steps)",
        [
            ("requests", f"{len(outcomes)}: {len(made)} images, {busy} busy errors, 0 other"),
            ("images retrievable afterwards", f"{len(made)}/{len(made)}"),
            ("sequential", f"{len(sequential)} images in {sequential_s:.1f} s"),
            ("concurrent", f"{len(made)} images in {concurrent_s:.1f} s"),
            ("throughput ratio (concurrent / sequential)", f"{ratio:.2f}"),
        ],
        f"{'MET' if ratio >= 0.95 else 'MISSED'} (goal: ≥ 0.95)",
    )


async def main() -> None:
    await latency_while_busy()
    await load()


if __name__ == "__main__":
    anyio.run(main)
