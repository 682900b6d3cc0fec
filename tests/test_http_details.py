"""Small things real clients trip on: the Host check on loopback, /healthz behind it but open to a
platform's probes, clean tool descriptions, job ids, and crashes that are not argument errors."""

from __future__ import annotations

import inspect
import json

import httpx2
import pytest
from mcp import Client

from noisett_mcp.config import Settings
from noisett_mcp.http import create_app, is_probe_host
from noisett_mcp.service import Noisett
from noisett_mcp.storage.base import JobControl
from tests.support import serve_asgi

pytestmark = pytest.mark.anyio

LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-11-25",
}


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),  # a local reverse proxy, or a server on port 80, sends no port
        ("127.0.0.1", True),
        ("[::1]", True),
        ("localhost:8000", True),
        ("evil.example.com", False),
        ("localhost.evil.example.com", False),
        ("10.0.0.7:8000", False),  # an address is a probe's Host for /healthz, not for /mcp
    ],
)
async def test_the_host_check_on_mcp(settings: Settings, host: str, allowed: bool) -> None:
    async with serve_asgi(create_app(Noisett(settings))) as base, httpx2.AsyncClient() as http:
        response = await http.post(f"{base}/mcp", json=LIST_TOOLS, headers=MCP_HEADERS | {"Host": host})
    assert (response.status_code == 200) is allowed, (response.status_code, response.text)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost:8000", True),  # the Dockerfile's HEALTHCHECK
        ("localhost", True),
        ("10.0.0.7:8000", True),  # Container Apps' probes: the kubelet addresses the replica's IP
        ("[fd00::7]:8000", True),
        ("evil.example.com", False),
        ("8.8.8.8", False),  # a public address is no probe
    ],
)
async def test_health_is_behind_the_host_check_and_open_to_probes(
    settings: Settings, host: str, allowed: bool
) -> None:
    async with serve_asgi(create_app(Noisett(settings))) as base, httpx2.AsyncClient() as http:
        for path in ("/healthz", "/health"):
            response = await http.get(f"{base}{path}", headers={"Host": host})
            assert (response.status_code == 200) is allowed, (path, response.status_code)
            assert ("model" in response.text) is allowed


def test_only_private_addresses_are_probe_hosts() -> None:
    assert is_probe_host("10.1.2.3") and is_probe_host("192.168.0.5:80") and is_probe_host("[fd00::1]:8000")
    assert not is_probe_host("8.8.8.8") and not is_probe_host("example.com") and not is_probe_host(None)
    assert not is_probe_host("[not-an-address")


async def test_tool_descriptions_carry_no_source_indentation(client: Client) -> None:
    for tool in (await client.list_tools()).tools:
        assert tool.description and tool.description == inspect.cleandoc(tool.description), tool.name
        assert "\n " not in tool.description


async def test_a_job_id_is_no_image_id(client: Client, service: Noisett) -> None:
    """Every image's metadata carries its job id; given to get_image it reads like any unknown id."""
    made = await client.call_tool("generate_image", {"prompt": "a lighthouse", "steps": 1, "wait": False})
    image = made.structured_content["images"][0]
    record = await service.store.load_record(image["id"])
    assert record is not None
    await service.store.save_control(record.job_id, JobControl())  # a job's own record, beside the images
    errors = []
    for unknown in (record.job_id, "0" * 32):
        got = await client.call_tool("get_image", {"image_id": unknown})
        assert got.is_error and f"no image with id '{unknown}'" in got.content[0].text
        errors.append(got.content[0].text.replace(unknown, "ID"))
    assert errors[0] == errors[1]


async def test_a_crash_inside_a_tool_is_not_reported_as_an_argument_error(
    client: Client, settings: Settings
) -> None:
    """A record that no longer parses makes get_image fail inside; the arguments were fine."""
    image_id = "ab" * 16
    records = settings.data_dir / "images"
    records.mkdir(parents=True, exist_ok=True)
    (records / f"{image_id}.json").write_text(json.dumps({"id": image_id, "status": "done"}))
    got = await client.call_tool("get_image", {"image_id": image_id})
    assert got.is_error
    assert "Invalid arguments" not in got.content[0].text and "Field required" not in got.content[0].text
