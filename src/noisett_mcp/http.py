"""The streamable-HTTP ASGI app: /mcp, /healthz and /health, Entra auth, DNS-rebinding protection and CORS.

Stateless (any replica can answer any request) but with SSE responses: JSON responses would drop the
progress notifications that long generations depend on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from noisett_mcp import auth
from noisett_mcp.health import health_response
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett

MCP_PATH = "/mcp"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def transport_security(allowed_hosts: list[str], cors_origins: list[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection: loopback names always, plus the configured public host names."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", *allowed_hosts],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*", *cors_origins],
    )


def create_app(service: Noisett) -> Starlette:
    """The ASGI app. Its lifespan runs the service: the generation worker and the model preload.
    With AZURE_AD_TENANT_ID and AZURE_AD_CLIENT_ID set, every route but health and discovery needs an
    Entra access token."""
    settings = service.settings
    entra = auth.EntraConfig.from_settings(settings)  # a half-set config fails here, before serving
    mcp = build_server(service)

    async def health(request: Request) -> JSONResponse:
        return health_response(service.health())

    mcp.custom_route("/healthz", methods=["GET"])(health)
    mcp.custom_route("/health", methods=["GET"])(health)

    app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=False,
        transport_security=transport_security(settings.allowed_hosts, settings.cors_origins),
        host=settings.host,
    )
    mcp_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Starlette) -> AsyncIterator[None]:
        async with service, mcp_lifespan(app_):
            service.start_preload()  # a replica reports `loading` on /healthz until the model is ready
            yield

    app.router.lifespan_context = lifespan
    if entra is not None:
        auth.install(app, entra, MCP_PATH)  # inside CORS: a browser must be able to read a 401
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Mcp-Session-Id", "Mcp-Protocol-Version"],
            expose_headers=["Mcp-Session-Id", "WWW-Authenticate"],
        )
    return app
