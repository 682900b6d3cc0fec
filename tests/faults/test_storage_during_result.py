"""Storage that goes away while generate_image builds its answer: the caller reads the store's own
message (an error it can act on, "try again in a minute"), not the SDK's bare "Error executing tool".
A front (NOISETT_QUEUE=azure, no worker) keeps the job queued, so nothing lands in the local spool; the
client stops Azurite on the first progress notification, while the tool waits, and the tool then reads
the image's record from Blob storage to answer."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import anyio
import pytest
from mcp import Client

from noisett_mcp.config import Settings
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.azurite import Azurite, blob_settings, running_azurite, skip_without_azurite

pytestmark = [pytest.mark.anyio, pytest.mark.faults]


@pytest.fixture
def own_azurite() -> Iterator[Azurite]:
    """An Azurite of this test's own: the test stops it."""
    skip_without_azurite()
    with running_azurite(("blob", "queue")) as instance:
        yield instance


async def test_storage_lost_while_the_result_is_built_reaches_the_client_as_its_message(
    own_azurite: Azurite, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        **blob_settings(own_azurite),
        queue="azure",
        queue_name=f"jobs-{secrets.token_hex(4)}",
        wait_seconds=10.0,  # no worker: the job stays queued and the tool waits it all out
        storage_deadline_seconds=2.0,
    )
    stopped = anyio.Event()

    async def stop_storage(progress: float, total: float | None, message: str | None) -> None:
        if not stopped.is_set():
            stopped.set()
            await anyio.to_thread.run_sync(own_azurite.stop)

    async with Noisett(settings) as service, Client(build_server(service)) as client:
        with anyio.fail_after(60):
            made = await client.call_tool(
                "generate_image", {"prompt": "storage goes away", "steps": 2}, progress_callback=stop_storage
            )
    assert stopped.is_set(), "the tool reported no progress while it waited"
    assert made.is_error, made.content
    text = made.content[0].text
    assert text.startswith("Error executing tool generate_image: image storage is unreachable right now"), (
        text
    )


async def test_an_unexpected_error_in_a_tool_stays_generic(client: Client, settings: Settings) -> None:
    """Only a NoisettError's message is meant for the caller: a record corrupted on disk fails get_image
    with the SDK's generic message, and nothing of the file or the parser's text reaches the client."""
    made = await client.call_tool("generate_image", {"prompt": "to be corrupted", "steps": 1})
    assert made.structured_content["images"][0]["status"] == "done", "no job writes the record any more"
    image_id = made.structured_content["images"][0]["id"]
    [record] = settings.data_dir.rglob(f"{image_id}.json")
    record.write_text('{"secret-looking": "garbage"', encoding="utf-8")
    got = await client.call_tool("get_image", {"image_id": image_id})
    assert got.is_error
    assert got.content[0].text == "Error executing tool get_image"
