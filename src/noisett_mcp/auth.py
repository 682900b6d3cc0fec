"""Microsoft Entra ID on the streamable-HTTP endpoint.

- `EntraTokenVerifier`: the mcp SDK's `TokenVerifier`, checking Entra access tokens with PyJWT against
  the tenant's signing keys (RS256 only, both issuers, both audiences, `tid`, `exp`/`nbf`).
- `denial`: the authorization rules that turn a valid token into a 403 (scope, app roles, groups).
- `install`: RFC 9728 protected-resource metadata, and a gate that answers 401/403 with the
  `WWW-Authenticate` challenge MCP clients follow to sign in.
- `current_caller`: who is calling, inside a tool handler; `local` over stdio or without auth.

The SDK's own `RequireAuthMiddleware` guards a single route, needs the public URL fixed in advance and
sends no `scope` in its challenge, so the gate is ours; the SDK's `BearerAuthBackend`,
`AuthContextMiddleware` and `ProtectedResourceMetadata` are used as they are.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import jwt
from mcp.server.auth.json_response import PydanticJSONResponse
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.routes import build_resource_metadata_url, cors_middleware
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from noisett_mcp import __version__
from noisett_mcp.config import Settings

log = logging.getLogger(__name__)

SCOPE_NAME = "access_as_user"
LOCAL_OWNER = "local"
# Clock skew allowed on `nbf` and `exp`: Entra's and ours may disagree by a little.
LEEWAY_SECONDS = 60
# Entra announces new signing keys weeks before using them, so a long cache is safe; a token with an
# unknown `kid` still forces a refetch (after the cooldown).
JWKS_LIFESPAN_SECONDS = 900
JWKS_TIMEOUT_SECONDS = 10
METADATA_PATH = "/.well-known/oauth-protected-resource"
# Discovery documents and health probes answer without a token; every other path needs one.
OPEN_PATHS = frozenset({"/healthz", "/health"})
OPEN_PREFIX = "/.well-known/"


@dataclass(frozen=True)
class EntraConfig:
    """What a token must satisfy, resolved once from the settings."""

    tenant_id: str
    client_id: str
    tenants: frozenset[str]
    audiences: frozenset[str]
    authority: str
    jwks_url: str
    jwks_cooldown: float = 30.0
    allowed_roles: frozenset[str] = frozenset()
    required_roles: frozenset[str] = frozenset()
    required_groups: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> EntraConfig | None:
        """The auth config, or None when auth is off; ValueError names any setting that is wrong."""
        tenant, client = settings.azure_ad_tenant_id, settings.azure_ad_client_id
        if not tenant and not client:
            return None
        if not tenant or not client:
            missing = "AZURE_AD_TENANT_ID" if not tenant else "AZURE_AD_CLIENT_ID"
            raise ValueError(
                f"{missing} is not set: Entra auth needs both AZURE_AD_TENANT_ID (the Directory (tenant) ID) "
                "and AZURE_AD_CLIENT_ID (the app registration's Application (client) ID)"
            )
        tenant = _guid("AZURE_AD_TENANT_ID", tenant, "the Directory (tenant) ID")
        client = _guid("AZURE_AD_CLIENT_ID", client, "the Application (client) ID")
        extra = [_guid("NOISETT_AUTH_TENANTS", t, "a Directory (tenant) ID") for t in settings.auth_tenants]
        authority = settings.auth_authority.rstrip("/")
        if not authority.startswith("https://"):
            raise ValueError(f"NOISETT_AUTH_AUTHORITY must be an https:// URL, not {authority!r}")
        return cls(
            tenant_id=tenant,
            client_id=client,
            tenants=frozenset([tenant, *extra]),
            audiences=frozenset([client, f"api://{client}", *settings.auth_audiences]),
            authority=authority,
            jwks_url=settings.auth_jwks_url or f"{authority}/{tenant}/discovery/v2.0/keys",
            jwks_cooldown=settings.auth_jwks_cooldown,
            allowed_roles=frozenset(settings.auth_allowed_roles),
            required_roles=frozenset(settings.auth_required_roles),
            required_groups=frozenset(g.lower() for g in settings.auth_required_groups),
        )

    @property
    def scope(self) -> str:
        """The full scope URI a client asks Entra for."""
        return f"api://{self.client_id}/{SCOPE_NAME}"

    @property
    def authorization_server(self) -> str:
        """The tenant's v2 issuer: VS Code and other clients read the tenant from its path."""
        return f"{self.authority}/{self.tenant_id}/v2.0"

    def issuers(self, tenant: str) -> tuple[str, str]:
        """The v2 and v1 issuers of a tenant's access tokens."""
        return f"{self.authority}/{tenant}/v2.0", f"https://sts.windows.net/{tenant}/"


