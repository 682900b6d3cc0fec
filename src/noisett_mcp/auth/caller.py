"""Who is calling, inside a tool handler: the verified token's tenant and user, or `local` over stdio
and without auth."""

from __future__ import annotations

from dataclasses import dataclass

from mcp.server.auth.middleware.auth_context import get_access_token

LOCAL_OWNER = "local"


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
