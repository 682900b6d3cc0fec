"""Images in Azure Blob Storage, on Azurite (the real emulator): stored with their metadata, read by a
second server process, kept safe through an outage, linked with an expiring SAS, swept by age."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import anyio
import httpx2
import pytest
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from mcp import Client
from PIL import Image

from noisett_mcp import images
from noisett_mcp.config import Settings
from noisett_mcp.models import new_image_id
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from noisett_mcp.storage import LocalImageStore, open_store
from noisett_mcp.storage.blob import BlobImageStore, decode_metadata
from tests.azurite import ACCOUNT_KEY, Azurite, blob_settings, running_azurite, skip_without_azurite
from tests.support import cli_http_server

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]


@pytest.fixture
def blob(make_settings: MakeSettings, azurite: Azurite) -> Settings:
    return make_settings(**blob_settings(azurite))


@asynccontextmanager
async def images_container(settings: Settings) -> AsyncIterator[ContainerClient]:
    """The test's own SDK client on the images container, to check what the server stored."""
    assert settings.azure_storage_connection_string is not None
    secret = settings.azure_storage_connection_string.get_secret_value()
    async with BlobServiceClient.from_connection_string(secret) as account:
        yield account.get_container_client(settings.blob_images_container)


async def download(container: ContainerClient, name: str) -> bytes:
    return await (await container.download_blob(name)).readall()


