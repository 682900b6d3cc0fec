"""Who is calling, inside a tool handler: the verified token's tenant and principal, or `local` over stdio
and without auth.

The owner recorded on images is `{tid}/{oid}`: Entra's `oid` is the object id of the signed-in user, or,
in an app-only token (client credentials), of the calling service principal. A token without a usable
`oid` never falls back to `local` (that owner holds the images made over stdio and by the CLI): an
app-only token without one is owned by its client application, `{tid}/app:{azp or appid}`; any other is
refused with a 401 (`identity_problem`, checked by the gate before any tool runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token

from noisett_mcp.errors import NoIdentity

LOCAL_OWNER = "local"
APP_PREFIX = "app:"


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


def _guid(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        return None


def is_app_only(claims: Mapping[str, Any]) -> bool:
    """An app-only token (client credentials): Entra marks it `idtyp: app` when asked to, and it never
    carries the delegated `scp` claim."""
    return claims.get("idtyp") == "app" or not claims.get("scp")


def principal(claims: Mapping[str, Any]) -> tuple[str, str]:
    """(tenant, principal) of a verified token, lowercase; raise NoIdentity saying why there is none."""
    tenant = _guid(claims.get("tid"))
    if tenant is None:
        raise NoIdentity("the access token has no usable tenant id (tid)")
    oid = claims.get("oid")
    if _guid(oid) is not None:
        return tenant, str(_guid(oid))
    if oid not in (None, ""):
        raise NoIdentity("the access token's object id (oid) is not a GUID, so it names no Entra principal")
    if is_app_only(claims):
        app = _guid(claims.get("azp") or claims.get("appid"))
        if app is not None:
            return tenant, APP_PREFIX + app
        raise NoIdentity("the app-only access token has no object id (oid) and no client id (azp or appid)")
    raise NoIdentity(
        "the access token has no object id (oid), so it names no user to own the images; sign in again "
        "with a Microsoft Entra ID account of the tenant"
    )


def identity_problem(claims: Mapping[str, Any]) -> str | None:
    """Why a verified token names no usable principal (the 401's description), or None."""
    try:
        principal(claims)
    except NoIdentity as exc:
        return str(exc)
    return None


def current_caller() -> Caller:
    """The caller of the request being handled (the SDK's auth context follows the request's task).
    Raise NoIdentity for a token without a principal (the gate refuses those before any tool runs)."""
    token = get_access_token()
    claims = token.claims if token is not None else None
    if not claims:
        return Caller()
    tenant, user = principal(claims)
    return Caller(tenant=tenant, user=user, client=token.client_id if token is not None else None)
