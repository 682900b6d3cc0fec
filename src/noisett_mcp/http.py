"""The streamable-HTTP ASGI app: /mcp, /healthz and /health, Entra auth, DNS-rebinding protection and CORS.

Stateless (any replica can answer any request) but with SSE responses: JSON responses would drop the
progress notifications that long generations depend on. A client's cancel arrives in a POST of its own,
which the SDK cannot match to the request in stateless mode: `CancelNotifications` does.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from noisett_mcp import auth
from noisett_mcp.auth.caller import current_caller
from noisett_mcp.health import health_response
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from noisett_mcp.sources import MAX_SOURCE_BYTES

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

# Largest POST body read to look for a cancel: a notification is tiny, a tools/call with a long prompt
# is a few kB; anything bigger passes through unread.
PEEK_BYTES = 64 * 1024
# The largest request body: a source image at its cap, base64-encoded, plus the rest of the JSON-RPC call.
REQUEST_OVERHEAD_BYTES = 256 * 1024
MAX_BODY_BYTES = (MAX_SOURCE_BYTES + 2) // 3 * 4 + REQUEST_OVERHEAD_BYTES


class CancelNotifications:
    """Over stateless HTTP a client's `notifications/cancelled` arrives in a POST of its own, on a fresh
    transport that does not know the request, and the SDK acknowledges it (202) and drops it. This
    layer lets the SDK answer first (its Host, Origin and version checks apply), then cancels the
    caller's call through the service. It sits inside the auth layers: the caller is known."""

    def __init__(self, app: ASGIApp, service: Noisett, path: str) -> None:
        self.app, self.service, self.path = app, service, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        body = b""
        while len(body) <= PEEK_BYTES:
            message = await receive()
            received.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        else:
            body = b""  # too big to be a notification: pass it on unread
        status: list[int] = []

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, replay, send_status)
        request_id = cancelled_request_id(body)
        if request_id is not None and status == [202]:
            owner = current_caller().owner
            found = await self.service.cancel_call(owner, request_id)
            log.info(
                "cancel for request %r of %s: %s", request_id, owner, "stopping" if found else "no such call"
            )


class BodyLimit:
    """Refuses a request whose declared body is over MAX_BODY_BYTES with a 413 that says the limit and why,
    before auth and before anything is read. The SDK applies the same limit to a body sent in chunks
    without a length, while it reads it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                message = (
                    f"request body is {int(declared):,} bytes; the most this server accepts is "
                    f"{MAX_BODY_BYTES:,} bytes: a source image of at most {MAX_SOURCE_BYTES // 2**20} MiB, "
                    "base64-encoded, with the rest of the call"
                )
                await PlainTextResponse(message, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def cancelled_request_id(body: bytes) -> str | int | None:
    """The request id of a `notifications/cancelled` body, else None."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("method") != "notifications/cancelled" or "id" in message:
        return None
    params = message.get("params")
    request_id = params.get("requestId") if isinstance(params, dict) else None
    return request_id if isinstance(request_id, str | int) and not isinstance(request_id, bool) else None


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def transport_security(allowed_hosts: list[str], cors_origins: list[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection: loopback names always, with a port or without (a local reverse proxy,
    or a server on port 80, sends the bare name), plus the configured public host names."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*LOOPBACK_HOSTS, *(f"{host}:*" for host in LOOPBACK_HOSTS), *allowed_hosts],
        allowed_origins=[
            *(f"http://{host}" for host in LOOPBACK_HOSTS),
            *(f"http://{host}:*" for host in LOOPBACK_HOSTS),
            *cors_origins,
        ],
    )


def is_probe_host(host: str | None) -> bool:
    """A Host header that names a private IP address: what a platform's health probe sends (Container
    Apps' probes come from the kubelet, which addresses the replica's own IP). No DNS name is involved,
    so it cannot be a rebinding attack."""
    try:
        name = urlsplit(f"//{host}").hostname if host else None
        return name is not None and ipaddress.ip_address(name).is_private
    except ValueError:
        return False


def health_endpoint(service: Noisett, security: TransportSecuritySettings) -> Any:
    """/healthz and /health: behind the same Host and Origin check as /mcp, and open to the probes."""
    guard = TransportSecurityMiddleware(security)

    async def health(request: Request) -> Response:
        if not is_probe_host(request.headers.get("host")):
            refused = await guard.validate_request(request)
            if refused is not None:
                return refused
        return health_response(service.health())

    return health


def create_app(service: Noisett) -> Starlette:
    """The ASGI app. Its lifespan runs the service: the generation worker and the model preload.
    With AZURE_AD_TENANT_ID and AZURE_AD_CLIENT_ID set, every route but health and discovery needs an
    Entra access token."""
    settings = service.settings
    entra = auth.EntraConfig.from_settings(settings)  # a half-set config fails here, before serving
    mcp = build_server(service)
    service.serve_remote_clients()

    security = transport_security(settings.allowed_hosts, settings.cors_origins)
    health = health_endpoint(service, security)
    mcp.custom_route("/healthz", methods=["GET"])(health)
    mcp.custom_route("/health", methods=["GET"])(health)

    app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=False,
        transport_security=security,
        host=settings.host,
        max_request_body_size=MAX_BODY_BYTES,
    )
    mcp_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Starlette) -> AsyncIterator[None]:
        async with service, mcp_lifespan(app_):
            service.start_preload()  # a replica reports `loading` on /healthz until the model is ready
            yield

    app.router.lifespan_context = lifespan
    app.add_middleware(
        CancelNotifications, service=service, path=MCP_PATH
    )  # inside auth: the caller is known
    if entra is not None:
        auth.install(app, entra, MCP_PATH)  # inside CORS: a browser must be able to read a 401
    app.add_middleware(BodyLimit)  # before auth: an oversized body costs nothing
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Mcp-Session-Id", "Mcp-Protocol-Version"],
            expose_headers=["Mcp-Session-Id", "WWW-Authenticate"],
        )
    return app
