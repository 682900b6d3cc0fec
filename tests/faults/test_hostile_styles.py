"""Hostile files in the styles folder (issue 14, findings 1 and 6), against the real catalog and a real MCP
session in memory: a manifest nested 600 levels deep, a FIFO named like a manifest, links out of the
folder, oversized files, and a slow hash that must not hold the catalog lock. One bad file never takes
down the others, and nothing hangs."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError

from noisett_mcp.config import Settings
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.styles.manifest import DEMO_STYLES_DIR, Style, StyleManifest
from tests.faults.common import Fifos
from tests.support import add_style

pytestmark = pytest.mark.anyio

LORA = DEMO_STYLES_DIR / "demo-flat.safetensors"  # a real LoRA for the demo model
MAX_PREVIEW_BYTES = 8 * 1024 * 1024  # the cap in styles/files.py, as the README states it
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def manifest(folder: Path, stem: str, **fields: Any) -> Path:
    return add_style(folder, stem, None, **fields)


def good_style(folder: Path, stem: str, **fields: Any) -> Path:
    return add_style(folder, stem, LORA, **fields)


async def listed(client: Client) -> dict[str, dict[str, Any]]:
    result = await client.call_tool("list_styles", {})
    assert not result.is_error, result.content[0].text
    return {style["name"]: style for style in result.structured_content["styles"]}


async def refusal(client: Client, style: str) -> str:
    result = await client.call_tool("generate_image", {"prompt": "a lighthouse", "style": style, "steps": 1})
    assert result.is_error
    return result.content[0].text


@pytest.fixture
def styles(settings: Settings) -> Path:
    folder = settings.resolved_styles_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.faults
async def test_a_manifest_nested_600_deep_is_refused_and_everything_else_keeps_working(
    client: Client, styles: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good_style(styles, "good")
    (styles / "deep.toml").write_text("x = " + "[" * 600 + "]" * 600 + "\n")  # 1.2 kB
    caplog.set_level(logging.DEBUG)

    names = await listed(client)
    assert "good" in names and "deep" not in names
    assert "nested too deeply" in await refusal(client, "deep")
    result = await client.call_tool("generate_image", {"prompt": "a lighthouse", "steps": 1, "seed": 1})
    assert not result.is_error, result.content[0].text
    assert result.structured_content["images"][0]["status"] == "done"
    result = await client.call_tool("generate_image", {"prompt": "a lighthouse", "steps": 1, "style": "good"})
    assert not result.is_error, result.content[0].text
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]
    assert not tracebacks, tracebacks[0].getMessage()


async def test_a_fifo_named_like_a_manifest_never_hangs_a_style_call(
    client: Client, styles: Path, fifos: Fifos
) -> None:
    good_style(styles, "good")
    fifos.make(styles / "pipe.toml")
    manifest(styles, "piped", weights="pipe.safetensors")
    fifos.make(styles / "pipe.safetensors")
    started = time.monotonic()
    for _ in range(50):  # past the size of the worker thread pool (40)
        names = await listed(client)
    pipe, piped = await refusal(client, "pipe"), await refusal(client, "piped")
    elapsed = time.monotonic() - started
    assert not fifos.fired, f"a style call hung on the FIFO (released by the watchdog after {elapsed:.0f} s)"
    assert "good" in names and "pipe" not in names and "piped" not in names
    assert "named pipe (FIFO), not a regular file" in pipe
    assert "named pipe (FIFO)" in piped


async def test_links_out_of_the_styles_folder_are_not_followed(
    client: Client, styles: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_text("password=hunter2\n")
    shutil.copyfile(LORA, outside / "foreign.safetensors")
    good_style(outside, "elsewhere")

    # A preview that is a link out of the folder: the style is offered, the preview is not served.
    good_style(styles, "peek", preview="peek.png")
    (styles / "peek.png").symlink_to(outside / "secret.png")
    # Weights that are a link out of the folder: never loaded, the style is refused.
    manifest(styles, "borrowed")
    (styles / "borrowed.safetensors").symlink_to(outside / "foreign.safetensors")
    # A manifest that is a link out of the folder.
    (styles / "elsewhere.toml").symlink_to(outside / "elsewhere.toml")
    # Links that stay inside the folder are fine.
    (styles / "shared").mkdir()
    shutil.copyfile(LORA, styles / "shared" / "lora.safetensors")
    (styles / "shared" / "inner.png").write_bytes(PNG)
    manifest(styles, "inner", preview="inner.png")
    (styles / "inner.safetensors").symlink_to(styles / "shared" / "lora.safetensors")
    (styles / "inner.png").symlink_to("shared/inner.png")

    names = await listed(client)
    assert set(names) >= {"peek", "inner"} and not {"borrowed", "elsewhere"} & set(names)
    assert names["peek"]["preview"] is None
    with pytest.raises(MCPError) as refused:
        await client.read_resource("style://peek/preview")
    assert "hunter2" not in str(refused.value)
    assert "leads outside the styles folder" in await refusal(client, "borrowed")
    assert "leads outside the styles folder" in await refusal(client, "elsewhere")
    assert names["inner"]["preview"] == "style://inner/preview"
    served = (await client.read_resource("style://inner/preview")).contents[0]
    assert served.blob  # the inside preview is served
    assert str(outside) not in await refusal(client, "borrowed"), "the refusal names a path outside"


async def test_oversized_manifests_and_previews_are_refused_with_a_reason(
    client: Client, styles: Path
) -> None:
    good_style(styles, "good")
    huge = manifest(styles, "huge")
    with huge.open("a") as f:  # a valid manifest, padded with comments past the cap
        f.write(("# padding\n" * 1000) * 10)
    shutil.copyfile(LORA, styles / "huge.safetensors")
    good_style(styles, "big-preview", preview="big.png")
    with (styles / "big.png").open("wb") as f:
        f.write(PNG)
        f.truncate(MAX_PREVIEW_BYTES + 1)  # sparse: costs no disk

    names = await listed(client)
    assert "huge" not in names and "good" in names
    assert "larger than 64 KiB" in await refusal(client, "huge")
    assert names["big-preview"]["preview"] is None
    with pytest.raises(MCPError):
        await client.read_resource("style://big-preview/preview")


def big_lora(path: Path, megabytes: int) -> None:
    """A valid safetensors LoRA header over a large, sparse tensor: slow to hash, free to store."""
    count = megabytes * 1024 * 1024 // 4
    header = json.dumps(
        {"transformer.x.lora_A.weight": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + count * 4)


def test_a_slow_hash_does_not_hold_the_catalog_lock(settings: Settings, styles: Path) -> None:
    big_lora(styles / "big.safetensors", 768)
    manifest(styles, "big")
    catalog = StyleCatalog(settings, styles)
    other = Style(
        StyleManifest.model_validate(tomllib.loads(manifest(styles, "other").read_text())),
        styles / "other.toml",
        None,
        None,
        frozenset(),
    )
    scan = threading.Thread(target=catalog.refresh)
    started = time.monotonic()
    scan.start()
    time.sleep(0.1)  # the scan is hashing 768 MB by now
    asked = time.monotonic()
    catalog.refuse(other, "a test")  # takes the catalog lock
    waited = time.monotonic() - asked
    still_hashing = scan.is_alive()
    scan.join(60)
    total = time.monotonic() - started
    print(f"hash of 768 MB took {total:.2f} s; refuse() waited {waited * 1000:.1f} ms meanwhile")
    assert still_hashing, f"refuse() waited {waited:.2f} s, until the {total:.2f} s scan let the lock go"
    assert waited < total / 4
