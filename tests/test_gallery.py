"""The gallery (MCP Apps): what the server declares and serves, what it may reach, that clients without
Apps get the results they always got, and cancel_image. The gallery in a browser:
tests/interop/test_gallery_browser.py."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from mcp import Client
from mcp.client import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp.types import CallToolResult

from noisett_mcp.app import gallery
from noisett_mcp.config import Settings
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.support import poll_until

pytestmark = pytest.mark.anyio

AZURITE_STYLE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


def apps_client(service: Noisett) -> Client:
    """A client that negotiates MCP Apps, as Claude, VS Code and the other App hosts do."""
    return Client(build_server(service), extensions=[advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})])


async def test_generate_image_and_get_image_name_the_gallery_served_as_an_app(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    for name in ("generate_image", "get_image"):
        assert tools[name].meta == {"ui": {"resourceUri": gallery.GALLERY_URI}}
    assert tools["list_styles"].meta is None and tools["cancel_image"].meta is None
    assert client.server_capabilities.extensions == {EXTENSION_ID: {}}
    contents = (await client.read_resource(gallery.GALLERY_URI)).contents
    assert len(contents) == 1 and contents[0].mime_type == APP_MIME_TYPE
    assert contents[0].text == gallery.html()
    # Without Blob storage the gallery may reach nothing at all: everything goes through the host.
    assert contents[0].meta == {
        "ui": {"csp": {"connectDomains": [], "resourceDomains": []}, "prefersBorder": True}
    }


def test_with_blob_storage_only_the_sas_host_is_allowed(make_settings: Callable[..., Settings]) -> None:
    service = Noisett(make_settings(azure_storage_connection_string=AZURITE_STYLE))  # not started: no I/O
    assert gallery.csp(service).model_dump(by_alias=True) == {
        "connectDomains": [],
        "resourceDomains": ["http://127.0.0.1:10000"],
        "frameDomains": None,
        "baseUriDomains": None,
    }
    account = service.store.account
    assert account is not None
    link = urlsplit(account.client.get_blob_client("generated-images", "x.png").url)
    assert f"{link.scheme}://{link.netloc}" == gallery.sas_origin(service)


class _Inventory(HTMLParser):
    """Every tag, URL-bearing attribute, script and style of a document."""

    URL_ATTRIBUTES = frozenset(
        {"src", "href", "action", "formaction", "srcset", "poster", "data", "background"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.code: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in self.URL_ATTRIBUTES or name.startswith("on"):
                self.urls.append((tag, name, value or ""))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in:
            self.code.append(data)


def test_the_gallery_reaches_no_origin_it_did_not_declare() -> None:
    """The declared CSP allows no connections and, without Blob, no remote images: so the document may
    hold no remote reference and no script API that opens a connection of its own."""
    document = _Inventory()
    document.feed(gallery.html())
    assert not {"link", "base", "iframe", "frame", "object", "embed", "form"} & set(document.tags)
    assert document.urls == []  # no src/href/on* attributes: scripts and styles are inline
    code = "\n".join(document.code)
    forbidden = [
        r"\bfetch\s*\(",
        r"XMLHttpRequest",
        r"WebSocket",
        r"EventSource",
        r"sendBeacon",
        r"importScripts",
        r"\bimport\s*\(",
        r"new\s+(Shared)?Worker",
        r"window\.open",
        r"\blocation\s*=",
        r"url\s*\(",
        r"@import",
        r"\b(?:https?|wss?|ftp)://",
    ]
    found = [pattern for pattern in forbidden if re.search(pattern, code)]
    assert found == [], f"the gallery may not use {found}"
    assert not re.search(r"\b(?:https?|wss?)://", gallery.html())
    assert "postMessage" in code  # the one way out: the host bridge


def _skeleton(result: CallToolResult, *, image_data: bool = True) -> str:
    """A result as JSON with the ids (random per call) blanked out, and the image data too where it
    carries them (a full PNG's text chunks hold its id and times)."""
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    if not image_data:
        for block in dumped["content"]:
            if block["type"] == "image":
                block["data"] = "DATA"
    return re.sub(r"[0-9a-f]{32}", "ID", json.dumps(dumped, sort_keys=True))


async def test_a_client_without_apps_gets_what_it_always_got(service: Noisett) -> None:
    """Per the extension's rule, a UI-bound tool's result does not depend on the client having Apps: the
    same seeded call gives byte-identical results (ids aside) to a client with Apps and one without, in
    the shape generate_image has always had."""
    arguments = {"prompt": "a lighthouse at dusk", "steps": 1, "count": 2, "seed": 7}
    async with Client(build_server(service)) as plain, apps_client(service) as with_apps:
        assert plain.server_capabilities.extensions is not None
        made = [await session.call_tool("generate_image", arguments) for session in (plain, with_apps)]
        assert _skeleton(made[0]) == _skeleton(made[1])
        result = made[0]
        assert [block.type for block in result.content] == ["text", *["image", "resource_link"] * 2]
        assert set(result.structured_content) == {"images", "message"}
        assert not {"ui", "ui/resourceUri"} & set(result.meta or {})
        assert len(_skeleton(result).encode()) < 1024 * 1024
        got = []
        for session, generated in zip((plain, with_apps), made, strict=True):
            image_id = generated.structured_content["images"][0]["id"]
            got.append(await session.call_tool("get_image", {"image_id": image_id}))
        assert _skeleton(got[0], image_data=False) == _skeleton(got[1], image_data=False)
        assert [block.type for block in got[0].content] == ["text", "image", "resource_link"]


async def _status(client: Client, image_id: str) -> str:
    result = await client.call_tool("get_image", {"image_id": image_id})
    if result.is_error:
        return result.content[0].text
    return result.structured_content["image"]["status"]


async def test_cancel_image_stops_a_running_job_and_leaves_finished_ones(client: Client) -> None:
    started = await client.call_tool(
        "generate_image", {"prompt": "a long job", "steps": 100, "count": 2, "wait": False}
    )
    first, second = (image["id"] for image in started.structured_content["images"])
    await poll_until(lambda: _is(client, first, "running"), timeout=60)
    cancelled = await client.call_tool("cancel_image", {"image_id": first})
    assert not cancelled.is_error, cancelled.content
    await poll_until(lambda: _is_cancelled(client, first), timeout=30)
    assert "cancelled" in await _status(client, second)  # the job's other image stops with it
    again = await client.call_tool("cancel_image", {"image_id": first})
    assert again.content[0].text == f"Image {first} is cancelled."

    done = await client.call_tool("generate_image", {"prompt": "a quick one", "steps": 1})
    done_id = done.structured_content["images"][0]["id"]
    kept = await client.call_tool("cancel_image", {"image_id": done_id})
    assert kept.content[0].text == f"Image {done_id} was already done: nothing to cancel."
    assert await _status(client, done_id) == "done"


async def _is(client: Client, image_id: str, status: str) -> bool:
    return await _status(client, image_id) == status


async def _is_cancelled(client: Client, image_id: str) -> bool:
    return (await _status(client, image_id)).startswith(f"Image {image_id} cancelled: ")


async def test_cancel_image_of_an_unknown_or_malformed_id_says_what_ids_are(client: Client) -> None:
    unknown = await client.call_tool("cancel_image", {"image_id": "0" * 32})
    looked_up = await client.call_tool("get_image", {"image_id": "0" * 32})
    assert unknown.is_error and looked_up.is_error
    assert unknown.content[0].text.replace("cancel_image", "get_image") == looked_up.content[0].text
    malformed = await client.call_tool("cancel_image", {"image_id": "../etc"})
    assert malformed.is_error and "32 lowercase hexadecimal" in malformed.content[0].text
