"""`noisett-mcp model prepare` writes a pipeline to Blob (Azurite) with a manifest; the server streams it
and renders the same pixels as from the source folder, and refuses it when its settings do not fit the
manifest (quantization, variant)."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from azure.storage.blob.aio import BlobServiceClient
from mcp import Client

from noisett_mcp.cli import main
from noisett_mcp.config import Settings, demo_model_folder
from noisett_mcp.engine.demo import write_demo_model
from noisett_mcp.errors import ModelUnavailable
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from noisett_mcp.weights.manifest import MANIFEST, check_manifest
from tests.azurite import Azurite, blob_settings
from tests.test_model_streaming import pixels

pytestmark = pytest.mark.anyio


async def test_a_prepared_demo_pipeline_round_trips_through_blob_and_is_checked_against_the_settings(
    make_settings: Callable[..., Settings],
    azurite: Azurite,
    model_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = write_demo_model(demo_model_folder(model_cache))
    dest = f"blob://models-{secrets.token_hex(4)}/prepared/demo"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("NOISETT_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("MODEL_CACHE_DIR", str(model_cache))
    with pytest.raises(SystemExit) as done:  # the command runs its own event loop: in a thread
        await anyio.to_thread.run_sync(main, ["model", "prepare", str(source), dest, "--variant", "fast"])
    assert done.value.code == 0

    container, prefix = dest.removeprefix("blob://").split("/", 1)
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as account:
        blob = account.get_blob_client(container, f"{prefix}/{MANIFEST}")
        manifest_text = await (await blob.download_blob()).readall()
        prepared = json.loads(manifest_text)
    assert prepared["source"] == str(source) and prepared["variant"] == "fast"
    assert prepared["quantization"] == "none" and {"diffusers", "torch", "transformers"} <= set(
        prepared["versions"]
    )

    local = make_settings(model=str(source), variant="fast")
    async with Noisett(local) as service, Client(build_server(service)) as client:
        expected = await pixels(service, client)
    served = make_settings(**blob_settings(azurite), model=dest, variant="fast", model_cache_dir=None)
    async with Noisett(served) as service, Client(build_server(service)) as client:
        assert await pixels(service, client) == expected  # tolerance: none (float32, the same weights)

    # NF4 needs a CUDA GPU, and the engine refuses it on a CPU before it reads a byte (issue 25), so the
    # manifest's quantization check is made here on the manifest that was uploaded.
    with pytest.raises(
        ModelUnavailable, match="was prepared with quantization 'none', but NOISETT_QUANTIZE=nf4"
    ):
        check_manifest(manifest_text, quantize="nf4", variant="fast", model=dest, where=dest, versions={})
    for overrides, refusal in (
        ({"quantize": "nf4"}, "NOISETT_QUANTIZE=nf4 quantizes with bitsandbytes on a CUDA GPU"),
        ({"variant": "dev"}, "holds HiDream-I1-Fast (its manifest says so), but NOISETT_VARIANT=dev"),
    ):
        wrong = served.model_copy(update={"model_cache_dir": tmp_path / "cache", **overrides})
        async with Noisett(wrong) as service:
            with pytest.raises(ModelUnavailable, match=refusal.replace("(", r"\(").replace(")", r"\)")):
                await service.runner.engine()


async def test_prepare_writes_a_separate_llama_in_so_that_it_streams_with_the_pipeline(
    make_settings: Callable[..., Settings], model_cache: Path, tmp_path: Path
) -> None:
    source = write_demo_model(demo_model_folder(model_cache))
    llama, bare = tmp_path / "llama", tmp_path / "hidream-without-llama"
    shutil.copytree(source, bare, ignore=shutil.ignore_patterns("text_encoder_4", "tokenizer_4"))
    index = json.loads((bare / "model_index.json").read_text())
    index.pop("text_encoder_4"), index.pop("tokenizer_4")  # as the HiDream repos ship it
    (bare / "model_index.json").write_text(json.dumps(index))
    for part in ("text_encoder_4", "tokenizer_4"):  # as a Llama repo holds it: one folder
        shutil.copytree(source / part, llama, dirs_exist_ok=True)
    prepared = tmp_path / "prepared"
    with pytest.raises(SystemExit) as done:
        await anyio.to_thread.run_sync(
            main, ["model", "prepare", str(bare), str(prepared), "--variant", "fast", "--llama", str(llama)]
        )
    assert done.value.code == 0

    async with (
        Noisett(make_settings(model=str(source), variant="fast")) as service,
        Client(build_server(service)) as client,
    ):
        expected = await pixels(service, client)
    async with (
        Noisett(make_settings(model=str(prepared), variant="fast")) as service,
        Client(build_server(service)) as client,
    ):
        assert await pixels(service, client) == expected
        stages = [stage["name"] for stage in service.health().body()["load"]["stages"]]
        assert "component text_encoder_4" in stages  # streamed, not loaded apart
