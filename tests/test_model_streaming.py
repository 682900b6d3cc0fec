"""`NOISETT_MODEL=blob://…` streams the pipeline from Blob (Azurite) onto the device: the demo pipeline
serves the same pixels as from its local folder, with no copy of its weights on disk unless
MODEL_CACHE_DIR asks for one; each fault during the load is one clear error naming the blob, nothing
half-loaded serves, and the next request loads again; health and progress show the stages."""

from __future__ import annotations

import io
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.storage.blob.aio import ContainerClient
from mcp import Client
from PIL import Image
from pydantic import SecretStr

from noisett_mcp.config import Settings, demo_model_folder
from noisett_mcp.engine.demo import write_demo_model
from noisett_mcp.errors import ModelLoadFailed
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.azurite import Azurite, blob_settings, running_azurite, skip_without_azurite
from tests.storage_proxy import Fault, ranged_read_of, storage_proxy
from tests.test_blob_sync import container

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]
SHARD = "transformer/diffusion_pytorch_model.safetensors"
STAGES = ["imports", "settings", "first byte"]


@pytest.fixture
def demo_source(model_cache: Path) -> Path:
    return write_demo_model(demo_model_folder(model_cache))


async def upload(blobs: ContainerClient, source: Path, prefix: str, skip: tuple[str, ...] = ()) -> None:
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = path.relative_to(source).as_posix()
        if relative not in skip:
            await blobs.upload_blob(f"{prefix}/{relative}", path.read_bytes(), overwrite=True)


async def uploaded(
    azurite: Azurite, make_settings: MakeSettings, source: Path, **overrides: object
) -> Settings:
    """The demo pipeline uploaded under `demo/` in a container of its own, and settings that stream it."""
    models = f"models-{secrets.token_hex(4)}"
    async with container(azurite, models) as blobs:
        await upload(blobs, source, "demo")
    values = {**blob_settings(azurite), "model": f"blob://{models}/demo", "model_cache_dir": None}
    return make_settings(**{**values, "variant": "fast", **overrides})


async def pixels(service: Noisett, client: Client, seed: int = 7) -> bytes:
    result = await client.call_tool("generate_image", {"prompt": "a lighthouse", "steps": 2, "seed": seed})
    assert not result.is_error, result.content
    stored = await service.store.load_image(result.structured_content["images"][0]["id"])
    assert stored is not None
    return Image.open(io.BytesIO(stored.data)).convert("RGB").tobytes()


async def test_a_blob_model_streams_without_a_local_copy_and_renders_what_the_folder_renders(
    make_settings: MakeSettings, azurite: Azurite, demo_source: Path, tmp_path: Path
) -> None:
    local = make_settings(model=str(demo_source), variant="fast")
    async with Noisett(local) as service, Client(build_server(service)) as client:
        expected = await pixels(service, client)

    streamed = await uploaded(azurite, make_settings, demo_source)
    async with Noisett(streamed) as service, Client(build_server(service)) as client:
        assert await pixels(service, client) == expected
        load = service.health().body()["load"]
        names = [stage["name"] for stage in load["stages"]]
        assert names[:3] == STAGES and names[-2:] == ["warm-up", "ready"]
        assert "component transformer" in names and load["bytes_loaded"] == load["bytes_total"] > 0
    on_disk = [p.name for p in tmp_path.rglob("*.safetensors")]
    assert on_disk == [], "the weights were streamed, not copied to disk"


async def test_with_a_model_cache_a_restart_reads_the_weights_from_disk(
    make_settings: MakeSettings, azurite: Azurite, demo_source: Path, tmp_path: Path
) -> None:
    from noisett_mcp.weights.files import BlobModelFiles, WeightsSource

    settings = await uploaded(azurite, make_settings, demo_source, model_cache_dir=tmp_path / "cache")
    async with Noisett(settings) as service:
        await service.runner.engine()
    files = BlobModelFiles(WeightsSource.from_settings(settings))
    try:
        cached = files.local_path(SHARD)
        assert cached is not None and cached.read_bytes() == (demo_source / SHARD).read_bytes()
    finally:
        files.close()