async def generate(client: Client, prompt: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool("generate_image", {"prompt": prompt, "steps": 2, **args})
    assert not result.is_error, result.content
    info = result.structured_content["images"][0]
    assert info["status"] == "done"
    return info


async def get_image_bytes(client: Client, image_id: str) -> bytes:
    got = await client.call_tool("get_image", {"image_id": image_id})
    assert not got.is_error, got.content
    (block,) = [block for block in got.content if block.type == "image"]
    return base64.b64decode(block.data)


async def test_image_lands_in_blob_with_its_metadata_and_get_image_serves_it(blob: Settings) -> None:
    prompt = "Café ☕ at dawn, 100% cosy\nsecond line"
    async with Noisett(blob) as service, Client(build_server(service)) as client:
        assert isinstance(service.store, BlobImageStore)
        info = await generate(client, prompt, seed=42, negative_prompt="blur")
        async with images_container(blob) as container:
            properties = await container.get_blob_client(info["id"]).get_blob_properties()
            stored = await download(container, info["id"])
            record = json.loads(await download(container, f"{info['id']}.json"))
        assert properties.content_settings.content_type == "image/png"
        assert properties.content_settings.cache_control == "private, max-age=31536000, immutable"
        assert properties.content_settings.content_disposition == f'inline; filename="{info["id"]}.png"'
        metadata = decode_metadata(properties.metadata)
        assert metadata["prompt"] == prompt and metadata["negative_prompt"] == "blur"
        assert metadata["seed"] == "42" and metadata["steps"] == "2" and metadata["model"] == "demo"
        assert "diffusers" in json.loads(metadata["versions"])
        assert record["status"] == "done" and record["seed"] == 42 and record["prompt"] == prompt
        assert images.read_metadata(stored)["prompt"] == prompt  # the PNG's own text chunks too
        assert await service.store.spool.pending() == [], "verified uploads leave the spool"

        assert await get_image_bytes(client, info["id"]) == stored
        got = await client.call_tool("get_image", {"image_id": info["id"]})
        url = got.structured_content["image"]["url"]
        assert url.startswith("http://127.0.0.1:")
        assert f"/{blob.blob_images_container}/{info['id']}?" in url and "sig=" in url


async def test_a_second_server_process_on_the_same_storage_reads_the_image(
    blob: Settings, tmp_path: Path
) -> None:
    async with Noisett(blob) as service, Client(build_server(service)) as client:
        info = await generate(client, "a lighthouse in fog")
    async with images_container(blob) as container:
        stored = await download(container, info["id"])

    replica_dir = tmp_path / "replica"
    assert blob.azure_storage_connection_string is not None
    env = {
        **os.environ,
        "NOISETT_MODEL": "demo",
        "NOISETT_PRELOAD": "false",
        "NOISETT_DATA_DIR": str(replica_dir),
        "MODEL_CACHE_DIR": str(blob.model_cache_dir),
        "AZURE_STORAGE_CONNECTION_STRING": blob.azure_storage_connection_string.get_secret_value(),
        "NOISETT_BLOB_IMAGES_CONTAINER": blob.blob_images_container,
        "NOISETT_BLOB_STYLES_CONTAINER": blob.blob_styles_container,
    }
    async with cli_http_server(env, tmp_path / "replica.log") as base, Client(f"{base}/mcp") as remote:
        assert await get_image_bytes(remote, info["id"]) == stored
        got = await remote.call_tool("get_image", {"image_id": info["id"]})
        assert got.structured_content["image"]["seed"] == info["seed"]
        assert got.structured_content["image"]["prompt"] == "a lighthouse in fog"
    assert not list((replica_dir / "spool").glob("*")), "the replica read Blob, not a copy of its own"


async def test_no_image_is_lost_while_storage_is_down(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    skip_without_azurite()
    kept: dict[str, bytes] = {}
    with running_azurite() as azurite:  # its own: this test stops it
        settings = make_settings(**blob_settings(azurite))
        async with Noisett(settings) as service, Client(build_server(service)) as client:
            await generate(client, "before the outage")
            await anyio.to_thread.run_sync(azurite.stop)

            during = await generate(client, "during the outage")
            kept[during["id"]] = await get_image_bytes(client, during["id"])  # served from the spool
            assert during["id"] in await service.store.spool.pending()
            unknown = await client.call_tool("get_image", {"image_id": new_image_id()})
            assert unknown.is_error and "unreachable" in unknown.content[0].text

        # The server restarts while storage is still down; its spool carries over.
        async with Noisett(settings) as service, Client(build_server(service)) as client:
            after = await generate(client, "after a restart, storage still down")
            kept[after["id"]] = await get_image_bytes(client, after["id"])
            assert await get_image_bytes(client, during["id"]) == kept[during["id"]]

            # Back on the same port, empty (in-memory): even the container has to be made again.
            await anyio.to_thread.run_sync(azurite.start)
            with anyio.fail_after(90):
                while await service.store.spool.pending():
                    await anyio.sleep(0.2)
            async with images_container(settings) as container:
                for image_id, data in kept.items():
                    assert await download(container, image_id) == data
                    assert json.loads(await download(container, f"{image_id}.json"))["status"] == "done"
            for image_id, data in kept.items():
                assert await get_image_bytes(client, image_id) == data  # now from Blob

    assert "storage unreachable" in caplog.text and "reachable again" in caplog.text
    assert ACCOUNT_KEY not in caplog.text and "AccountKey" not in caplog.text


def _noise_png(seed: int) -> bytes:
    noise = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    return images.encode(noise, "png", {"seed": seed})


async def test_a_large_image_comes_with_a_read_only_sas_link_that_expires(
    make_settings: MakeSettings, azurite: Azurite
) -> None:
    settings = make_settings(**blob_settings(azurite), sas_minutes=0.05)  # 3 s
    async with Noisett(settings) as service, Client(build_server(service)) as client:
        info = await generate(client, "noise")
        data = _noise_png(info["seed"])  # over the inline budget: get_image must link to it
        record = await service.store.load_record(info["id"])
        assert record is not None
        await service.store.save_image(
            info["id"], data, "image/png", record | {"width": 1024, "height": 1024}
        )

        got = await client.call_tool("get_image", {"image_id": info["id"]})
        assert not got.is_error
        url = got.structured_content["image"]["url"]
        assert "too large to send inline" in got.content[0].text and url in got.content[0].text
        query = parse_qs(urlparse(url).query)
        assert query["sp"] == ["r"], "read-only"
        expiry = datetime.strptime(query["se"][0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert 0 < (expiry - datetime.now(UTC)).total_seconds() <= 4

        async with httpx2.AsyncClient() as http:
            response = await http.get(url)
            assert response.status_code == 200 and response.content == data
            assert response.headers["content-type"] == "image/png"
            write = await http.put(url, content=b"overwritten", headers={"x-ms-blob-type": "BlockBlob"})
            assert write.status_code == 403
            await anyio.sleep((expiry - datetime.now(UTC)).total_seconds() + 1.5)
            expired = await http.get(url)
            assert expired.status_code == 403 and b"overwritten" not in expired.content


async def test_retention_sweeps_old_images_from_the_local_store(make_settings: MakeSettings) -> None:
    settings = make_settings(retention_days=30)
    store = LocalImageStore(settings.images_dir)
    png = images.encode(Image.new("RGB", (8, 8)), "png", {})
    old, recent = new_image_id(), new_image_id()
    for image_id in (old, recent):
        await store.save_image(image_id, png, "image/png", {"id": image_id})
    month_ago = time.time() - 31 * 86400
    for path in settings.images_dir.glob(f"{old}.*"):
        os.utime(path, (month_ago, month_ago))
    assert await store.sweep(0) == 0 and await store.load_record(old) is not None, "0 keeps everything"

    async with Noisett(settings):  # the service sweeps at start, then hourly
        with anyio.fail_after(10):
            while await store.load_record(old) is not None:
                await anyio.sleep(0.05)
    assert await store.load_image(old) is None
    assert await store.load_record(recent) is not None and await store.load_image(recent) is not None


async def test_blob_sweep_deletes_images_older_than_the_cutoff(blob: Settings) -> None:
    async with Noisett(blob) as service, Client(build_server(service)) as client:
        info = await generate(client, "ephemeral")
        assert await service.store.sweep(30) == 0
        await anyio.sleep(2.1)  # Blob times have 1 s resolution
        assert await service.store.sweep(1 / 86400) == 1  # one image: its blob and its record
        assert await service.store.load_record(info["id"]) is None
        assert await service.store.load_image(info["id"]) is None


async def test_open_store_picks_blob_only_when_configured(
    make_settings: MakeSettings, azurite: Azurite
) -> None:
    local = open_store(make_settings())
    assert isinstance(local, LocalImageStore)
    settings = make_settings(**blob_settings(azurite))
    store = open_store(settings)
    try:
        assert isinstance(store, BlobImageStore)
        assert ACCOUNT_KEY not in repr(settings) and ACCOUNT_KEY not in str(settings.model_dump())
    finally:
        await store.aclose()