def _guid(name: str, value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ValueError(
            f"{name} must be {what}, a GUID like 00000000-0000-0000-0000-000000000000, not {value!r}"
        ) from None


class TokenRejected(Exception):
    """Why a token was refused; logged for the operator, never sent to the client."""


class EntraTokenVerifier(TokenVerifier):
    """Verifies Entra access tokens for this app. Returns None for any token it does not accept."""

    def __init__(self, config: EntraConfig) -> None:
        self.config = config
        # PyJWKClient caches the key set and refetches it for an unknown `kid`, at most once per cooldown,
        # so a flood of made-up key ids cannot turn into a flood of requests to Entra.
        self._jwks = jwt.PyJWKClient(
            config.jwks_url,
            lifespan=JWKS_LIFESPAN_SECONDS,
            cooldown_duration=config.jwks_cooldown,
            timeout=JWKS_TIMEOUT_SECONDS,
            headers={"User-Agent": f"noisett-mcp/{__version__}"},
        )
        self._issuers = frozenset(i for t in config.tenants for i in config.issuers(t))
        self._limiter: anyio.CapacityLimiter | None = None

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            claims = await self._verify(token)
        except TokenRejected as exc:
            log.info("rejected an access token: %s", exc)
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("azp") or claims.get("appid") or ""),
            scopes=str(claims.get("scp", "")).split(),
            # The SDK checks expiry again, without leeway: move the deadline by the leeway we allow.
            expires_at=int(claims["exp"]) + LEEWAY_SECONDS,
            resource=_first(claims["aud"]),
            subject=claims.get("sub"),
            claims=claims,
        )

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"not a JWT ({exc})") from None
        if header.get("alg") != "RS256":
            raise TokenRejected(f"algorithm {header.get('alg')!r} is not RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("no key id (kid) in the header")
        key = await self._signing_key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=sorted(self.config.audiences),
                issuer=sorted(self._issuers),
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "tid", "oid"]},
            )
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"{type(exc).__name__}: {exc}") from None
        tenant = str(claims["tid"]).lower()
        if tenant not in self.config.tenants:
            raise TokenRejected(f"tenant {tenant} is not accepted here")
        if claims["iss"] not in self.config.issuers(tenant):
            raise TokenRejected(f"issuer {claims['iss']!r} does not belong to the token's tenant {tenant}")
        return claims

    async def _signing_key(self, kid: str) -> jwt.PyJWK:
        if self._limiter is None:
            # A few threads at most: a slow key endpoint must not take the pool image encoding uses.
            self._limiter = anyio.CapacityLimiter(4)
        try:
            return await anyio.to_thread.run_sync(self._jwks.get_signing_key, kid, limiter=self._limiter)
        except jwt.PyJWKClientConnectionError as exc:
            log.error("could not fetch the token signing keys from %s: %s", self.config.jwks_url, exc)
            raise TokenRejected("signing keys unavailable") from None
        except jwt.PyJWKClientError as exc:
            raise TokenRejected(f"unknown signing key {kid!r} ({exc})") from None


def _first(audience: str | list[str]) -> str:
    return audience if isinstance(audience, str) else audience[0]


def denial(claims: dict[str, Any], config: EntraConfig) -> str | None:
    """Why a verified token may not use the server (the 403's description), or None when it may."""
    scopes = set(str(claims.get("scp", "")).split())
    roles = set(_strings(claims.get("roles")))
    if SCOPE_NAME not in scopes and not roles & config.allowed_roles:
        roles_too = f" or one of the app roles {_names(config.allowed_roles)}" if config.allowed_roles else ""
        return f"this server needs the delegated scope {config.scope}{roles_too}"
    if config.required_roles and not roles & config.required_roles:
        return (
            f"this server needs one of the app roles {_names(config.required_roles)}: "
            "ask an administrator to assign you one"
        )
    groups = {g.lower() for g in _strings(claims.get("groups"))}
    if config.required_groups and not groups & config.required_groups:
        if "groups" in (claims.get("_claim_names") or {}) or claims.get("hasgroups"):
            # Group overage: past about 200 groups Entra leaves them out of the token.
            return (
                "your account is in too many groups for them to fit in the token; the administrator "
                "can assign those groups to an app role and require the role instead"
            )
        return "this server needs membership in a group it allows: ask an administrator to add you"
    return None


def _strings(value: object) -> Iterable[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


@dataclass(frozen=True)
class Caller:
    """Who makes the current request, from the verified token; all None without auth."""

    tenant: str | None = None
    user: str | None = None
    client: str | None = None

    @property
    def owner(self) -> str:
        """The owner id recorded on images: `{tid}/{oid}`, or `local` over stdio and without auth."""
        return f"{self.tenant}/{self.user}" if self.tenant and self.user else LOCAL_OWNER


def current_caller() -> Caller:
    """The caller of the request being handled (the SDK's auth context follows the request's task)."""
    token = get_access_token()
    claims = token.claims if token is not None else None
    if not claims:
        return Caller()
    return Caller(
        tenant=str(claims["tid"]).lower(),
        user=str(claims["oid"]).lower(),
        client=token.client_id if token is not None else None,
    )


def public_base_url(conn: HTTPConnection) -> str:
    """This server's origin as the client sees it; behind a TLS-terminating proxy (Container Apps
    ingress) the scheme comes from X-Forwarded-Proto."""
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
        elif (reason := denial(user.access_token.claims or {}, self.config)) is not None:
            log.info("refused user %s: %s", (user.access_token.claims or {}).get("oid"), reason)
            response = self._challenge(HTTPConnection(scope), 403, "insufficient_scope", reason)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def _challenge(self, conn: HTTPConnection, status: int, error: str | None, description: str) -> Response:
        resource = AnyHttpUrl(public_base_url(conn) + self.mcp_path)
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
            resource=AnyHttpUrl(public_base_url(request) + mcp_path),
            authorization_servers=[AnyHttpUrl(config.authorization_server)],
            scopes_supported=[config.scope],
            bearer_methods_supported=["header"],
            resource_name="Noisett",
        )
        return PydanticJSONResponse(document, headers={"Cache-Control": "public, max-age=3600"})

    # The path-suffixed document (RFC 9728 §3.1) and the root one that older clients try first.
    for path in (METADATA_PATH + mcp_path, METADATA_PATH):
        app.add_route(path, cors_middleware(metadata, ["GET", "OPTIONS"]), methods=["GET", "OPTIONS"])
    # Added innermost first: authentication, then the auth context for tool handlers, then the gate.
    app.add_middleware(EntraGate, config=config, mcp_path=mcp_path)
    app.add_middleware(AuthContextMiddleware)
    app.add_middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier))
    return verifier