async def failed_load(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The load's error and /healthz's body, from a real load that fails."""
    async with Noisett(settings) as service, Client(build_server(service)) as client:
        with pytest.raises(ModelLoadFailed) as caught:
            await service.runner.engine()
        health = service.health().body()
        result = await client.call_tool("generate_image", {"prompt": "never half-loaded", "steps": 2})
        assert result.is_error and str(caught.value) in str(result.content[0])
        assert service.runner._engine is None
        return str(caught.value), health


async def test_a_truncated_shard_is_refused_by_name_and_the_next_request_loads_it_again(
    make_settings: MakeSettings, azurite: Azurite, demo_source: Path
) -> None:
    models = f"models-{secrets.token_hex(4)}"
    whole = (demo_source / SHARD).read_bytes()
    async with container(azurite, models) as blobs:
        await upload(blobs, demo_source, "demo")
        await blobs.upload_blob(f"demo/{SHARD}", whole[: len(whole) // 2], overwrite=True)
        settings = make_settings(
            **blob_settings(azurite), model=f"blob://{models}/demo", model_cache_dir=None
        )
        async with Noisett(settings) as service:
            with pytest.raises(ModelLoadFailed, match=rf"blob://{models}/demo/{SHARD} is truncated"):
                await service.runner.engine()
            health = service.health().body()
            assert health["status"] == "error" and "is truncated" in str(health["error"])
            await blobs.upload_blob(f"demo/{SHARD}", whole, overwrite=True)  # the operator fixes it
            await service.runner.engine()
            assert service.health().body()["status"] == "ready"


async def test_a_corrupt_header_a_missing_shard_and_a_prefix_without_a_pipeline_are_each_named(
    make_settings: MakeSettings, azurite: Azurite, demo_source: Path
) -> None:
    models = f"models-{secrets.token_hex(4)}"
    whole = (demo_source / SHARD).read_bytes()
    async with container(azurite, models) as blobs:
        await upload(blobs, demo_source, "corrupt")
        await blobs.upload_blob(f"corrupt/{SHARD}", b"\xff" * 8 + whole[8:], overwrite=True)
        await upload(blobs, demo_source, "missing", skip=("vae/diffusion_pytorch_model.safetensors",))
        await blobs.upload_blob("notes/readme.txt", b"not a pipeline")

    def at(prefix: str) -> Settings:
        return make_settings(
            **blob_settings(azurite), model=f"blob://{models}/{prefix}", model_cache_dir=None
        )

    error, health = await failed_load(at("corrupt"))
    assert (
        f"{SHARD} has a corrupt safetensors header" in error
        and health["error"] == f"ModelLoadFailed: {error}"
    )
    error, _ = await failed_load(at("missing"))
    assert f"blob://{models}/missing/vae has a model config but no safetensors weights" in error
    error, _ = await failed_load(at("notes"))
    assert "holds no diffusers pipeline (no model_index.json); found: readme.txt" in error
    error, _ = await failed_load(at("nothing-here"))
    assert "nothing under that prefix" in error and "corrupt/, missing/, notes/" in error


@pytest.fixture(scope="module")
def own_azurite() -> Iterator[Azurite]:
    """This module's own Azurite: it is frozen here, and must not be the session's."""
    skip_without_azurite()
    with running_azurite() as instance:
        yield instance


async def test_hung_blob_storage_fails_the_load_within_the_deadline_and_the_next_request_retries(
    make_settings: MakeSettings, own_azurite: Azurite, demo_source: Path
) -> None:
    settings = await uploaded(own_azurite, make_settings, demo_source, storage_deadline_seconds=1.0)
    async with Noisett(settings) as service:
        own_azurite.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(ModelLoadFailed, match=r"did not answer within 1 s, three tries") as caught:
                await service.runner.engine()
            assert time.monotonic() - started < 30  # bounded: three tries of the deadline, not minutes
            assert "could not list the model's files" in str(caught.value)
            assert service.health().body()["error"] == f"ModelLoadFailed: {caught.value}"
        finally:
            own_azurite.thaw()
        await service.runner.engine()
        assert service.health().body()["status"] == "ready"


async def test_health_and_progress_show_the_stages_while_the_model_streams(
    make_settings: MakeSettings, azurite: Azurite, demo_source: Path
) -> None:
    settings = await uploaded(azurite, make_settings, demo_source)
    seen: list[dict[str, Any]] = []
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with Noisett(settings) as service, Client(build_server(service)) as client:

        async def watch() -> None:
            while service.runner.engine_state != "ready":
                health = service.health().body()
                if health["status"] == "loading" and "load" in health:
                    seen.append(health["load"])
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            result = await client.call_tool(
                "generate_image", {"prompt": "while loading", "steps": 2}, progress_callback=on_progress
            )
        assert not result.is_error, result.content
        final = service.health().body()["load"]
    assert seen, "health was never seen loading"
    for load in seen:
        assert 0 <= load["bytes_loaded"] <= load["bytes_total"]
    assert any(m.startswith("loading the model") for m in messages), messages
    assert [s["name"] for s in final["stages"]][:3] == STAGES


@pytest.mark.parametrize("fault", ["hang", "throttle"])
async def test_blob_hung_or_throttled_in_the_middle_of_the_load_fails_it_by_name_and_the_next_request_loads(
    make_settings: MakeSettings, azurite: Azurite, demo_source: Path, fault: Fault
) -> None:
    """The text encoders are on the device when the transformer's tensors stop coming (held unanswered, or
    503 ServerBusy): the load fails within its deadline and retries, naming the shard; nothing half-loaded
    serves; once storage answers again the next request loads and renders."""
    header = (demo_source / SHARD).read_bytes()[:8]
    tensors_start = 8 + struct.unpack("<Q", header)[0]
    settings = await uploaded(azurite, make_settings, demo_source, storage_deadline_seconds=1.0)
    picks = ranged_read_of(f"/demo/{SHARD}", reaching=tensors_start)
    with storage_proxy(azurite.ports["blob"], picks) as proxy:
        secret = proxy.connection_string(azurite.connection_string)
        settings = settings.model_copy(update={"azure_storage_connection_string": SecretStr(secret)})
        proxy.fault = fault
        async with Noisett(settings) as service, Client(build_server(service)) as client:
            with anyio.fail_after(30), pytest.raises(ModelLoadFailed) as caught:
                await service.runner.engine()  # bounded: three tries of the deadline, not minutes
            health, error = service.health().body(), str(caught.value)
            assert health["status"] == "error" and health["error"] == f"ModelLoadFailed: {error}"
            why = "failed or did not answer within 1 s" if fault == "hang" else "answered HTTP 503"
            assert error.startswith(f"could not read {settings.model}/{SHARD}: Blob storage {why}")
            assert proxy.faulted == 3, "the read was tried three times"
            done = [s["name"] for s in health["load"]["stages"] if s["seconds"] is not None]
            assert "component text_encoder_4" in done and health["load"]["stage"] == "component transformer"
            assert service.runner._engine is None  # nothing half-loaded serves

            proxy.fault = None  # storage answers again
            result = await client.call_tool("generate_image", {"prompt": "after the fault", "steps": 2})
            assert not result.is_error, result.content
            assert service.health().body()["status"] == "ready"
