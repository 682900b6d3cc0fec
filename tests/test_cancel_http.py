"""A client's `notifications/cancelled`, posted on its own over stateless streamable HTTP (as the
TypeScript SDK and mcp-remote send it), stops the caller's job at its next step, and only the caller's.
Raw HTTP, as in issue 12's curl reproduction; real Entra-shaped tokens for the callers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest

from noisett_mcp.config import Settings
from noisett_mcp.http import cancelled_request_id, create_app
from noisett_mcp.jobs.base import Job
from noisett_mcp.service import Noisett
from tests.jwks import JwksServer, SigningKey, Tenant
from tests.support import poll_until, serve_asgi

pytestmark = pytest.mark.anyio

TENANT = Tenant(str(uuid.uuid4()), str(uuid.uuid4()))

HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}


# The 2026-07-28 stateless revision: every request says its version and capabilities, and names its
# method (and tool) in headers too.
MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def _call(request_id: int | str, version: str = "2025-11-25") -> dict[str, Any]:
    arguments = {"prompt": "a long job", "steps": 100, "count": 4}
    meta = {"progressToken": "p"} | (MODERN_META if version == MODERN else {})
    params = {"name": "generate_image", "arguments": arguments, "_meta": meta}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def _headers(version: str, method: str, name: str | None = None) -> dict[str, str]:
    if version != MODERN:
        return HEADERS
    return (
        HEADERS
        | {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
        | ({"Mcp-Name": name} if name else {})
    )


def _cancel(request_id: int | str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}


class Call:
    """A tools/call POST whose SSE stream is read in the background."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @property
    def result(self) -> dict[str, Any] | None:
        return next((event for event in self.events if "id" in event), None)

    async def run(
        self, base: str, request_id: int | str, headers: dict[str, str], version: str = "2025-11-25"
    ) -> None:
        body = _call(request_id, version)
        async with (
            httpx2.AsyncClient(timeout=120) as http,
            http.stream("POST", f"{base}/mcp", json=body, headers=headers) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    self.events.append(json.loads(line.removeprefix("data: ")))


async def _post_cancel(base: str, request_id: int | str, headers: dict[str, str]) -> int:
    async with httpx2.AsyncClient() as http:
        return (await http.post(f"{base}/mcp", json=_cancel(request_id), headers=headers)).status_code


async def _running(service: Noisett, steps: int = 2) -> Job:
    await poll_until(lambda: service.queue.running is not None and service.queue.running.steps_done >= steps)
    job = service.queue.running
    assert job is not None
    return job


@pytest.mark.parametrize("version", ["2025-11-25", MODERN])
async def test_a_cancel_notification_stops_the_job_at_its_next_step(settings: Settings, version: str) -> None:
    service = Noisett(settings)
    async with serve_asgi(create_app(service)) as base, anyio.create_task_group() as tg:
        call = Call()
        tg.start_soon(call.run, base, 77, _headers(version, "tools/call", "generate_image"), version)
        job = await _running(service)
        assert await _post_cancel(base, 77, _headers(version, "notifications/cancelled")) == 202
        steps_at_cancel = job.steps_done
        await poll_until(lambda: call.result is not None, timeout=30)
    assert job.status == "cancelled"
    assert job.steps_done <= steps_at_cancel + 1, "it stops at the next step"
    assert call.result is not None and call.result["result"]["isError"]
    assert "cancelled" in call.result["result"]["content"][0]["text"]


async def test_a_cancel_from_another_caller_or_for_another_id_changes_nothing(
    make_settings: Callable[..., Settings], jwks: JwksServer, key: SigningKey
) -> None:
    settings = make_settings(
        azure_ad_tenant_id=TENANT.tenant_id, azure_ad_client_id=TENANT.client_id, auth_jwks_url=jwks.url
    )
    alice, bob = (HEADERS | {"Authorization": f"Bearer {key.sign(TENANT.v2_claims())}"} for _ in range(2))
    service = Noisett(settings)
    async with serve_asgi(create_app(service)) as base, anyio.create_task_group() as tg:
        call = Call()
        tg.start_soon(call.run, base, 5, alice)
        job = await _running(service)
        assert await _post_cancel(base, 5, bob) == 202  # Bob's request 5 is not Alice's
        assert await _post_cancel(base, "5x", alice) == 202  # nor is Alice's request "5x"
        steps = job.steps_done
        await poll_until(lambda: job.steps_done >= steps + 3)  # the job goes on
        assert not job.finished and not job.cancel_requested
        assert await _post_cancel(base, 5, alice) == 202
        await poll_until(lambda: call.result is not None, timeout=30)
    assert job.status == "cancelled"


async def test_a_dropped_connection_still_cancels(settings: Settings) -> None:
    service = Noisett(settings)
    async with serve_asgi(create_app(service)) as base:
        with anyio.move_on_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(Call().run, base, 9, HEADERS)
                job = await _running(service)
                tg.cancel_scope.cancel()  # the client goes away without a word
        await poll_until(lambda: job.finished, timeout=30)
    assert job.status == "cancelled"


def test_only_a_cancel_notification_names_a_request() -> None:
    assert cancelled_request_id(json.dumps(_cancel(77)).encode()) == 77
    assert cancelled_request_id(json.dumps(_cancel("a-1")).encode()) == "a-1"
    assert cancelled_request_id(json.dumps(_call(77)).encode()) is None  # a request, not a notification
    assert cancelled_request_id(json.dumps(_cancel(77) | {"id": 1}).encode()) is None
    assert cancelled_request_id(json.dumps(_cancel(True)).encode()) is None
    assert cancelled_request_id(b"not json") is None
    assert cancelled_request_id(b"[]") is None
