"""The Entra gate on the streamable-HTTP app: RFC 9728 protected-resource metadata, and 401/403 answers
with the `WWW-Authenticate` challenge MCP clients follow to sign in.

The SDK's own `RequireAuthMiddleware` guards a single route, needs the public URL fixed in advance and
sends no `scope` in its challenge, so the gate is ours; the SDK's `BearerAuthBackend`,
`AuthContextMiddleware` and `ProtectedResourceMetadata` are used as they are.
"""

from __future__ import annotations

import logging

from mcp.server.auth.json_response import PydanticJSONResponse
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.auth.routes import build_resource_metadata_url, cors_middleware
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from noisett_mcp.auth.caller import identity_problem
from noisett_mcp.auth.config import EntraConfig
from noisett_mcp.auth.verifier import EntraTokenVerifier, denial

log = logging.getLogger(__name__)

METADATA_PATH = "/.well-known/oauth-protected-resource"
# Discovery documents and health probes answer without a token; every other path needs one.
OPEN_PATHS = frozenset({"/healthz", "/health"})
OPEN_PREFIX = "/.well-known/"
# The metadata's caching: a fixed NOISETT_PUBLIC_URL makes it the same for everyone; without one it is
# built from the request's Host and X-Forwarded-Proto, so caches must key on those and keep it briefly.
FIXED_CACHE = {"Cache-Control": "public, max-age=3600"}
PER_HOST_CACHE = {"Cache-Control": "public, max-age=60", "Vary": "Host, X-Forwarded-Proto"}


def public_base_url(conn: HTTPConnection, public_url: str | None = None) -> str:
    """This server's origin as the client sees it: NOISETT_PUBLIC_URL when set; otherwise the request's
    Host, with the scheme from X-Forwarded-Proto behind a TLS-terminating proxy (Container Apps ingress)."""
    if public_url:
        return public_url
    proto = conn.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    scheme = proto if proto in ("http", "https") else conn.url.scheme
    return f"{scheme}://{conn.url.netloc}"


class EntraGate:
    """Answers 401 (no or bad token) or 403 (valid token, not allowed) before any route but the open
    ones, with the RFC 6750 challenge that carries `resource_metadata` and `scope` (RFC 9728, MCP)."""

    def __init__(self, app: ASGIApp, config: EntraConfig, mcp_path: str) -> None:
        self.app = app
        self.config = config
        self.mcp_path = mcp_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        user = scope.get("user")
        if not isinstance(user, AuthenticatedUser):
            conn = HTTPConnection(scope)
            if conn.headers.get("authorization", "")[:7].lower() == "bearer ":
                error = "invalid_token"
                description = "the access token is malformed, expired, or not issued for this server"
            else:
                error, description = None, f"sign in with Microsoft Entra ID for {self.config.scope}"
            response = self._challenge(conn, 401, error, description)
        elif (problem := identity_problem(user.access_token.claims or {})) is not None:
            # Signed by Entra for this app, but naming nobody: never let it act as `local`.
            log.info("refused a token without a principal: %s", problem)
            response = self._challenge(HTTPConnection(scope), 401, "invalid_token", problem)
        elif (reason := denial(user.access_token.claims or {}, self.config)) is not None:
            log.info("refused user %s: %s", (user.access_token.claims or {}).get("oid"), reason)
            response = self._challenge(HTTPConnection(scope), 403, "insufficient_scope", reason)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def _challenge(self, conn: HTTPConnection, status: int, error: str | None, description: str) -> Response:
        resource = AnyHttpUrl(public_base_url(conn, self.config.public_url) + self.mcp_path)
        params = {
            # RFC 6750 §3.1: a request without credentials gets no error code.
            "error": error,
            "error_description": description if error else None,
            "resource_metadata": str(build_resource_metadata_url(resource)),
            "scope": self.config.scope,
        }
        challenge = ", ".join(f'{k}="{_quoted(v)}"' for k, v in params.items() if v is not None)
        body = {"error": error or "unauthorized", "error_description": description}
        return JSONResponse(body, status_code=status, headers={"WWW-Authenticate": f"Bearer {challenge}"})


def _quoted(value: str) -> str:
    return value.replace("\\", "/").replace('"', "'")


def install(app: Starlette, config: EntraConfig, mcp_path: str) -> EntraTokenVerifier:
    """Guard every route of `app` with Entra auth and publish the protected-resource metadata.
    Call before any other middleware that must stay outside the gate (CORS)."""
    verifier = EntraTokenVerifier(config)

    async def metadata(request: Request) -> Response:
        document = ProtectedResourceMetadata(
            resource=AnyHttpUrl(public_base_url(request, config.public_url) + mcp_path),
            authorization_servers=[AnyHttpUrl(config.authorization_server)],
            scopes_supported=[config.scope],
            bearer_methods_supported=["header"],
            resource_name="Noisett",
        )
        return PydanticJSONResponse(document, headers=FIXED_CACHE if config.public_url else PER_HOST_CACHE)

    # The path-suffixed document (RFC 9728 §3.1) and the root one that older clients try first.
    for path in (METADATA_PATH + mcp_path, METADATA_PATH):
        app.router.routes.append(
            Route(path, cors_middleware(metadata, ["GET", "OPTIONS"]), methods=["GET", "OPTIONS"])
        )
    # Added innermost first: authentication, then the auth context for tool handlers, then the gate.
    app.add_middleware(EntraGate, config=config, mcp_path=mcp_path)
    app.add_middleware(AuthContextMiddleware)
    app.add_middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier))
    return verifier
