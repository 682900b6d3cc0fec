"""Issue 22, findings 3 and 4, for `python -m benchmarks.bench_faults`: hostile source images against a
real `noisett-mcp serve --transport http` process, with two signed users. While user A attacks, user B's
requests are timed against the same requests alone, and the server's RSS is sampled.
- capped sources: A, at the per-user cap, sends 6 concurrent 36-megapixel lossless WebPs of about 1 kB;
- many scans: A sends a 6000² progressive JPEG of about 340 kB with 3,000 scans.
Goals: B waits no more than 2 s longer than alone; 6 capped sources add less than 300 MiB."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from PIL import Image

from benchmarks.common import demo_settings, report, scaled
from tests.faults.common import TENANT, User
from tests.jwks import JwksServer, SigningKey
from tests.support import child_env, poll_until, served_process

ATTACKERS = 6
PROBES = scaled(5, 2)
MIB = 1024 * 1024


def met(ok: bool, goal: str) -> str:
    return f"{'MET' if ok else 'MISSED'} (goal: {goal})"


def lossless_webp(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buffer, "WEBP", lossless=True)
    return base64.b64encode(buffer.getvalue()).decode()


def many_scans_jpeg(side: int, scans: int) -> bytes:
    """A flat progressive JPEG whose smallest scan (an AC refinement of end-of-band runs, 46 bytes) is
    repeated until the file holds `scans` scans: libjpeg warns about each repeat and decodes it."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 80, 40)).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    end = data.rindex(b"\xff\xd9")
    starts = [m.start() for m in re.finditer(b"\xff\xda", data)]
    pieces = [data[a:b] for a, b in zip(starts, [*starts[1:], end], strict=True)]
    smallest = min(pieces, key=len)
    return data[:end] + smallest * (scans - len(starts)) + data[end:]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _worst(probe: Callable[[], Awaitable[object]]) -> float:
    worst = 0.0
    for _ in range(PROBES):
        started = time.monotonic()
        await probe()
        worst = max(worst, time.monotonic() - started)
    return worst


async def _under_attack(
    pid: int, probe: Callable[[], Awaitable[object]], attack: Callable[[], Awaitable[None]]
) -> tuple[float, float, int]:
    """(B's worst time alone, B's worst time during the attack, the most RSS the attack added)."""
    alone = await _worst(probe)
    before, peak = _rss(pid), 0
    during = 0.0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, _rss(pid))
            await anyio.sleep(0.01)

    async def probes() -> None:
        nonlocal during
        during = await _worst(probe)

    async with anyio.create_task_group() as sampling:
        sampling.start_soon(sample)
        async with anyio.create_task_group() as tg:  # B's probes start with the attack
            tg.start_soon(attack)
            tg.start_soon(probes)
        sampling.cancel_scope.cancel()
    return alone, during, max(0, peak - before)


async def capped_sources(alice: Client, bob: Client, pid: int, http: httpx2.AsyncClient, base: str) -> None:
    """Finding 3: refused sources must not be decoded."""
    long = {"prompt": "A's", "steps": 100, "count": 4, "wait": False}
    first = await alice.call_tool("generate_image", long)
    assert not first.is_error, first.content

    async def running() -> bool:
        return bool((await http.get(f"{base}/healthz")).json().get("running"))

    await poll_until(running, timeout=60)
    waiting = await alice.call_tool("generate_image", long)  # A is at the cap now
    assert not first.is_error and not waiting.is_error, (first.content, waiting.content)
    source = lossless_webp(6000)
    refused = 0

    async def attack() -> None:
        nonlocal refused

        async def one() -> None:
            nonlocal refused
            result = await alice.call_tool("generate_image", {**long, "source_image": source})
            refused += result.is_error

        async with anyio.create_task_group() as tg:
            for _ in range(ATTACKERS):
                tg.start_soon(one)

    async def probe() -> None:
        await bob.call_tool("list_styles", {})

    alone, during, added = await _under_attack(pid, probe, attack)
    for made in (first, waiting):
        await alice.call_tool("cancel_image", {"image_id": made.structured_content["images"][0]["id"]})
    rows = [
        ("A's sources refused", f"{refused} of {ATTACKERS} (36 MP lossless WebP, {len(source) * 3 // 4} B)"),
        ("B's worst list_styles alone / during", f"{alone:.2f} s / {during:.2f} s"),
        ("RSS the attack added (sampled peak)", f"{added / MIB:.0f} MiB"),
    ]
    ok = during - alone < 2 and added < 300 * MIB
    report("capped sources (finding 3)", rows, met(ok, "B within 2 s of alone; < 300 MiB added"))


async def many_scans(alice: Client, bob: Client, pid: int) -> None:
    """Finding 4: a JPEG of thousands of scans must be refused before it is decoded."""
    crafted = many_scans_jpeg(6000, 3000)
    decode_started = time.monotonic()
    with Image.open(io.BytesIO(crafted)) as image:
        image.load()  # what one decode of it costs, here, for comparison
    decode = time.monotonic() - decode_started
    encoded = base64.b64encode(crafted).decode()
    answer: dict[str, Any] = {}

    async def attack() -> None:
        started = time.monotonic()
        arguments = {"prompt": "A's", "steps": 2, "source_image": encoded}
        result = await alice.call_tool("generate_image", arguments)
        answer.update(seconds=time.monotonic() - started, error=result.is_error)

    async def probe() -> None:
        await bob.call_tool("generate_image", {"prompt": "B's", "steps": 2})

    alone, during, added = await _under_attack(pid, probe, attack)
    rows = [
        ("the JPEG", f"6000², 3,000 scans, {len(crafted):,} bytes"),
        ("one Pillow decode of it, in this process", f"{decode:.2f} s"),
        ("A's answer", f"{answer['seconds']:.2f} s, {'refused' if answer['error'] else 'ACCEPTED'}"),
        ("B's worst 2-step generate alone / during", f"{alone:.2f} s / {during:.2f} s"),
        ("RSS the attack added (sampled peak)", f"{added / MIB:.0f} MiB"),
    ]
    ok = bool(answer["error"]) and during - alone < 2
    report("a JPEG of 3,000 scans (finding 4)", rows, met(ok, "refused; B within 2 s of alone"))


async def source_attacks(tmp: Path, phases: list[str]) -> None:
    key = SigningKey()
    with JwksServer(key).running() as jwks:
        env = child_env(
            demo_settings(data_dir=tmp / "sources"),
            NOISETT_MAX_QUEUE_PER_USER="1",
            NOISETT_LOG_LEVEL="WARNING",
            AZURE_AD_TENANT_ID=TENANT.tenant_id,
            AZURE_AD_CLIENT_ID=TENANT.client_id,
            NOISETT_AUTH_JWKS_URL=jwks.url,
        )
        a, b = User(key), User(key)
        async with (
            served_process(env, tmp / "sources.log", timeout=120) as (process, base),
            a.session(base) as alice,
            b.session(base) as bob,
            httpx2.AsyncClient(timeout=60) as http,
        ):

            async def ready() -> bool:
                return (await http.get(f"{base}/healthz")).json().get("status") == "ready"

            await bob.call_tool("generate_image", {"prompt": "loads the model", "steps": 1})
            await poll_until(ready, timeout=180, interval=0.5)
            if "sources" in phases:
                await capped_sources(alice, bob, process.pid, http, base)
            if "scans" in phases:
                await many_scans(alice, bob, process.pid)
