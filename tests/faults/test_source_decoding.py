"""Issue 22, findings 3 and 4: source images decoded before the queue said no, and a progressive JPEG
with thousands of scans decoded twice, once on the engine thread.

Through a real MCP session on the demo model. What is decoded is observed through the process-wide
decode budget (`sources.DECODES`), which every source decode holds while it runs: a request refused
before decoding never takes it."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import AsyncIterator, Callable

import pytest
from mcp import Client
from PIL import Image

from noisett_mcp import sources
from noisett_mcp.config import Settings
from noisett_mcp.errors import RequestError
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.support import poll_until

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

LONG = {"prompt": "holds the GPU", "steps": 100, "wait": False}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def lossless_webp(side: int) -> bytes:
    """A lossless WebP of side² pixels in a few KB: cheap to send, costly to decode."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    """A JPEG cut in half: its header reads fine, and only decoding it finds the damage."""
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def many_scans_jpeg(repeats: int) -> tuple[bytes, int]:
    """A progressive JPEG whose scans are repeated `repeats` times (libjpeg only warns about a repeated
    scan, and decodes each one): a small file that costs a decode per scan. Returns it and its scans."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    first_scan, end = data.index(b"\xff\xda"), data.rindex(b"\xff\xd9")
    scans = data[first_scan:end]
    return data[:first_scan] + scans * repeats + data[end:], scans.count(b"\xff\xda") * repeats


@pytest.fixture
async def capped(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Noisett, Client]]:
    """A service where each caller may have one job waiting, and its MCP session (stdio's caller)."""
    async with (
        Noisett(make_settings(max_queue_per_user=1)) as service,
        Client(build_server(service)) as client,
    ):
        yield service, client


async def test_a_caller_at_the_cap_is_refused_before_any_source_is_decoded(
    capped: tuple[Noisett, Client],
) -> None:
    service, client = capped
    assert not (await client.call_tool("generate_image", LONG)).is_error
    await poll_until(lambda: service.queue.running is not None, timeout=60)
    assert not (await client.call_tool("generate_image", LONG)).is_error  # waiting: the caller is at the cap

    decodes = sources.DECODES.taken
    for source in (lossless_webp(6000), truncated_jpeg()):
        refused = await client.call_tool(
            "generate_image", {**LONG, "source_image": b64(source), "strength": 0.5}
        )
        assert refused.is_error
        text = refused.content[0].text
        assert "NOISETT_MAX_QUEUE_PER_USER=1" in text, text  # the queue's answer, not the source's
    assert sources.DECODES.taken == decodes, "a refused request decoded its source"
    await service.queue.cancel(service.queue.waiting[0])
    assert service.queue.running is not None
    await service.queue.cancel(service.queue.running)


def test_the_decode_budget_is_shared_by_every_decode_in_the_process() -> None:
    """Decodes wait for pixels that others hold: at no time do they hold more than the budget."""
    budget = sources.DecodeBudget(100)
    first_holds, release_first = threading.Event(), threading.Event()
    second_held: list[int] = []

    def first() -> None:
        with budget.hold(80):
            first_holds.set()
            release_first.wait(timeout=60)

    def second() -> None:
        with budget.hold(30):
            second_held.append(budget.in_use)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_holds.wait(timeout=60)
    threads[1].start()
    for _ in range(6000):  # bounded: until the second decode is seen waiting
        if budget.waiting == 1:
            break
        threading.Event().wait(0.01)
    assert budget.waiting == 1 and budget.in_use == 80 and not second_held
    release_first.set()
    for thread in threads:
        thread.join(timeout=60)
    assert second_held == [30] and budget.in_use == 0 and budget.taken == 2
    with budget.hold(10_000):  # a decode larger than the whole budget holds all of it, alone
        assert budget.in_use == 100


async def test_a_jpeg_with_thousands_of_scans_is_refused_before_it_is_decoded(
    capped: tuple[Noisett, Client],
) -> None:
    service, client = capped
    crafted, scans = many_scans_jpeg(300)
    assert scans >= 3000 and len(crafted) < 3 * 2**20

    decodes = sources.DECODES.taken
    refused = await client.call_tool("generate_image", {**LONG, "source_image": b64(crafted)})
    assert refused.is_error
    text = refused.content[0].text
    assert f"{scans} scans" in text and f"at most {sources.MAX_JPEG_SCANS}" in text, text
    # Refused on the front, before any decode: nothing reached the queue or the engine thread.
    assert sources.DECODES.taken == decodes
    assert service.queue.running is None and service.queue.depth == 0
    # A GPU worker that loads such a file from the store refuses it the same way, undecoded.
    with pytest.raises(RequestError, match=f"{scans} scans"):
        sources.fit(crafted, 64, 64)
    assert sources.DECODES.taken == decodes

    honest, honest_scans = many_scans_jpeg(1)  # a real progressive JPEG: about 10 scans
    assert honest_scans < sources.MAX_JPEG_SCANS
    made = await client.call_tool(
        "generate_image", {"prompt": "from a progressive JPEG", "steps": 2, "source_image": b64(honest)}
    )
    assert not made.is_error, made.content
    # Checked and fitted in one decode on the front; the runner used that fit, and decoded nothing.
    assert sources.DECODES.taken == decodes + 1
