"""The TypeScript SDK's client (@modelcontextprotocol/sdk, pinned in package.json) drives Noisett over
stdio, over streamable HTTP, and through mcp-remote's stdio bridge: schemas, a generation with
progress, get_image, the image:// resource, and an AbortController that must stop the GPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.interop.node import run_client, server_env
from tests.support import cli_http_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOOLS = ["cancel_image", "generate_image", "get_image", "list_styles"]


def _check_calls(report: dict[str, Any]) -> None:
    """Everything but the abort: schemas, generate_image with progress, get_image, image://."""
    assert report["tools"] == TOOLS
    assert report["schema_errors"] == [], "strict Ajv (draft 2020-12) refused a schema"
    assert len(report["schemas_compiled"]) == 2 * len(TOOLS), "every tool has an input and output schema"
    generate = report["generate"]
    assert not generate["is_error"], generate["text"]
    assert generate["structured_valid"] is True, generate["structured_errors"]
    progress = generate["progress"]
    # The SDK may drop the last notifications before a response (see client.mjs): not all are seen.
    assert progress and progress == sorted(set(progress)), f"progress must rise: {progress}"
    assert generate["content_types"] == ["text", "image", "resource_link"]
    assert report["get_image"] == {
        "is_error": False,
        "status": "done",
        "structured_valid": True,
        "content_types": ["text", "image", "resource_link"],
    }
    assert report["resource"] == {
        "uri": f"image://{generate['image_id']}",
        "mime_type": "image/png",
        "png": True,
    }


def _check_abort(report: dict[str, Any]) -> None:
    """The aborted job stopped: its images end `cancelled`, and the next short job's first step came
    about as soon as it does alone. The slack is generous (5 s, or twice the time alone, more than the
    job alone: a busy CI machine varies that much); an ignored cancel makes the next job wait out the
    rest of a 4×100-step job."""
    abort, alone = report["abort"], report["alone"]
    print(
        f"{report['transport']}: first step alone {alone['first_step_s']:.2f} s, "
        f"cancel to the next job's first step {abort['cancel_to_first_step_s']:.2f} s"
    )
    assert not abort["outcome"]["returned"], "the aborted call must reject on the client"
    assert len(abort["image_texts"]) == 4
    assert all("cancelled" in text for text in abort["image_texts"]), abort["image_texts"]
    assert not abort["next_is_error"] and abort["next_status"] == "done"
    waited = abort["cancel_to_first_step_s"]
    assert waited < alone["first_step_s"] + max(5.0, 2 * alone["first_step_s"]), (
        f"after the abort the next job's first step came {waited:.2f} s later; "
        f"alone it comes after {alone['first_step_s']:.2f} s"
    )


async def test_ts_sdk_over_stdio(tmp_path: Path, model_cache: Path) -> None:
    report = await run_client(
        {
            "transport": "stdio",
            "command": sys.executable,
            "args": ["-m", "noisett_mcp", "serve"],
            "env": server_env(tmp_path, model_cache),
            "dataDir": str(tmp_path / "data"),
        }
    )
    _check_calls(report)
    _check_abort(report)


async def test_ts_sdk_over_streamable_http(tmp_path: Path, model_cache: Path) -> None:
    async with cli_http_server(server_env(tmp_path, model_cache), tmp_path / "server.log") as base:
        report = await run_client(
            {"transport": "http", "url": f"{base}/mcp", "dataDir": str(tmp_path / "data")}
        )
    _check_calls(report)
    _check_abort(report)


async def test_mcp_remote_bridges_stdio_to_http(tmp_path: Path, model_cache: Path) -> None:
    async with cli_http_server(server_env(tmp_path, model_cache), tmp_path / "server.log") as base:
        report = await run_client(
            {
                "transport": "mcp-remote",
                "url": f"{base}/mcp",
                "configDir": str(tmp_path / "mcp-auth"),
                "dataDir": str(tmp_path / "data"),
            }
        )
    _check_calls(report)
    _check_abort(report)
