"""Images in Azure Blob Storage, on Azurite (the real emulator): stored with their metadata, read by a
second server process, kept safe through an outage, linked with an expiring SAS, swept by age."""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import anyio
import httpx2
import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from mcp import Client
from PIL import Image
from pydantic import ValidationError

from noisett_mcp import images
from noisett_mcp.config import Settings
from noisett_mcp.schemas import new_image_id
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from noisett_mcp.storage import LocalImageStore, open_store
from noisett_mcp.storage.azure_account import BlobAccount, describe_error
from noisett_mcp.storage.blob import BlobImageStore, decode_metadata, encode_metadata
from noisett_mcp.storage.spool import Spool
from tests.azurite import ACCOUNT_KEY, Azurite, blob_settings, running_azurite, skip_without_azurite
from tests.support import cli_http_server, sample_record

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
            assert during["id"] in await service.store.spool.pending()  # type: ignore[attr-defined]
            storage = service.health().body()["storage"]
            assert storage["reachable"] is False and storage["spooled"] >= 1
            assert service.health().body()["status"] != "error", "an outage does not fail the health probe"
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
                while await service.store.spool.pending():  # type: ignore[attr-defined]
                    await anyio.sleep(0.2)
            async with images_container(settings) as container:
                for image_id, data in kept.items():
                    assert await download(container, image_id) == data
                    assert json.loads(await download(container, f"{image_id}.json"))["status"] == "done"
            for image_id, data in kept.items():
                assert await get_image_bytes(client, image_id) == data  # now from Blob
            assert service.health().body()["storage"] == {
                "backend": "azure-blob",
                "container": settings.blob_images_container,
                "reachable": True,
                "spooled": 0,
            }

    assert "storage unreachable" in caplog.text and "reachable again" in caplog.text
    assert "still wait in the spool" in caplog.text  # the first server's last try, at shutdown
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
        assert record is not None
        await service.store.save_image(
            data, "image/png", record.model_copy(update={"width": 1024, "height": 1024})
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
        await store.save_image(png, "image/png", sample_record(image_id))
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
    store = open_store(blob)
    assert isinstance(store, BlobImageStore)
    try:
        image_id = new_image_id()
        png = images.encode(Image.new("RGB", (8, 8)), "png", {})
        await store.save_image(png, "image/png", sample_record(image_id))  # makes the container too
        assert await store.spool.pending() == []
        assert await store.sweep(30) == 0
        await anyio.sleep(2.1)  # Blob times have 1 s resolution
        assert await store.sweep(1 / 86400) == 1  # one image: its blob and its record
        assert await store.load_record(image_id) is None and await store.load_image(image_id) is None
    finally:
        await store.aclose()


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


TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
IDENTITY = "3d4c0d8e-7b5a-4f5e-9c1a-2b3c4d5e6f70"  # the managed identity's object id


class LocalEntraCredential:
    """An async token credential, like a managed identity's: it signs its own short-lived tokens for
    Azure Storage. Azurite's OAuth mode checks their issuer, audience and lifetime, and derives the
    user delegation key from `oid` and `tid`, so the SAS it verifies depends on this identity."""

    def __init__(self) -> None:
        self.key = secrets.token_bytes(32)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        assert scopes == ("https://storage.azure.com/.default",), scopes
        now = int(time.time())
        claims = {
            "aud": "https://storage.azure.com",
            "iss": f"https://sts.windows.net/{TENANT}/",
            "tid": TENANT,
            "oid": IDENTITY,
            "iat": now,
            "nbf": now - 60,
            "exp": now + 3600,
        }
        return AccessToken(jwt.encode(claims, self.key, algorithm="HS256"), now + 3600)

    async def close(self) -> None:
        pass


async def test_a_managed_identity_gets_user_delegation_sas_links_with_a_cached_key(
    make_settings: MakeSettings,
) -> None:
    skip_without_azurite()
    with running_azurite(oauth=True) as azurite:  # HTTPS and bearer tokens, as in Azure
        assert azurite.cert_path is not None
        settings = make_settings(blob_account_url=azurite.endpoint(), blob_images_container="images")
        account = BlobAccount.from_settings(
            settings, LocalEntraCredential(), connection_verify=str(azurite.cert_path)
        )
        store = BlobImageStore(account, Spool(settings.spool_dir), "images", sas_minutes=5)
        try:
            assert not account.create_containers, "a managed identity does not create containers"
            await account.container("images").create_container()
            image_id = new_image_id()
            png = images.encode(Image.new("RGB", (16, 16), "teal"), "png", {"seed": 3})
            await store.save_image(png, "image/png", sample_record(image_id, seed=3))
            assert await store.spool.pending() == []

            first = await store.image_url(image_id)
            assert first is not None
            query = parse_qs(urlparse(first).query)
            assert query["skoid"] == [IDENTITY] and query["sktid"] == [TENANT]
            assert query["sp"] == ["r"] and query["spr"] == ["https"]
            key_expiry = datetime.strptime(query["ske"][0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            assert 23 * 3600 < (key_expiry - datetime.now(UTC)).total_seconds() <= 24 * 3600
            await anyio.sleep(1.1)
            second = await store.image_url(image_id)
            assert second is not None and parse_qs(urlparse(second).query)["skt"] == query["skt"], (
                "the delegation key is cached, not fetched for every link"
            )

            tls = ssl.create_default_context(cafile=str(azurite.cert_path))
            async with httpx2.AsyncClient(verify=tls) as http:
                response = await http.get(first)
                assert response.status_code == 200 and response.content == png
                forged = first.replace(f"skoid={IDENTITY}", f"skoid={IDENTITY[:-1]}1")
                assert (await http.get(forged)).status_code == 403
        finally:
            await store.aclose()


def test_metadata_is_ascii_round_trips_and_long_values_are_cut() -> None:
    record = sample_record(
        "0" * 32,
        prompt="Crème brûlée, 100% “fancy”\nwith a newline",
        negative_prompt="é" * 2000,  # 18 000 characters once percent-encoded
        seed=7,
        versions={"torch": "2.13.0"},
        status="done",  # job state stays in the record, not in metadata
    )
    metadata = encode_metadata(record.parameters())
    assert all(value.isascii() and value.isprintable() for value in metadata.values())
    assert sum(len(k) + len(v) for k, v in metadata.items()) < 8 * 1024, "Azure's metadata limit"
    decoded = decode_metadata(metadata)
    assert decoded["prompt"] == record.prompt and decoded["seed"] == "7"
    assert json.loads(decoded["versions"]) == {"torch": "2.13.0"}
    assert "status" not in decoded and "error" not in decoded
    assert decoded["truncated"] == "negative_prompt" and decoded["negative_prompt"] == "é" * len(
        decoded["negative_prompt"]
    )


def test_storage_errors_are_described_without_secrets() -> None:
    sas = "https://acct.blob.core.windows.net/c/b?sv=2026-10-06&sp=r&sig=c2VjcmV0K3NpZw%3D%3D&skoid=abc"
    error = HttpResponseError(f"Server failed to authenticate the request {sas}\nmore detail")
    error.status_code = 403
    text = describe_error(error)
    assert "c2VjcmV0K3NpZw" not in text and "sig=REDACTED" in text and "skoid=REDACTED" in text
    assert text.startswith("HttpResponseError 403") and "more detail" not in text
    key_error = ValueError(f"bad connection string AccountKey={ACCOUNT_KEY};EndpointSuffix=x")
    assert ACCOUNT_KEY not in describe_error(key_error)


def test_a_local_server_never_imports_the_azure_sdk(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from noisett_mcp.config import Settings\n"
        "from noisett_mcp.http import create_app\n"
        "from noisett_mcp.service import Noisett\n"
        f"create_app(Noisett(Settings(model='demo', data_dir={str(tmp_path)!r})))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'azure'))\n"
    )
    env = {k: v for k, v in os.environ.items() if "AZURE_STORAGE" not in k and "BLOB" not in k}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_container_names_are_checked_with_a_clear_message(make_settings: MakeSettings) -> None:
    with pytest.raises(ValidationError, match="3 to 63 lowercase letters, digits and single hyphens"):
        make_settings(blob_images_container="Generated_Images")
