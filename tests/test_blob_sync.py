"""Styles and model weights from Blob storage, on Azurite: a style uploaded to the styles container
appears in list_styles without a restart; a `blob://` model is synced (unchanged files skipped by
size and ETag) and then loaded."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from mcp import Client

from noisett_mcp.config import Settings, demo_model_folder
from noisett_mcp.engine.demo import write_demo_model
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from noisett_mcp.storage.sync import _safe_relative, parse_blob_model, sync_model, sync_prefix
from noisett_mcp.styles.manifest import DEMO_STYLES_DIR, matches_model
from tests.azurite import Azurite, blob_settings
from tests.support import poll_until

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]


@asynccontextmanager
async def container(azurite: Azurite, name: str) -> AsyncIterator[ContainerClient]:
    """The test's own SDK client on a container, created if missing."""
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as account:
        client = account.get_container_client(name)
        with contextlib.suppress(ResourceExistsError):  # the server may have made it first
            await client.create_container()
        yield client


async def style_names(client: Client) -> dict[str, str]:
    result = await client.call_tool("list_styles", {})
    return {style["name"]: style["title"] for style in result.structured_content["styles"]}


MANIFEST = """\
name = "brand-sea"
title = "{title}"
description = "Sea-blue brand look, synced from Blob storage."
weights = "brand-sea.safetensors"
base_models = ["demo"]
strength = 0.8
"""


async def test_a_style_uploaded_to_blob_appears_in_list_styles_without_a_restart(
    make_settings: MakeSettings, azurite: Azurite
) -> None:
    settings = make_settings(**blob_settings(azurite), styles_sync_seconds=0.2)
    weights = (DEMO_STYLES_DIR / "demo-flat.safetensors").read_bytes()
    async with (
        Noisett(settings) as service,
        Client(build_server(service)) as client,
        container(azurite, settings.blob_styles_container) as styles,
    ):
        assert "brand-sea" not in await style_names(client)
        await styles.upload_blob("brand-sea.safetensors", weights)
        await styles.upload_blob("brand-sea.toml", MANIFEST.format(title="Sea v1"))

        async def listed() -> bool:
            return (await style_names(client)).get("brand-sea") == "Sea v1"

        await poll_until(listed)
        local = settings.resolved_styles_dir
        assert (local / "brand-sea.safetensors").read_bytes() == weights

        result = await client.call_tool(
            "generate_image", {"prompt": "a harbour", "style": "brand-sea", "steps": 2}
        )
        assert not result.is_error, result.content
        assert result.structured_content["images"][0]["style"] == "brand-sea"

        # A new version of the manifest replaces the old one (its ETag changed) ...
        await styles.upload_blob("brand-sea.toml", MANIFEST.format(title="Sea v2"), overwrite=True)

        async def updated() -> bool:
            return (await style_names(client)).get("brand-sea") == "Sea v2"

        await poll_until(updated)
        # ... and a style deleted from Blob leaves the catalog; a hand-placed local file stays.
        (local / "notes.txt").write_text("mine")
        await styles.delete_blob("brand-sea.toml")

        async def gone() -> bool:
            return "brand-sea" not in await style_names(client)

        await poll_until(gone)
        assert not (local / "brand-sea.toml").exists() and (local / "notes.txt").read_text() == "mine"


async def test_sync_skips_files_with_the_same_size_and_etag(azurite: Azurite, tmp_path: Path) -> None:
    folder = tmp_path / "mirror"
    name = f"sync-{secrets.token_hex(4)}"
    async with container(azurite, name) as blobs:
        await blobs.upload_blob("p/a.bin", b"a" * 1000)
        await blobs.upload_blob("p/sub/b.bin", b"b" * 10)
        await blobs.upload_blob("other/c.bin", b"outside the prefix")

        first = await sync_prefix(blobs, "p/", folder)
        assert sorted(first.downloaded) == ["a.bin", "sub/b.bin"] and first.unchanged == 0
        assert (folder / "sub" / "b.bin").read_bytes() == b"b" * 10
        assert not (folder / "c.bin").exists() and not list(folder.rglob(".*")), "no temporary files left"

        again = await sync_prefix(blobs, "p/", folder)
        assert again.downloaded == [] and again.unchanged == 2 and not again.changed

        await blobs.upload_blob("p/a.bin", b"A" * 1000, overwrite=True)  # same size, new ETag
        (folder / "sub" / "b.bin").write_bytes(b"damaged")  # a local file of the wrong size
        repaired = await sync_prefix(blobs, "p/", folder)
        assert sorted(repaired.downloaded) == ["a.bin", "sub/b.bin"]
        assert (folder / "a.bin").read_bytes() == b"A" * 1000
        assert (folder / "sub" / "b.bin").read_bytes() == b"b" * 10

        await blobs.delete_blob("p/a.bin")
        pruned = await sync_prefix(blobs, "p/", folder)
        assert pruned.removed == ["a.bin"] and not (folder / "a.bin").exists()


@pytest.mark.parametrize(
    "name", ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "a\\..\\b", "", "a/./b"]
)
def test_blob_names_that_would_leave_the_folder_are_refused(name: str) -> None:
    assert _safe_relative(name) is None


def test_blob_model_urls_name_a_container_and_a_prefix() -> None:
    assert parse_blob_model("blob://models/HiDream-I1-Fast") == ("models", "HiDream-I1-Fast/")
    assert parse_blob_model("blob://models/team/HiDream-I1-Dev/") == ("models", "team/HiDream-I1-Dev/")
    for bad in ("blob://models", "blob://models/", "blob:///x", "blob://models/../x"):
        with pytest.raises(ValueError, match=r"blob://CONTAINER/PREFIX"):
            parse_blob_model(bad)
    # Styles made for the hub repos fit the same weights kept in Blob.
    assert matches_model(["HiDream-ai/HiDream-I1-*"], "blob://models/HiDream-I1-Fast")
    assert not matches_model(["HiDream-ai/HiDream-I1-Dev"], "blob://models/HiDream-I1-Fast")


async def test_a_blob_model_is_synced_to_the_cache_then_loaded(
    make_settings: MakeSettings, azurite: Azurite, model_cache: Path, tmp_path: Path
) -> None:
    source = write_demo_model(demo_model_folder(model_cache))
    models = f"models-{secrets.token_hex(4)}"
    files = sorted(path for path in source.rglob("*") if path.is_file())
    async with container(azurite, models) as blobs:
        for path in files:
            await blobs.upload_blob(f"demo-pipeline/{path.relative_to(source).as_posix()}", path.read_bytes())

    cache = tmp_path / "fresh-cache"  # nothing there yet: every file comes from Blob
    settings = make_settings(
        **blob_settings(azurite), model=f"blob://{models}/demo-pipeline", model_cache_dir=cache
    )
    async with Noisett(settings) as service, Client(build_server(service)) as client:
        await service.runner.engine()
        synced = cache / "blob" / models / "demo-pipeline"
        for path in files:
            assert (synced / path.relative_to(source)).read_bytes() == path.read_bytes()
        result = await client.call_tool("generate_image", {"prompt": "from blob weights", "steps": 2})
        assert not result.is_error, result.content
        info = result.structured_content["images"][0]
        assert info["status"] == "done" and info["model"] == settings.model
        assert service.health().body()["status"] == "ready"

        # A restart finds every file in place: nothing is downloaded again.
        account = service.store.account
        assert account is not None
        again = await sync_prefix(account.container(models), "demo-pipeline/", synced)
        assert again.downloaded == [] and again.removed == [] and again.unchanged == len(files)
        assert await sync_model(account, settings) == synced
